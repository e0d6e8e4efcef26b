"""What going through PyTorch's dispatcher costs: dropkit's eager dropout against ``torch.nn.functional.dropout``.

    python benchmarks/bench_dispatch.py                          # this tree and torch, 1 and 2 threads
    python benchmarks/bench_dispatch.py --before /work/wt/before # and the tree at PATH, in a subprocess
    python benchmarks/bench_dispatch.py --python-registration    # and this tree without the C++ registration

Every call goes through the registered op ``dropkit::dropout`` (issue 20). For each thread count, in one
process, interleaved with torch's own dropout: forward and forward+backward at 20, 2^10 and 2^22 elements
(``seed=None``, p = 0.5, float32), and one MLP training step (benchmarks/bench_mlp_step.py: 784-256-256-10,
two dropouts, batch 1024) with ``torch.nn.Dropout``, ``dropkit.nn.Dropout`` and no dropout. Targets:
at most 3x torch's time per call at 20 and 2^10 elements, at least 15x faster than torch forward and 10x
forward+backward at 2^22, and an MLP step whose dropout overhead is no higher than before. ``--before PATH``
runs the same measurements with ``PYTHONPATH=PATH/src`` in a subprocess (each process times torch itself,
so each ratio compares like with like). Writes benchmarks/out/bench_dispatch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import interleaved, machine_info, print_table, write_json  # noqa: E402

SIZES = {"20": 20, "2^10": 1 << 10, "2^22": 1 << 22}


def _calls(n: int):
    import dropkit.functional as DF

    x = torch.randn(n)
    xg = torch.randn(n, requires_grad=True)
    g = torch.randn(n)

    def fb(fn):
        def run():
            torch.autograd.grad(fn(xg, 0.5), xg, g)

        return run

    return {
        "forward": (lambda: DF.dropout(x, 0.5), lambda: torch.nn.functional.dropout(x, 0.5)),
        "forward+backward": (fb(DF.dropout), fb(torch.nn.functional.dropout)),
    }


def measure_tree(threads: list[int], rounds: int) -> dict:
    """This process's dropkit against torch: seconds per call, per (threads, case)."""
    import dropkit
    from bench_mlp_step import LAYERS, make_step

    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for size, n in SIZES.items():
            for what, (dk, tf) in _calls(n).items():
                big = n >= 1 << 20
                st = interleaved({"dk": dk, "torch": tf}, rounds=rounds, repeats=5 if big else 9, min_sample_s=0.01)
                rows.append({"threads": t, "case": f"{size} {what}", "dk_s": st["dk"].median, "torch_s": st["torch"].median})
        steps = {name: make_step(layer, (784, 256, 10), 1024, 0.5) for name, layer in LAYERS.items()}
        st = interleaved(steps, rounds=rounds, repeats=5, min_sample_s=0.05)
        ident = st["no dropout (Identity)"].median
        rows.append({"threads": t, "case": "MLP step", "dk_s": st["dropkit.nn.Dropout"].median,
                     "torch_s": st["torch.nn.Dropout"].median, "identity_s": ident})  # fmt: skip
    return {"dropkit": dropkit.__file__, "machine": machine_info(), "rows": rows}


def _before(path: str | None, threads: list[int], rounds: int) -> dict:
    """The "before" columns, in a subprocess: the tree at ``path``, or (None) this tree with the Python registration."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "before.json"
        if path is None:
            env = {**os.environ, "DROPKIT_CPP_KERNELS": "0", "PYTHONPATH": str(HERE.parent / "src")}
        else:
            env = {**os.environ, "PYTHONPATH": str(Path(path) / "src")}
        cmd = [sys.executable, __file__, "--worker", str(out), "--rounds", str(rounds), "--threads", *map(str, threads)]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(out.read_text())


def _cell(row: dict | None) -> tuple[str, str]:
    if row is None:
        return "", ""
    if row["case"] == "MLP step":
        over = lambda s: f"{100 * (s / row['identity_s'] - 1):+.0f} %"  # noqa: E731
        return f"{row['dk_s'] * 1e3:.2f} ms", f"dk {over(row['dk_s'])}, torch {over(row['torch_s'])}"
    r = row["dk_s"] / row["torch_s"]
    ratio = f"{r:.2f}x torch" if r >= 0.5 else f"{1 / r:.1f}x faster"
    return f"{row['dk_s'] * 1e6:.1f} us", ratio


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--before", metavar="PATH", help="a pre-change tree (PATH/src) to time in a subprocess")
    which.add_argument("--python-registration", action="store_true",
                       help="before = this tree with the Python registration of the CPU kernels (DROPKIT_CPP_KERNELS=0)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        Path(args.worker).write_text(json.dumps(measure_tree(args.threads, args.rounds)))
        return 0
    after = measure_tree(args.threads, args.rounds)
    compare = args.before or args.python_registration
    before = _before(args.before, args.threads, args.rounds) if compare else None
    old = {(r["threads"], r["case"]): r for r in before["rows"]} if before else {}
    table = []
    for r in after["rows"]:
        b = old.get((r["threads"], r["case"]))
        torch_time = f"{r['torch_s'] * 1e3:.2f} ms" if r["case"] == "MLP step" else f"{r['torch_s'] * 1e6:.1f} us"
        table.append([r["threads"], r["case"], torch_time, *_cell(r), *_cell(b)])
    print_table(["threads", "case", "torch", "after", "after vs torch", "before", "before vs torch"], table,
                title=f"dropkit.functional.dropout through the dispatcher ({after['machine']['cpu']})")  # fmt: skip
    import dropkit

    write_json("bench_dispatch", after["rows"], before=before, after_tree=after["dropkit"],
               registration=dropkit.backend_info("cpu")["registration"],
               before_is="python registration" if args.python_registration else args.before)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
