"""Training recipes of the lab: optimisers, learning-rate schedules, max-norm, --hidden, early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dropkit.cli import main
from dropkit.lab.datasets import load_dataset
from dropkit.lab.train import RunSpec, apply_max_norm, lr_at, train_run

RECIPE = ["--optimizer", "sgd", "--momentum", "0.9", "--nesterov", "--lr", "0.05", "--lr-schedule", "cosine",
          "--max-norm", "1.5", "--hidden", "32,16"]


def test_recipe_flags_are_recorded_and_applied(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["compare", "--dataset", "overfit", "--epochs", "3", "--seeds", "1", "--quiet", "--p", "0.2,0.5",
                 *RECIPE, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("optimizer", "momentum", "nesterov", "lr_schedule", "max_norm", "hidden")} == {
        "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "lr_schedule": "cosine", "max_norm": 1.5, "hidden": [32, 16]}
    cmd = (out / "command.txt").read_text()
    for flag in ("--optimizer sgd", "--momentum 0.9", "--nesterov", "--lr-schedule cosine", "--max-norm 1.5",
                 "--hidden 32,16"):
        assert flag in cmd
    run = out / "runs" / "p0.2,0.5" / "seed-0"
    spec = json.loads((run / "config.json").read_text())
    assert spec["optimizer"] == "sgd" and spec["hidden"] == [32, 16]
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # overfit: 100 samples, batch 64 -> 2 steps per epoch, 6 in all; the lr of each epoch's last step
    assert [m["lr"] for m in hist] == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in (1, 3, 5)])
    from dropkit.lab.train import load_model

    model = load_model(run)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            assert layer.weight.norm(dim=1).max() <= 1.5 + 1e-5
    assert [layer.out_features for layer in model.modules() if isinstance(layer, torch.nn.Linear)] == [32, 16, 2]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["nesterov"] is True


def test_lr_schedules():
    spec = RunSpec("digits", "mlp", (0.5,), lr=1.0, lr_schedule="step")
    assert [lr_at(spec, s, 8) for s in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    spec = RunSpec("digits", "mlp", (0.5,), lr=2.0, lr_schedule="cosine")
    assert lr_at(spec, 0, 10) == 2.0 and lr_at(spec, 5, 10) == pytest.approx(1.0)
    assert lr_at(RunSpec("digits", "mlp", (0.5,), lr=0.3), 7, 10) == 0.3


def test_max_norm_caps_each_units_incoming_weights_only_when_above():
    lin, conv = torch.nn.Linear(4, 3), torch.nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4, 0, 0], [0.3, 0.4, 0, 0], [0, 0, 0, 10]]))
        conv.weight.mul_(100)
    apply_max_norm(torch.nn.Sequential(lin, conv), 2.0)
    assert lin.weight.norm(dim=1).tolist() == pytest.approx([2.0, 0.5, 2.0])
    assert lin.weight[0].tolist() == pytest.approx([1.2, 1.6, 0, 0])  # direction kept
    assert conv.weight.reshape(3, -1).norm(dim=1).tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_optimizers_differ_and_momentum_needs_sgd(tmp_path, capsys):
    data = load_dataset("overfit")
    finals = {}
    for opt in ("adam", "adamw", "sgd"):
        spec = RunSpec("overfit", "overfit-mlp", (0.0,), epochs=2, optimizer=opt, weight_decay=0.1,
                       momentum=0.9 if opt == "sgd" else 0.0)
        finals[opt] = train_run(spec, data, tmp_path / opt)["history"][-1]["train_loss"]
    assert len(set(finals.values())) == 3
    for argv, message in (
        (["--momentum", "0.9"], "apply to --optimizer sgd only"),
        (["--optimizer", "sgd", "--nesterov"], "needs --momentum > 0"),
        (["--optimizer", "sgd", "--momentum", "1"], "Invalid value for `--momentum`"),
        (["--max-norm", "0"], "Invalid value for `--max-norm`"),
        (["--hidden", "32,x"], "Invalid value for `--hidden`"),
        (["--early-stopping", "0"], "--early-stopping"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["compare", "--dataset", "overfit", *argv, "--quiet", "--out", str(tmp_path / "bad")])
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "bad").exists()


def test_early_stopping_stops_keeps_best_checkpoint_and_reports(tmp_path, capsys):
    out = tmp_path / "es"
    # lr 0.5 on overfit: validation accuracy peaks early, then the net memorises the noise
    assert main(["compare", "--dataset", "overfit", "--model", "overfit-mlp", "--epochs", "40", "--seeds", "2",
                 "--lr", "0.05", "--early-stopping", "3", "--quiet", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for seed in (0, 1):
        run = out / "runs" / "p0" / f"seed-{seed}"
        res = json.loads((run / "result.json").read_text())
        hist = res["history"]
        best = res["summary"]["best_epoch"]
        assert res["stopped_early"] and len(hist) == best + 3 < 40
        assert res["best_checkpoint"] == "best.pt"
        from dropkit._io import load_torch_verified

        assert load_torch_verified(run / "best.pt")["epoch"] == best
        from dropkit.lab.train import evaluate, load_model

        data = load_dataset("overfit")
        _, acc = evaluate(load_model(run, best=True), data.x_val, data.y_val)
        assert acc == pytest.approx(res["summary"]["best_val_acc"])
    assert "| no dropout | 40 | 2 |" in table  # runs that stopped early count as finished
