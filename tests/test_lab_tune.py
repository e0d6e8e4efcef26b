"""`dropkit tune`: Optuna study in SQLite, continued, shared, killed (PostgreSQL: test_lab_tune_postgres.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from dropkit.cli import main

BASE = ["tune", "--dataset", "overfit", "--model", "overfit-mlp", "--epochs", "2", "--heartbeat", "1", "--quiet"]


def _states(storage: str) -> dict[str, int]:
    study = optuna.load_study(study_name="dropkit-tune", storage=storage)
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'study.db'}"


def test_tune_reports_best_rates_and_continues_the_study(tmp_path, capsys):
    out = tmp_path / "t"
    assert main([*BASE, "--trials", "3", "--tune-input", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best: trial " in text and "p_hidden1=" in text and "p_hidden3=" in text and "input_p=" in text
    assert _states(_storage(out)) == {"COMPLETE": 3}
    rows = json.loads((out / "trials.json").read_text())
    assert [r["number"] for r in rows] == [0, 1, 2] and all(0 <= r["params"]["p_hidden2"] <= 0.8 for r in rows)
    report = (out / "report.md").read_text()
    assert "| trial | state | val acc (%) |" in report and "plots/history.png" in report
    for png in ("history.png", "importance.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # the same command continues the study: more trials asked for, only those are trained
    assert main([*BASE, "--trials", "4", "--tune-input", "--out", str(out)]) == 0
    assert _states(_storage(out)) == {"COMPLETE": 4}
    assert main([*BASE, "--trials", "4", "--tune-input", "--out", str(out)]) == 0
    assert _states(_storage(out)) == {"COMPLETE": 4}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # another configuration in the same folder is refused
        main([*BASE, "--trials", "4", "--epochs", "3", "--out", str(out)])
    assert exc.value.code == 2 and "different configuration" in capsys.readouterr().err


def _worker(out: Path, trials: int, delay: str = "0", extra: tuple = ()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dropkit", *BASE, "--trials", str(trials), *extra, "--out", str(out)],
                            env={**os.environ, "DROPKIT_LAB_EPOCH_DELAY": delay},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkilled_worker_loses_only_its_running_trial(tmp_path):
    out = tmp_path / "k"
    proc = _worker(out, 3, delay="0.5")
    running = out / "trials" / "trial-1" / "seed-0" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (running.is_file() and running.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _states(_storage(out)) == {"COMPLETE": 1, "RUNNING": 1}
    again = _worker(out, 3)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    states = _states(_storage(out))
    assert states["COMPLETE"] == 3 and states["FAIL"] == 1 and "RUNNING" not in states


def test_two_workers_share_one_sqlite_study_and_end_with_exactly_n_trials(tmp_path):
    out = tmp_path / "two"
    procs = [_worker(out, 5, delay="0.05") for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    states = _states(_storage(out))
    assert states["COMPLETE"] == 5 and set(states) <= {"COMPLETE", "PRUNED"}
    study = optuna.load_study(study_name="dropkit-tune", storage=_storage(out))
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "PRUNED")
