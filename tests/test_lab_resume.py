"""A lab run killed with SIGKILL and started again ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the schedule ramps the rates over the first 8 optimiser steps (4 epochs): a resumed run must continue it
ARGS = ["compare", "--dataset", "overfit", "--epochs", "5", "--seeds", "2", "--schedule", "linear:8", "--quiet"]
# the training recipes: SGD's momentum buffers, the lr schedule's position, max-norm and early stopping's best.pt
RECIPE = ["--optimizer", "sgd", "--momentum", "0.9", "--nesterov", "--lr", "0.05", "--lr-schedule", "cosine",
          "--max-norm", "2", "--hidden", "64,32", "--early-stopping", "10"]


def _cli(out: Path, env: dict | None = None, extra: tuple = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dropkit", *ARGS, *extra, "--out", str(out)],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("extra", [(), tuple(RECIPE)], ids=["adam", "sgd-recipe"])
def test_sigkill_mid_epoch_and_mid_sweep_then_resume_gives_identical_metrics(tmp_path, extra):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _cli(ref, extra=extra).wait() == 0

    # each epoch sleeps 0.25 s after its optimizer steps and before its checkpoint, so the
    # kills land mid-epoch: the epoch's updates are lost and must be redone identically
    slow = {"DROPKIT_LAB_EPOCH_DELAY": "0.25"}
    first = killed / "runs" / "p0" / "seed-1" / "metrics.jsonl"
    proc = _cli(killed, slow, extra)
    _kill_when(proc, lambda: _lines(first) >= 2)  # second run of the first setting, 2 epochs done
    assert not (killed / "runs" / "p0" / "seed-1" / "result.json").exists()
    assert (killed / "runs" / "p0" / "seed-0" / "result.json").exists()

    second = killed / "runs" / "p0.5" / "seed-0" / "metrics.jsonl"
    finished_before = (killed / "runs" / "p0" / "seed-0" / "result.json").read_text()
    proc = _cli(killed, slow, extra)
    _kill_when(proc, lambda: _lines(second) >= 3)
    # the finished run was skipped, not retrained
    assert (killed / "runs" / "p0" / "seed-0" / "result.json").read_text() == finished_before

    assert _cli(killed, extra=extra).wait() == 0
    for run in sorted((ref / "runs").glob("*/seed-*")):
        rel = run.relative_to(ref)
        assert '"train_acc_running"' in (run / "metrics.jsonl").read_text()  # the epoch's running sums are redone too
        assert (killed / rel / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text(), rel
    assert not list(killed.rglob("*.tmp")), "a temporary checkpoint file was left behind after completion"
