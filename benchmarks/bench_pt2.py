"""What the registered-op layer (issue #12) costs and gains, every baseline timed in the same run.

    python benchmarks/bench_pt2.py                 # 2 threads
    python benchmarks/bench_pt2.py --threads 1 --quick

* **Compiled MLP step**: 784-256-256-10 with two Dropout(0.5), batch 256, Adam; ``torch.nn.Dropout`` against
  ``dropkit.nn.Dropout``, eager and under ``torch.compile`` (inductor). Ratio = dropkit step / torch step.
* **Small calls**: one ``dropout`` call at 2^10 fp32 elements through the registered op
  (``dropkit.functional.dropout``) against the pre-op path (the same checks, then the ctypes kernel directly,
  as dropkit did before the ops were registered), with and without autograd.
* **Kernel ratios through the op**: ``dropkit.functional.dropout`` forward and forward+backward at 2^22
  fp32 against ``torch.nn.functional.dropout``. Forward+backward is timed as ``bench_dropout.py`` times it
  (``torch.autograd.grad(y, x, g)`` with a dense upstream gradient, the kernel issue's definition), and
  also as ``y.sum().backward()`` into an accumulating ``x.grad`` next to the same graph with ``x * 2`` in
  place of dropout: that row is the floor the sum, the accumulation and the allocations put under any
  dropout on this machine.
* **Gaussian dropout**: forward and forward+backward at 2^22 against torch's ``x * (1 + sigma * randn_like(x))``,
  and the normals alone (``dropkit.kernels.for_device("cpu").normal`` against ``torch.randn``).

Writes benchmarks/out/bench_pt2.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dropkit  # noqa: E402
import dropkit.functional as F  # noqa: E402
from dropkit import kernels  # noqa: E402
from dropkit._validation import check_bool, check_choice, check_float_tensor, check_noise_shape, check_p  # noqa: E402
from harness import interleaved, print_table, write_json  # noqa: E402


def mlp_step(drop, compiled: bool, batch: int = 256):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), drop(),
        torch.nn.Linear(256, 256), torch.nn.ReLU(), drop(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    fwd = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(fwd(x), y).backward()
        opt.step()

    for _ in range(3):  # compile outside the timing
        step()
    return step


class _PrevFunction(torch.autograd.Function):
    """The pre-op autograd path: the mask regenerated in backward by a direct kernel call."""

    @staticmethod
    def forward(ctx, x, seed):
        ctx.seed = seed
        return kernels.for_device("cpu").dropout_mul(x.contiguous(), 0.5, 2.0, seed, 0, 0)

    @staticmethod
    def backward(ctx, g):
        return kernels.for_device("cpu").dropout_mul(g.contiguous(), 0.5, 2.0, ctx.seed, 0, 0), None


def previous_path(x: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """dropkit's call path before registration: the same argument checks, then ctypes (no dispatcher)."""
    check_float_tensor(x)
    check_p(0.5)
    check_bool(True, "training")
    check_bool(False, "inplace")
    check_choice("inverted", "scaling", ("inverted", "classic"))
    check_noise_shape(None, x.shape)
    dropkit.rng.check_seed(seed)
    if torch.is_grad_enabled() and x.requires_grad:
        return _PrevFunction.apply(x, seed)
    return kernels.for_device("cpu").dropout_mul(x.contiguous(), 0.5, 2.0, seed, 0, 0)


def ratio_rows(st, pairs):
    rows, table = [], []
    for label, ours, base in pairs:
        r = st[base].median / st[ours].median
        rows.append({"case": label, "dropkit_s": st[ours].median, "baseline_s": st[base].median, "speedup": r})
        table.append([label, f"{st[ours].median * 1e6:.1f}", f"{st[base].median * 1e6:.1f}", f"{r:.2f}x"])
    return rows, table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    warnings.simplefilter("ignore")
    print(f"backend: {dropkit.backend_info('cpu')}, threads: {torch.get_num_threads()}\n")
    all_rows = []

    steps = {
        "eager torch": mlp_step(lambda: torch.nn.Dropout(0.5), False),
        "eager dropkit": mlp_step(lambda: dropkit.nn.Dropout(0.5), False),
        "compiled torch": mlp_step(lambda: torch.nn.Dropout(0.5), True),
        "compiled dropkit": mlp_step(lambda: dropkit.nn.Dropout(0.5), True),
    }
    st = interleaved(steps, rounds=rounds, repeats=7, min_sample_s=0.05)
    rows, table = ratio_rows(st, [("MLP step, eager", "eager dropkit", "eager torch"),
                                  ("MLP step, torch.compile", "compiled dropkit", "compiled torch")])
    print_table(["case", "dropkit us", "torch us", "torch / dropkit"], table,
                title="MLP 784-256-256-10 step, two Dropout(0.5), batch 256, Adam (>1: dropkit faster)")
    all_rows += rows

    small = torch.randn(1 << 10)
    small_g = small.clone().requires_grad_()
    calls = {
        "op": lambda: F.dropout(small, 0.5, seed=7),
        "pre-op": lambda: previous_path(small),
        "op+grad": lambda: F.dropout(small_g, 0.5, seed=7).sum().backward(),
        "pre-op+grad": lambda: previous_path(small_g).sum().backward(),
    }
    st = interleaved(calls, rounds=rounds, repeats=9)
    rows, table = ratio_rows(st, [("2^10 forward", "op", "pre-op"), ("2^10 forward+backward", "op+grad", "pre-op+grad")])
    print()
    print_table(["case", "registered op us", "pre-op path us", "pre-op / op"], table,
                title="Small calls (target: the op within 1.5x of the pre-op path, i.e. ratio >= 0.67)")
    all_rows += rows

    n = 1 << 22
    big = torch.randn(n)
    big_g = big.clone().requires_grad_()
    g = torch.ones_like(big)
    sigma = math.sqrt(0.3 / 0.7)
    calls = {
        "dk fwd": lambda: F.dropout(big, 0.5),
        "torch fwd": lambda: torch.nn.functional.dropout(big, 0.5),
        "dk fwd+bwd": lambda: torch.autograd.grad(F.dropout(big_g, 0.5), big_g, g),
        "torch fwd+bwd": lambda: torch.autograd.grad(torch.nn.functional.dropout(big_g, 0.5), big_g, g),
        "dk sum": lambda: F.dropout(big_g, 0.5).sum().backward(),
        "torch sum": lambda: torch.nn.functional.dropout(big_g, 0.5).sum().backward(),
        "x*2 sum": lambda: (big_g * 2.0).sum().backward(),
        "dk gauss fwd": lambda: F.gaussian_dropout(big, 0.3),
        "torch gauss fwd": lambda: big * (1 + sigma * torch.randn_like(big)),
        "dk gauss": lambda: torch.autograd.grad(F.gaussian_dropout(big_g, 0.3), big_g, g),
        "torch gauss": lambda: torch.autograd.grad(big_g * (1 + sigma * torch.randn_like(big_g)), big_g, g),
        "dk normal": lambda: kernels.for_device("cpu").normal(n, 7, 0, 0, "cpu"),
        "torch randn": lambda: torch.randn(n),
    }
    st = interleaved(calls, rounds=rounds, repeats=5)
    rows, table = ratio_rows(st, [("dropout 2^22 forward", "dk fwd", "torch fwd"),
                                  ("dropout 2^22 forward+backward (autograd.grad)", "dk fwd+bwd", "torch fwd+bwd"),
                                  ("dropout 2^22 .sum().backward()", "dk sum", "torch sum"),
                                  ("  the same graph with x*2 (the floor)", "x*2 sum", "torch sum"),
                                  ("gaussian_dropout 2^22 forward", "dk gauss fwd", "torch gauss fwd"),
                                  ("gaussian_dropout 2^22 fwd+bwd (autograd.grad)", "dk gauss", "torch gauss"),
                                  ("2^22 normals (kernels.normal vs torch.randn)", "dk normal", "torch randn")])
    print()
    print_table(["case", "dropkit us", "torch us", "torch / dropkit"], table,
                title="Through the registered ops, fp32 (targets: >= 15x, >= 10x, >= 3x for Gaussian fwd+bwd)")
    all_rows += rows
    write_json("bench_pt2", all_rows, threads=args.threads, rounds=rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
