"""MC dropout: dropkit.mc.predict vs a naive loop of T train-mode forwards, on the lab's MLP and CNN
(28x28 inputs, 10 classes, p=0.5).

Both run under ``torch.inference_mode()``; the naive loop is ``model.train(); [model(x) for _ in range(T)]``.
"mc.predict" is a repeated call (the probe's answer cached, as in a serving loop); "cold" clears
the cache first, so it includes the probe forward. "method" is how predict computed the samples
(fold / prefix / repeat, see dropkit.mc). Same output distribution: the per-example mean and
standard deviation of the class probabilities over T samples, compared between the two (max
absolute difference, over a larger T).

    python benchmarks/bench_mc.py [--samples 50] [--batches 1,64,256] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import interleaved, print_table, write_json  # noqa: E402

from dropkit import mc  # noqa: E402


def lab_model(name: str) -> torch.nn.Module:
    from dropkit.lab.models import build_model

    return build_model(name, (1, 28, 28), 10, 0.5)


def naive(model: torch.nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    model.train()
    try:
        with torch.inference_mode():
            return torch.stack([torch.softmax(model(x), -1) for _ in range(T)])
    finally:
        model.eval()


def agreement(model: torch.nn.Module, x: torch.Tensor, T: int = 2000) -> tuple[float, float]:
    """Max |mean difference| and max |std difference| of class probabilities between the two methods."""
    torch.manual_seed(1)
    a = mc.predict(model, x, samples=T).samples
    torch.manual_seed(2)
    b = naive(model, x, T)
    return float((a.mean(0) - b.mean(0)).abs().max()), float((a.std(0) - b.std(0)).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared 2-core machine; both methods alike)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T = args.samples
    rounds = 2 if args.quick else 5
    rows, records = [], []
    for name in ("mlp", "cnn"):
        torch.manual_seed(0)
        model = lab_model(name).eval()
        d_mean, d_std = agreement(model, torch.randn(8, 1, 28, 28), T=200 if args.quick else 2000)
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 1, 28, 28)
            method = mc.predict(model, x, samples=T).method

            def cold():
                mc.clear_cache()
                return mc.predict(model, x, samples=T)

            stats = interleaved(
                {"naive": lambda: naive(model, x, T), "mc": lambda: mc.predict(model, x, samples=T), "cold": cold},
                rounds=rounds, repeats=3, min_sample_s=0.05,
            )
            speedup = stats["naive"].median / stats["mc"].median
            cold_speedup = stats["naive"].median / stats["cold"].median
            rows.append([name, batch, T, method, f"{stats['naive'].median * 1e3:.1f}", f"{stats['mc'].median * 1e3:.1f}",
                         f"{speedup:.1f}x", f"{stats['cold'].median * 1e3:.1f}", f"{cold_speedup:.1f}x",
                         f"{d_mean:.4f}", f"{d_std:.4f}"])
            records.append({"model": name, "batch": batch, "samples": T, "method": method, "naive": stats["naive"],
                            "mc": stats["mc"], "cold": stats["cold"], "speedup": speedup, "cold_speedup": cold_speedup,
                            "max_abs_mean_diff": d_mean, "max_abs_std_diff": d_std})
    print_table(
        ["model", "batch", "T", "method", "naive loop ms", "mc.predict ms", "speed-up", "cold ms", "cold speed-up",
         "|Δ mean| max", "|Δ std| max"],
        rows, title=f"MC dropout, T={T}: dropkit.mc.predict vs a loop of train-mode forwards",
    )
    write_json("bench_mc", records, samples=T, torch=torch.__version__, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
