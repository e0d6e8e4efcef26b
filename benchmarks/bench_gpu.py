"""GPU benchmark of dropkit's Triton path against torch's native dropout.

Three measurements, printed as Markdown tables and written to ``benchmarks/out/bench_gpu.json``
with the device name and the torch / Triton versions:

1. **Bandwidth.** Forward + backward of dropout on ``2**24 .. 2**28`` elements, as a fraction
   of the device's copy bandwidth measured in the same run (``y.copy_(x)``, read + write).
   Useful bytes of forward + backward are ``4 * n * itemsize`` (read x, write y, read grad,
   write grad x) for both implementations; torch also writes and reads a 1-byte mask, which
   this accounting deliberately does not credit. The goal of issue #8 is >= 90 %.
2. **Fused tail.** ``fused_bias_act_dropout_add`` against the same math in torch ops
   (``residual + F.dropout(F.gelu(x + bias))``), forward + backward.
3. **Peak memory of a transformer block** (``torch.nn.TransformerEncoderLayer``) trained one
   step with torch's dropout vs. dropkit's (``dropkit.nn.replace_dropout``), and its step time.
4. **Compiled step** (issue #12). An MLP training step under ``torch.compile`` (Inductor) with
   ``torch.nn.Dropout``, with ``dropkit.nn.Dropout`` (the ops decompose into their Triton kernels in
   the graph), and with ``dropkit.nn.Dropout`` kept whole (``DROPKIT_TRITON_GRAPH=0``: an opaque call
   per op), plus whether Inductor's generated code names dropkit's kernel. ``--skip-compiled`` leaves
   it out (three compiles).

Usage::

    python benchmarks/bench_gpu.py                 # full run (needs ~8 GiB of GPU memory at 2**28 fp32)
    python benchmarks/bench_gpu.py --sizes 20 22   # quick
    python benchmarks/bench_gpu.py --dtype bfloat16

Without a CUDA device the script says so and exits with status 2 (``--device cpu`` runs the
same code on tiny sizes as a smoke test of the script itself; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_table, write_json  # noqa: E402

import dropkit  # noqa: E402
import dropkit.functional as DF  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timeit(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds per call, one sample per call (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def interleaved(fns: dict[str, Callable[[], object]], device, rounds: int, repeats: int) -> dict[str, dict]:
    """Median and quartiles per function over alternating rounds (drift hits all alike)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k] += timeit(fn, device, repeats)
    out = {}
    for k, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        out[k] = {"median_s": statistics.median(s), "q1_s": q[0], "q3_s": q[2], "samples": len(s)}
    return out


def copy_bandwidth(n: int, dtype, device, rounds, repeats) -> float:
    """Bytes per second of ``y.copy_(x)`` (read + write) at ``n`` elements."""
    x = torch.randn(n, device=device, dtype=torch.float32).to(dtype)
    y = torch.empty_like(x)
    t = interleaved({"copy": lambda: y.copy_(x)}, device, rounds, repeats)["copy"]["median_s"]
    return 2 * n * x.element_size() / t


def bench_bandwidth(args, device, dtype) -> list[dict]:
    rows = []
    p = args.p
    for log2n in args.sizes:
        n = 1 << log2n
        bw = copy_bandwidth(n, dtype, device, args.rounds, args.repeats)
        x = torch.randn(n, device=device, dtype=torch.float32).to(dtype).requires_grad_()
        g = torch.randn(n, device=device, dtype=torch.float32).to(dtype)

        def dk():
            DF.dropout(x, p, seed=12345).backward(g)

        def th():
            F.dropout(x, p, training=True).backward(g)

        def dk_fwd():
            with torch.no_grad():
                DF.dropout(x, p, seed=12345)

        def th_fwd():
            with torch.no_grad():
                F.dropout(x, p, training=True)

        t = interleaved({"dropkit": dk, "torch": th, "dropkit_fwd": dk_fwd, "torch_fwd": th_fwd}, device, args.rounds, args.repeats)
        useful = 4 * n * x.element_size()
        row = {
            "log2_n": log2n,
            "dtype": str(dtype).replace("torch.", ""),
            "copy_GBps": bw / 1e9,
            "dropkit_ms": t["dropkit"]["median_s"] * 1e3,
            "torch_ms": t["torch"]["median_s"] * 1e3,
            "dropkit_frac_copy": useful / t["dropkit"]["median_s"] / bw,
            "torch_frac_copy": useful / t["torch"]["median_s"] / bw,
            "dropkit_fwd_frac_copy": useful / 2 / t["dropkit_fwd"]["median_s"] / bw,
            "torch_fwd_frac_copy": useful / 2 / t["torch_fwd"]["median_s"] / bw,
            "speedup_vs_torch": t["torch"]["median_s"] / t["dropkit"]["median_s"],
            "timings": t,
        }
        rows.append(row)
        del x, g
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(
        ["n", "dtype", "copy GB/s", "dropkit ms", "torch ms", "dropkit % copy", "torch % copy", "fwd dk %", "fwd torch %", "dk speedup"],
        [
            [
                f"2^{r['log2_n']}", r["dtype"], f"{r['copy_GBps']:.0f}", f"{r['dropkit_ms']:.3f}", f"{r['torch_ms']:.3f}",
                f"{100 * r['dropkit_frac_copy']:.1f}", f"{100 * r['torch_frac_copy']:.1f}",
                f"{100 * r['dropkit_fwd_frac_copy']:.1f}", f"{100 * r['torch_fwd_frac_copy']:.1f}",
                f"{r['speedup_vs_torch']:.2f}x",
            ]
            for r in rows
        ],
        title=f"Dropout forward+backward, p={args.p}: fraction of copy bandwidth ({device_name(device)})",
    )
    return rows


def bench_fused(args, device, dtype) -> list[dict]:
    rows = []
    for log2n in args.fused_sizes:
        H = 4096
        n = 1 << log2n
        shape = (n // H, H)
        mk = lambda: torch.randn(shape, device=device, dtype=torch.float32).to(dtype).requires_grad_()  # noqa: E731
        x, r = mk(), mk()
        b = torch.randn(H, device=device, dtype=torch.float32).to(dtype).requires_grad_()
        g = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)

        def fused():
            DF.fused_bias_act_dropout_add(x, b, r, args.p, "gelu", seed=7).backward(g)

        def torch_unfused():
            (r + F.dropout(F.gelu(x + b), args.p, training=True)).backward(g)

        t = interleaved({"fused": fused, "torch": torch_unfused}, device, args.rounds, args.repeats)
        rows.append(
            {
                "log2_n": log2n,
                "dtype": str(dtype).replace("torch.", ""),
                "fused_ms": t["fused"]["median_s"] * 1e3,
                "torch_ms": t["torch"]["median_s"] * 1e3,
                "speedup": t["torch"]["median_s"] / t["fused"]["median_s"],
                "timings": t,
            }
        )
        del x, r, b, g
    print_table(
        ["n", "dtype", "fused ms", "torch unfused ms", "speedup"],
        [[f"2^{r['log2_n']}", r["dtype"], f"{r['fused_ms']:.3f}", f"{r['torch_ms']:.3f}", f"{r['speedup']:.2f}x"] for r in rows],
        title=f"residual + dropout(gelu(x + bias)), forward+backward, p={args.p}",
    )
    return rows


def bench_block(args, device, dtype) -> list[dict]:
    """Peak memory and step time of one training step of a TransformerEncoderLayer."""
    rows = []
    d, heads, ff = args.d_model, max(1, args.d_model // 64), 4 * args.d_model
    batch, seq = args.batch, args.seq
    for impl in ("torch", "dropkit"):
        torch.manual_seed(0)
        block = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.1, batch_first=True, device=device)
        if impl == "dropkit":
            dropkit.nn.replace_dropout(block)
        opt = torch.optim.SGD(block.parameters(), lr=1e-3)
        x = torch.randn(batch, seq, d, device=device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = block(x).float().square().mean()
            loss.backward()
            opt.step()

        step()  # warm up (kernels compiled, optimizer state allocated)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        step()
        peak = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        t = statistics.median(timeit(step, device, args.repeats))
        rows.append({"impl": impl, "dtype": str(dtype).replace("torch.", ""), "peak_step_bytes": peak, "step_ms": t * 1e3,
                     "d_model": d, "heads": heads, "ff": ff, "batch": batch, "seq": seq})
        del block, opt, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = rows[0]["peak_step_bytes"]
    print_table(
        ["dropout", "dtype", "peak MiB above params", "vs torch", "step ms"],
        [
            [
                r["impl"], r["dtype"],
                "n/a" if r["peak_step_bytes"] is None else f"{r['peak_step_bytes'] / 2**20:.1f}",
                "n/a" if not ref or r["peak_step_bytes"] is None else f"{r['peak_step_bytes'] / ref:.3f}",
                f"{r['step_ms']:.2f}",
            ]
            for r in rows
        ],
        title=f"TransformerEncoderLayer(d={d}, heads={heads}, ff={ff}), batch {batch} x seq {seq}, one training step "
        "(attention-probability dropout stays torch's in both)",
    )
    return rows


def bench_compiled(args, device, dtype) -> list[dict]:
    """One optimizer step of an MLP under torch.compile: torch's dropout vs dropkit's, in and out of the graph."""
    import os

    from torch._inductor.utils import run_and_get_code

    d, batch, layers = args.d_model, args.batch * args.seq, 3

    def mlp(drop):
        mods = []
        for _ in range(layers):
            mods += [torch.nn.Linear(d, d, device=device, dtype=dtype), torch.nn.ReLU(), drop()]
        return torch.nn.Sequential(*mods)

    variants = {
        "torch": (lambda: torch.nn.Dropout(args.p), "1"),
        "dropkit (kernels in the graph)": (lambda: dropkit.nn.Dropout(args.p), "1"),
        "dropkit (op kept whole)": (lambda: dropkit.nn.Dropout(args.p), "0"),
    }
    rows, steps = [], {}
    saved = os.environ.get("DROPKIT_TRITON_GRAPH")
    x = torch.randn(batch, d, device=device, dtype=dtype)
    try:
        for name, (drop, graph_env) in variants.items():
            os.environ["DROPKIT_TRITON_GRAPH"] = graph_env
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = mlp(drop)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            fwd = torch.compile(model, fullgraph=True)

            def step(fwd=fwd, opt=opt):
                opt.zero_grad(set_to_none=True)
                fwd(x).float().square().mean().backward()
                opt.step()

            t0 = time.perf_counter()
            _, code = run_and_get_code(step)  # compiles forward and backward
            compile_s = time.perf_counter() - t0
            steps[name] = step
            rows.append({"impl": name, "compile_s": compile_s, "kernel_in_code": "dropout_mul_kernel" in "\n".join(code)})
        t = interleaved(steps, device, args.rounds, args.repeats)
    finally:
        if saved is None:
            os.environ.pop("DROPKIT_TRITON_GRAPH", None)
        else:
            os.environ["DROPKIT_TRITON_GRAPH"] = saved
        torch._dynamo.reset()
    base = t["torch"]["median_s"]
    for r in rows:
        r.update(step_ms=t[r["impl"]]["median_s"] * 1e3, vs_torch=base / t[r["impl"]]["median_s"], timings=t[r["impl"]])
    print_table(
        ["dropout", "step ms", "speed vs torch", "dropkit kernel in Inductor's code", "compile s"],
        [[r["impl"], f"{r['step_ms']:.3f}", f"{r['vs_torch']:.2f}x", str(r["kernel_in_code"]), f"{r['compile_s']:.1f}"]
         for r in rows],
        title=f"torch.compile MLP step: {layers} x (Linear({d}, {d}), ReLU, Dropout(p={args.p})), batch {batch}, "
        f"{str(dtype).replace('torch.', '')}",
    )
    return rows


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test only)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke test of the script")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--p", type=float, default=0.1, help="drop probability")
    ap.add_argument("--sizes", type=int, nargs="+", default=[24, 25, 26, 27, 28], help="log2 of the element counts")
    ap.add_argument("--fused-sizes", type=int, nargs="+", default=[24, 26], help="log2 element counts of the fused-op run")
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    ap.add_argument("--out", default="bench_gpu", help="name of the JSON file in benchmarks/out/")
    ap.add_argument("--skip-compiled", action="store_true", help="leave out the torch.compile MLP step (three compiles)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu.py: no CUDA device is available (torch.cuda.is_available() is False); "
            "nothing to measure. Run it on a machine with a GPU and Triton installed "
            "(pip install 'dropkit[triton]'), or pass --device cpu for a smoke test of the script.",
            file=sys.stderr,
        )
        return 2
    dtype = DTYPES[args.dtype]
    info = dropkit.backend_info(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    print(f"device: {device_name(device)}; torch {torch.__version__}; triton {triton_version}; dropkit backend: {info}\n")
    if device.type == "cuda" and info["backend"] != "triton":
        print(f"warning: dropkit is not using Triton on this device ({info['reason']})\n", file=sys.stderr)

    bandwidth = bench_bandwidth(args, device, dtype)
    print()
    fused = bench_fused(args, device, dtype)
    print()
    block = bench_block(args, device, dtype)
    compiled = []
    if not args.skip_compiled:
        print()
        compiled = bench_compiled(args, device, dtype)
    write_json(
        args.out,
        [{"bench": "bandwidth", **r} for r in bandwidth] + [{"bench": "fused", **r} for r in fused]
        + [{"bench": "block", **r} for r in block] + [{"bench": "compiled", **r} for r in compiled],
        device=device_name(device),
        capability=list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        dropkit_backend=info,
        p=args.p,
        dtype=args.dtype,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
