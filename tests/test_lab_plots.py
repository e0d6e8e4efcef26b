"""The lab's plots: accuracy in %, legends on both panels, seed spread, the gap axis through zero."""

from __future__ import annotations

import pytest

from dropkit.lab import report
from dropkit.lab.plan import Point


def _hist(acc, seed):
    return [{"epoch": e, "train_acc": acc + 0.01 * seed, "val_acc": acc - 0.02, "train_loss": 1 / e,
             "val_loss": 1.2 / e, "gap": 0.02 + 0.01 * seed} for e in range(1, 4)]


@pytest.fixture
def figures(monkeypatch):
    saved = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: saved.__setitem__(path.name, fig))
    return saved


def test_curves_in_percent_with_legends_and_seed_band(figures, tmp_path):
    points = [(Point("no dropout", (0.0,), 0.0, 3), [_hist(0.9, s) for s in range(3)]),
              (Point("dropout p=0.5", (0.5,), 0.0, 3), [_hist(0.8, s) for s in range(3)])]
    report.plot_curves(points, tmp_path / "curves.png", "t")
    acc, loss = figures["curves.png"].axes
    assert "%" in acc.get_ylabel() and acc.get_legend() is not None and loss.get_legend() is not None
    assert max(max(line.get_ydata()) for line in acc.get_lines()) == pytest.approx(91.0)  # mean of 90, 91, 92 %
    assert len(acc.collections) == 4 and "min-max over 3 seeds" in acc.get_title()  # one band per curve


def test_gap_axis_includes_zero_and_says_when_within_noise(figures, tmp_path):
    rows = [{"rate": r, "final_gap": (g, 0.004), "final_train_acc": (0.95, 0.01), "final_val_acc": (v, 0.01)}
            for r, g, v in ((0.0, 0.05, 0.900), (0.5, 0.045, 0.905))]
    report.plot_gap(rows, tmp_path / "gap.png", "t")
    gap, acc = figures["gap.png"].axes
    assert gap.get_ylim()[0] < 0 < gap.get_ylim()[1]
    assert "within seed noise" in acc.get_title()


def test_running_train_metrics_are_dotted_lines_beside_the_eval_mode_ones(figures, tmp_path):
    def hist(seed):
        return [dict(m, train_acc_running=0.7 + 0.01 * seed, train_loss_running=2 / m["epoch"]) for m in _hist(0.9, seed)]

    report.plot_curves([(Point("dropout p=0.5", (0.5,), 0.0, 3), [hist(s) for s in range(3)])], tmp_path / "c.png", "t")
    acc, loss = figures["c.png"].axes
    # mean over the 3 seeds: running acc 70, 71, 72 % -> 71; eval-mode train acc 90, 91, 92 % -> 91
    expected = {acc: ([71.0] * 3, [91.0] * 3), loss: ([2.0, 1.0, 2 / 3], [1.0, 0.5, 1 / 3])}
    for ax, (running, train) in expected.items():
        lines = {line.get_label(): line for line in ax.get_lines()}
        dotted, dashed = lines["dropout p=0.5 (running train)"], lines["dropout p=0.5 (train)"]
        assert dotted.get_linestyle() == ":" and dashed.get_linestyle() == "--"
        assert list(dotted.get_ydata()) == pytest.approx(running) and list(dashed.get_ydata()) == pytest.approx(train)
    assert "running" in acc.get_ylabel()
