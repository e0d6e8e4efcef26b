"""One training step of a small MLP on CPU: what dropout costs inside a real step (issue #4).

    python benchmarks/bench_mlp_step.py                # 784-256-256-10, two Dropout(0.5), batch 1024, Adam, 2 threads
    python benchmarks/bench_mlp_step.py --threads 1 --batch 256

The same model is timed with ``torch.nn.Dropout``, ``dropkit.nn.Dropout`` and
``torch.nn.Identity`` (no dropout) in interleaved rounds. The dropout share of a step
is ``(t_step - t_identity) / t_step``. Writes benchmarks/out/bench_mlp_step.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dropkit  # noqa: E402
from harness import interleaved, print_table, write_json  # noqa: E402

LAYERS = {
    "torch.nn.Dropout": lambda p: torch.nn.Dropout(p),
    "dropkit.nn.Dropout": lambda p: dropkit.nn.Dropout(p),
    "no dropout (Identity)": lambda p: torch.nn.Identity(),
}


def make_step(drop, widths, batch: int, p: float):
    torch.manual_seed(0)
    w_in, w_h, w_out = widths
    model = torch.nn.Sequential(
        torch.nn.Linear(w_in, w_h), torch.nn.ReLU(), drop(p),
        torch.nn.Linear(w_h, w_h), torch.nn.ReLU(), drop(p),
        torch.nn.Linear(w_h, w_out),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, w_in)
    y = torch.randint(0, w_out, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--widths", type=int, nargs=3, default=[784, 256, 10], metavar=("IN", "HIDDEN", "OUT"))
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"backend: {dropkit.backend_info('cpu')}, threads: {torch.get_num_threads()}\n")
    steps = {name: make_step(make, args.widths, args.batch, args.p) for name, make in LAYERS.items()}
    st = interleaved(steps, rounds=args.rounds, repeats=7, min_sample_s=0.05)
    base = st["no dropout (Identity)"].median
    rows, table = [], []
    for name, s in st.items():
        share = (s.median - base) / s.median
        rows.append({"layer": name, "step_ms": s.median * 1e3, "spread": s.spread, "dropout_share": share})
        table.append([name, f"{s.median * 1e3:.2f}", f"±{s.spread * 100:.0f}%",
                      "-" if name.startswith("no dropout") else f"{share * 100:.1f}%"])
    w = args.widths
    print_table(["layer", "step ms (median)", "spread", "dropout share of step"], table,
                title=f"MLP {w[0]}-{w[1]}-{w[1]}-{w[2]}, two Dropout({args.p}), batch {args.batch}, Adam, "
                      f"{args.threads} thread(s)")
    t, d = st["torch.nn.Dropout"].median, st["dropkit.nn.Dropout"].median
    print(f"\nstep time torch / dropkit: {t / d:.2f}x")
    write_json("bench_mlp_step", rows, batch=args.batch, widths=args.widths, p=args.p, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
