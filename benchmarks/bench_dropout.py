"""Dropout forward / backward / forward+backward: dropkit vs torch.nn.functional.dropout vs a plain copy.

    python benchmarks/bench_dropout.py                 # 2^12 .. 2^24, fp32 and bf16, all threads
    python benchmarks/bench_dropout.py --threads 1 --sizes 22 --dtypes float32

Prints ns/element and the ratios (torch time / dropkit time: > 1 means dropkit is faster;
dropkit time / copy time: how close to memory speed), plus bytes saved for backward per
element, and writes benchmarks/out/bench_dropout.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dropkit  # noqa: E402
from harness import interleaved, print_table, saved_bytes, write_json  # noqa: E402

P = 0.5


def cases(x: torch.Tensor, mode: str):
    g = torch.ones_like(x)
    if mode == "fwd":
        return {
            "dropkit": lambda: dropkit.functional.dropout(x, P, seed=1),
            "torch": lambda: torch.nn.functional.dropout(x, P),
            "copy": lambda: x.clone(),
        }
    xr = x.detach().requires_grad_()
    if mode == "bwd":
        yd = dropkit.functional.dropout(xr, P, seed=1)
        yt = torch.nn.functional.dropout(xr, P)
        yc = xr * 1.0
        return {
            "dropkit": lambda: torch.autograd.grad(yd, xr, g, retain_graph=True),
            "torch": lambda: torch.autograd.grad(yt, xr, g, retain_graph=True),
            "copy": lambda: g.clone(),
        }
    return {  # fwd+bwd
        "dropkit": lambda: torch.autograd.grad(dropkit.functional.dropout(xr, P, seed=1), xr, g),
        "torch": lambda: torch.autograd.grad(torch.nn.functional.dropout(xr, P), xr, g),
        "copy": lambda: (x.clone(), g.clone()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 20, 22, 24], help="log2 of element counts")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--modes", nargs="+", default=["fwd", "bwd", "fwd+bwd"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="bench_dropout")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"backend: {dropkit.backend_info('cpu')}, threads: {torch.get_num_threads()}\n")
    rows, table = [], []
    for dt_name in args.dtypes:
        dtype = getattr(torch, dt_name)
        for lg in args.sizes:
            n = 1 << lg
            x = torch.randn(n, dtype=dtype)
            for mode in args.modes:
                st = interleaved(cases(x, mode), rounds=args.rounds, repeats=5, min_sample_s=0.01)
                d, t, c = st["dropkit"].median, st["torch"].median, st["copy"].median
                row = {
                    "dtype": dt_name, "n": n, "mode": mode, "threads": args.threads,
                    "dropkit_ns": d / n * 1e9, "torch_ns": t / n * 1e9, "copy_ns": c / n * 1e9,
                    "speedup_vs_torch": t / d, "dropkit_over_copy": d / c,
                    "spread_dropkit": st["dropkit"].spread, "spread_torch": st["torch"].spread,
                }
                rows.append(row)
                table.append([dt_name, f"2^{lg}", mode, f"{row['dropkit_ns']:.3f}", f"{row['torch_ns']:.3f}",
                              f"{row['copy_ns']:.3f}", f"{row['speedup_vs_torch']:.1f}x", f"{row['dropkit_over_copy']:.2f}"])
    print_table(["dtype", "n", "mode", "dropkit ns/el", "torch ns/el", "copy ns/el", "torch/dropkit", "dropkit/copy"], table,
                title=f"dropout, p={P}, {args.threads} thread(s)")
    n = 1 << 20
    x = torch.randn(n)
    sb_d = saved_bytes(lambda t: dropkit.functional.dropout(t, P, seed=1), x)
    sb_t = saved_bytes(lambda t: torch.nn.functional.dropout(t, P), x)
    print()
    print_table(["op", "bytes saved for backward per element (2^20 fp32)"],
                [["dropkit.functional.dropout", f"{sb_d / n:.4f}"], ["torch.nn.functional.dropout", f"{sb_t / n:.4f}"]])
    write_json(args.name, rows, p=P, saved_bytes_per_element={"dropkit": sb_d / n, "torch": sb_t / n})
    return 0


if __name__ == "__main__":
    sys.exit(main())
