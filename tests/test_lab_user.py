"""The lab on the user's own model (MODULE:FACTORY, FILE.py:FACTORY) and data (FILE.npz, MODULE:FACTORY)."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from dropkit.cli import main

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    def make_net(in_shape, num_classes):
        n = 1
        for s in in_shape:
            n *= s
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(n, 32), nn.ReLU(), nn.Dropout(0.9),
                             nn.Linear(32, num_classes))

    def no_dropout():
        return nn.Sequential(nn.Flatten(), nn.Linear(10, 2))

    def not_a_model():
        return 42

    class Data(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 6, generator=g)
            self.y = (self.x[:, 0] > 0).long()
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            return self.x[i], self.y[i]

    def make_data():
        return Data(80, 0), Data(40, 1)
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "usernets_mod.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("usernets_mod", None)


def _npz(path, task="classification", **override):
    rng = np.random.default_rng(0)
    x_train, x_val = rng.standard_normal((60, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32)
    if task == "classification":
        y_train, y_val = (x_train[:, 0] > 0).astype(np.int64), (x_val[:, 0] > 0).astype(np.int64)
    else:
        y_train, y_val = x_train @ np.arange(5, dtype=np.float32), x_val @ np.arange(5, dtype=np.float32)
    arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


TINY = ["--epochs", "2", "--seeds", "2", "--quiet"]


def test_file_model_rates_set_on_every_dropout_module_and_baseline_zero(nets, capsys):
    data = _npz(nets / "d.npz")
    out = nets / "o"
    assert main(["compare", "--dataset", data, "--model", "./usernets_mod.py:make_net", "--p", "0.2,0.6", *TINY,
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| no dropout | 2 | 2 |" in table and "| dropout p=0.2,0.6 | 2 | 2 |" in table
    from dropkit.lab.train import load_model

    model = load_model(out / "runs" / "p0.2,0.6" / "seed-0", factory="./usernets_mod.py:make_net")
    import dropkit

    drops = [m for m in model.modules() if isinstance(m, dropkit.nn.Dropout)]
    assert [m.p for m in drops] == [0.2, 0.6]  # --replace (default): torch's Dropout became dropkit's
    base = load_model(out / "runs" / "p0" / "seed-0", factory="./usernets_mod.py:make_net")
    assert [m.p for m in base.modules() if isinstance(m, dropkit.nn.Dropout)] == [0.0, 0.0]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "./usernets_mod.py:make_net" and len(config["dataset_sha256"]) == 64
    lint = json.loads((out / "lint.json").read_text())
    assert isinstance(lint, list)
    assert "## Lint" in (out / "report.md").read_text()


def test_module_model_no_replace_keeps_torch_dropout_and_module_dataset(nets, capsys):
    out = nets / "o2"
    assert main(["compare", "--dataset", "usernets_mod:make_data", "--model", "usernets_mod:make_net", "--no-replace",
                 "--p", "0.4", *TINY, "--out", str(out)]) == 0
    from dropkit.lab.train import load_model

    model = load_model(out / "runs" / "p0.4" / "seed-1", factory="usernets_mod:make_net")
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [type(m) for m in drops] == [torch.nn.Dropout, torch.nn.Dropout] and [m.p for m in drops] == [0.4, 0.4]
    res = json.loads((out / "runs" / "p0.4" / "seed-1" / "result.json").read_text())
    assert res["spec"]["replace"] is False and 0.0 <= res["summary"]["final_val_acc"] <= 1.0


def test_regression_npz_reports_loss_only(nets, capsys):
    data = _npz(nets / "r.npz", "regression")
    out = nets / "reg"
    assert main(["sweep", "--dataset", data, "--task", "regression", "--rates", "0", "0.3", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "val loss" in text and "val acc" not in text and "best by validation loss: p=" in text
    hist = json.loads((out / "runs" / "p0" / "seed-0" / "result.json").read_text())["history"]
    assert "val_acc" not in hist[0] and hist[-1]["val_loss"] < hist[0]["val_loss"] * 1.5
    # the running (dropout-active) training loss is kept, and no running accuracy is made up
    assert "train_loss_running" in hist[0] and not any("acc" in k for k in hist[0])
    assert "running train loss" in text and "running train acc" not in text


@pytest.mark.parametrize("override, message", [
    ({"y_val": None}, "has no array y_val"),
    ({"y_train": np.zeros(59, np.int64)}, "x_train has 60 rows and y_train 59"),
    ({"x_val": np.zeros((30, 4), np.float32)}, "x_train samples have shape (5,) but x_val samples (4,)"),
    ({"y_train": np.full(60, 0.5)}, "y_train must be one integer class label per sample"),
])
def test_bad_npz_names_the_array_or_the_mismatch(nets, capsys, override, message):
    data = _npz(nets / "bad.npz", **override)
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--dataset", data, *TINY, "--out", str(nets / "x")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (nets / "x").exists()  # nothing written before the data was checked


@pytest.mark.parametrize("argv, message", [
    (["--model", "usernets_mod:no_dropout"], "has no dropout module"),
    (["--model", "usernets_mod:not_a_model"], "must return a torch.nn.Module"),
    (["--model", "usernets_mod:missing"], "has no attribute 'missing'"),
    (["--model", "./nope.py:f"], "file ./nope.py not found"),
    (["--model", "usernets_mod:make_net", "--p", "0.1,0.2,0.3"], "expected one rate or 2 rates (one per dropout module"),
    (["--model", "usernets_mod:make_net", "--variant", "Dropout"], "--variant"),
    (["--model", "usernets_mod:make_net", "--input-p", "0.2"], "--input-p"),
    (["--model", "mlp", "--no-replace"], "--no-replace"),
    (["--model", "cnn", "--hidden", "8"], "--hidden"),
    (["--dataset", "digits", "--task", "regression"], "--task"),
])
def test_bad_model_flags_name_the_problem_before_writing(nets, capsys, argv, message):
    data = _npz(nets / "d.npz")
    argv = argv if "--dataset" in argv else ["--dataset", data, *argv]
    with pytest.raises(SystemExit) as exc:
        main(["compare", *argv, *TINY, "--out", str(nets / "y")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (nets / "y").exists()


def test_hidden_sets_width_and_depth_of_the_mlp():
    from dropkit.lab.models import build_model

    m = build_model("mlp", (1, 8, 8), 10, p=(0.1, 0.2, 0.3), hidden=(16, 8, 4))
    widths = [layer.out_features for layer in m.modules() if isinstance(layer, torch.nn.Linear)]
    assert widths == [16, 8, 4, 10]
    assert [d.p for d in m.modules() if hasattr(d, "p")] == [0.1, 0.2, 0.3]
