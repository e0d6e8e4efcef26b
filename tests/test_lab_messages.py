"""Every lab message says what the user typed and what to do; accuracy in % wherever a person reads it."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from dropkit.cli import main

NETS = textwrap.dedent('''
    from torch import nn

    def two_dropouts(in_shape, num_classes):
        n = 1
        for s in in_shape:
            n *= s
        return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 16),
                             nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, num_classes))

    def broken(in_shape):
        raise KeyError("hidden_size")
''')
TINY = ["--epochs", "2", "--seeds", "1", "--quiet"]


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "msgnets_mod.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("msgnets_mod", None)


def _npz(path, seed=0):
    rng = np.random.default_rng(seed)
    x_train, x_val = rng.standard_normal((60, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32)
    np.savez(path, x_train=x_train, y_train=(x_train[:, 0] > 0).astype(np.int64), x_val=x_val,
             y_val=(x_val[:, 0] > 0).astype(np.int64))
    return str(path)


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr()


def test_wrong_number_of_rates_for_a_user_model_reports_the_rates_typed(nets, capsys):
    _npz(nets / "d.npz")
    cap = _fails(["compare", "--dataset", "d.npz", "--model", "msgnets_mod:two_dropouts", "--p", "0.2,0.5,0.7",
                  *TINY, "--out", "o"], capsys)
    assert "Received: p=0.2,0.5,0.7" in cap.err and "p=0,0,0" not in cap.err
    assert "expected one rate or 2 rates" in cap.err and not (nets / "o").exists()


def test_a_factory_that_raises_is_one_line_naming_it_and_where(nets, capsys):
    cap = _fails(["compare", "--dataset", "overfit", "--model", "msgnets_mod:broken", *TINY, "--out", "o"], capsys)
    assert "msgnets_mod:broken raised KeyError: 'hidden_size' (at " in cap.err and "msgnets_mod.py:" in cap.err
    assert "internal error" not in cap.err and "Traceback" not in cap.err and not (nets / "o").exists()


def test_mc_on_own_npz_data_works_or_refuses_up_front_naming_the_flag(nets, capsys, monkeypatch):
    _npz(nets / "data.npz")
    assert main(["compare", "--dataset", "data.npz", *TINY, "--out", "run"]) == 0
    capsys.readouterr()
    assert main(["mc", "run", "--samples", "3"]) == 0  # from the folder it was made in: the file as typed
    out = capsys.readouterr().out
    assert "(1/1 runs with dropout)" in out
    assert "1 run(s) trained without dropout (the baseline) skipped by design" in out
    assert "acc eval %" in out

    elsewhere = nets / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cap = _fails(["mc", "../run", "--samples", "3"], capsys)
    assert "pass --dataset FILE" in cap.err and "acc eval" not in cap.out  # refused before the table starts
    assert main(["mc", "../run", "--samples", "3", "--dataset", "../data.npz"]) == 0
    capsys.readouterr()
    _npz(elsewhere / "other.npz", seed=1)
    cap = _fails(["mc", "../run", "--samples", "3", "--dataset", "other.npz"], capsys)
    assert "is not the data" in cap.err and "SHA-256" in cap.err
    cap = _fails(["mc", "../run", "--dataset", "msgnets_mod:data"], capsys)
    assert "Invalid value for `--dataset`" in cap.err and "same kind of data set (a FILE.npz)" in cap.err


def test_mc_dataset_flag_is_refused_for_a_builtin_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--dataset", "overfit", *TINY, "--out", "b"]) == 0
    capsys.readouterr()
    cap = _fails(["mc", "b", "--dataset", "x.npz"], capsys)
    assert "Invalid value for `--dataset`" in cap.err and "built-in 'overfit'" in cap.err


def _row(label, rate, train, val):
    return {"label": label, "rate": rate, "final_train_acc": (train, 0.0), "final_val_acc": (val, 0.0),
            "final_gap": (train - val, 0.0)}


def test_one_verdict_per_setting_by_the_documented_rule():
    from dropkit.lab.report import sweep_verdicts

    rows = [_row("p=0", 0, 1.0, 0.975), _row("p=0.5", 0.5, 0.977, 0.973), _row("p=0.8", 0.8, 0.915, 0.803),
            _row("p=0.9", 0.9, 0.90, 0.88)]
    v = sweep_verdicts(rows)
    assert v[0] == "p=0: no over- or underfitting flag"
    assert v[1] == "p=0.5: no over- or underfitting flag"  # 97.7 % train is not underfitting
    assert v[2] == "p=0.8: overfits: gap 11.2 points > 5"  # one verdict, not also "underfits"
    assert v[3].startswith("p=0.9: underfits: train acc 90.0 % is 7.5 points below the best val acc (97.5 %, p=0)")
    assert v[4].startswith("best by validation accuracy: p=0 (97.5")
    assert all(("overfits" in line) + ("underfits" in line) <= 1 for line in v)


def test_the_rule_is_written_in_docs_lab_md():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "lab.md").read_text()
    assert "one verdict" in text and "below the best validation accuracy" in text


def test_report_names_the_model_for_a_whole_model_finding(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["compare", "--dataset", "overfit", *TINY, "--out", str(out)]) == 0  # 2 sites, one rate: DK109
    report = (out / "report.md").read_text()
    assert "- DK109 info `model mlp`:" in report and "``" not in report.split("## Lint")[1]


def test_progress_shows_accuracy_in_percent():
    from dropkit.lab.experiment import _progress_info

    assert _progress_info({"val_acc": 0.7554}) == "val acc 75.5 %"
    assert _progress_info({"val_loss": 0.25}) == "val loss 0.25"


def test_tune_history_plots_percent_and_the_legend_is_inside_the_png(tmp_path):
    from matplotlib.image import imread

    from dropkit.lab.tune import plot_history

    done = [{"number": 0, "value": 0.76}, {"number": 1, "value": 0.83}, {"number": 3, "value": 0.80}]
    fig = plot_history(done, "acc", tmp_path / "history.png", "study")
    ax = fig.axes[0]
    assert "%" in ax.get_title() and "%" in ax.get_ylabel()
    assert list(ax.lines[0].get_ydata()) == pytest.approx([76.0, 83.0, 80.0])
    assert list(ax.lines[1].get_ydata()) == pytest.approx([76.0, 83.0, 83.0])  # best so far
    assert imread(tmp_path / "history.png").shape[0] > 0


def test_saved_figures_keep_a_legend_placed_outside_the_axes(tmp_path):
    from matplotlib.image import imread

    from dropkit.lab.report import _figure, save_figure

    fig = _figure(1, width=4.0)  # 4 x 3.8 inches at 110 dpi: 440 px wide
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="a long legend entry that sits right of the axes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(fig, tmp_path / "f.png")
    assert imread(tmp_path / "f.png").shape[1] > 440  # the crop grew to hold the legend
