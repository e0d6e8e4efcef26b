"""The lab's running training metrics: what Keras's ``fit`` logs (the mean over the epoch's mini-batches of the
training-mode forward passes, dropout active, that the optimiser steps used), beside the eval-mode ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dropkit.cli import main
from dropkit.lab.datasets import load_dataset
from dropkit.lab.models import make_model
from dropkit.lab.train import RunSpec, train_run


def _manual_running(spec: RunSpec, data) -> list[tuple[float, float]]:
    """(running accuracy, running loss) per epoch of a plain training loop over the batches the lab draws: the
    same seed, model, data order and optimiser, counting each batch's correct predictions by hand."""
    torch.manual_seed(spec.seed)
    model = make_model(spec.model, list(data.in_shape), data.num_classes, list(spec.p))
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    order = torch.Generator().manual_seed(spec.seed)
    x, y = data.x_train, data.y_train
    n = len(y)
    epochs = []
    for _ in range(spec.epochs):
        model.train()
        perm = torch.randperm(n, generator=order)
        correct, loss_total = 0, 0.0
        for i in range(0, n, spec.batch_size):
            idx = perm[i : i + spec.batch_size]
            out = model(x[idx])
            if out.shape[-1] == 1:  # one binary logit
                pred = (out[:, 0] > 0).long()
                loss = F.binary_cross_entropy_with_logits(out[:, 0], y[idx].float(), reduction="sum")
            else:
                pred = out.argmax(1)
                loss = F.cross_entropy(out, y[idx], reduction="sum")
            correct += int((pred == y[idx]).sum())
            loss_total += float(loss.detach())
            opt.zero_grad()
            (loss * (1 / len(idx))).backward()
            opt.step()
        epochs.append((correct / n, loss_total / n))
    return epochs


@pytest.mark.parametrize(
    "dataset, model, sizes",
    [("overfit", "overfit-mlp", {}), ("digits", "mlp", {"train_size": 150, "val_size": 50})],
    ids=["binary-logit", "argmax"],
)
def test_running_accuracy_is_the_batch_weighted_mean_of_the_steps_forward_passes(tmp_path, dataset, model, sizes):
    # batches of 64 and a smaller last one (100 = 64 + 36, 150 = 2 x 64 + 22): the mean is weighted by batch size
    data = load_dataset(dataset, **sizes)
    spec = RunSpec(dataset, model, (0.5,), epochs=3, batch_size=64, seed=3)
    history = train_run(spec, data, tmp_path / "run")["history"]
    manual = _manual_running(spec, data)
    assert [m["train_acc_running"] for m in history] == [acc for acc, _ in manual]  # the same counts, exactly
    assert [m["train_loss_running"] for m in history] == pytest.approx([loss for _, loss in manual], rel=1e-9)
    for m in history:
        assert m["gap_running"] == pytest.approx(m["train_acc_running"] - m["val_acc"], abs=1e-12)


def test_without_dropout_and_updates_the_running_metrics_are_the_eval_mode_ones(tmp_path):
    # p = 0 and lr = 0: every step's forward pass is the eval-mode model's, and each sample is seen once per epoch
    data = load_dataset("digits", train_size=300, val_size=50)
    spec = RunSpec("digits", "mlp", (0.0,), epochs=2, batch_size=64, lr=0.0, seed=1)
    for m in train_run(spec, data, tmp_path / "run")["history"]:
        assert m["train_acc_running"] == m["train_acc"]
        assert m["train_loss_running"] == pytest.approx(m["train_loss"], rel=1e-5)


def test_heavy_dropout_runs_below_the_eval_mode_training_accuracy(tmp_path):
    """p = 0.9 keeps one unit in ten at each step: the step's forward pass is a much weaker network than the
    eval-mode one. The gap (eval - running) must exceed 4 binomial standard errors of the two accuracies and
    also the p = 0 run's gap (which only reflects the model improving during the epoch) by as much."""
    data = load_dataset("digits")
    n = len(data.y_train)
    gaps = {}
    for p in (0.0, 0.9):
        spec = RunSpec("digits", "mlp", (p,), epochs=3, batch_size=64, seed=0)
        last = train_run(spec, data, tmp_path / f"p{p}")["history"][-1]
        a, r = last["train_acc"], last["train_acc_running"]
        se = math.sqrt(a * (1 - a) / n + r * (1 - r) / n)
        gaps[p] = (a - r, se)
    gap, se = gaps[0.9]
    assert gap > 4 * se, gaps
    assert gap - gaps[0.0][0] > 4 * math.hypot(se, gaps[0.0][1]), gaps


def test_running_metrics_in_metrics_jsonl_summaries_and_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "overfit", "--epochs", "3", "--seeds", "2", "--p", "0.5", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    finals = []
    for seed in range(2):
        run = out / "runs" / "p0.5" / f"seed-{seed}"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all({"train_acc_running", "train_loss_running", "gap_running"} <= set(m) for m in rows)
        summary = json.loads((run / "result.json").read_text())["summary"]
        assert summary["final_train_acc_running"] == rows[-1]["train_acc_running"]
        assert summary["best_train_acc_running"] == max(m["train_acc_running"] for m in rows)
        assert summary["final_gap_running"] == rows[-1]["gap_running"]
        assert summary["final_train_loss_running"] == rows[-1]["train_loss_running"]
        finals.append(summary["final_train_acc_running"])
    row = next(r for r in json.loads((out / "summary.json").read_text())["rows"] if r["slug"] == "p0.5")
    mean, std = row["final_train_acc_running"]
    assert mean == pytest.approx(sum(finals) / 2) and std == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))
    assert {"best_train_acc_running", "final_gap_running", "final_train_loss_running"} <= set(row)
    report = (out / "report.md").read_text()
    head = next(line for line in report.splitlines() if line.startswith("| setting |"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols[cols.index("train acc") + 1] == "running train acc"
    assert cols[cols.index("gap (train-val)") + 1] == "gap (running-val)"
    assert cols[cols.index("train loss") + 1] == "running train loss"
    line = next(line for line in report.splitlines() if line.startswith("| dropout p=0.5 |"))
    assert line.split("|")[cols.index("running train acc") + 1].strip() == f"{100 * mean:.1f} ± {100 * std:.1f}"
    assert "running train acc" in printed and "Keras" in report
