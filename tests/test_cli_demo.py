"""The default `dropkit` command: the mask demo."""

from __future__ import annotations

import subprocess
import sys

from dropkit.cli import main


def test_demo_prints_mask_and_eval_agreement(capsys):
    assert main(["demo", "--p", "0.5", "--units", "12", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "mask (0 = dropped)" in out and "eval passes identical: True" in out
    train = [line for line in out.splitlines() if line.strip().startswith("train pass")]
    assert len(train) == 3 and len({t.split(None, 3)[3] for t in train}) == 3


def test_default_command_is_demo():
    r = subprocess.run([sys.executable, "-m", "dropkit"], capture_output=True, text=True, check=True)
    assert "dropkit demo" in r.stdout and "(p = probability of DROPPING" in r.stdout


def test_bad_rate_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "dropkit", "demo", "--p", "1.5"], capture_output=True, text=True)
    assert r.returncode == 2 and "`p`" in r.stderr and "1.5" in r.stderr


def test_demo_mask_shows_the_rate(capsys):
    for p, units in ((0.5, 10), (0.2, 10), (0.8, 12)):
        assert main(["demo", "--p", str(p), "--units", str(units)]) == 0
        out = capsys.readouterr().out
        assert f"dropped {round(p * units)} of {units} neurons" in out
        mask = next(line for line in out.splitlines() if line.startswith("mask (0 = dropped)"))
        assert mask.split()[4:].count("0") == round(p * units)
