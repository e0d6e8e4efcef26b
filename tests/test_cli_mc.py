"""`dropkit mc` on a lab folder: the default folder is compare's, the table has Brier and the entropy AUROC."""

from __future__ import annotations

import json

import pytest

from dropkit.cli import main


def test_mc_default_folder_is_compares_and_table_has_what_help_promises(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["mc"])
    assert exc.value.code == 2 and "runs/compare-digits-mlp: no such folder" in capsys.readouterr().err
    assert main(["compare", "--epochs", "2", "--seeds", "1", "--quiet"]) == 0  # writes runs/compare-digits-mlp
    capsys.readouterr()
    assert main(["mc", "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "Brier eval" in out and "AUROC H" in out and "(1/1 runs with dropout)" in out and "skipped by design" in out
    row = json.loads((tmp_path / "runs/compare-digits-mlp/runs/p0.5/seed-0/mc.json").read_text())
    assert 0.0 <= row["entropy_auroc"] <= 1.0 and 0.0 <= row["mc_brier"] <= 2.0
    with pytest.raises(SystemExit):
        main(["mc", "--help"])
    assert "Brier" in capsys.readouterr().out


def test_auroc_matches_the_rank_definition():
    import torch

    from dropkit.cli.mc import _auroc

    assert _auroc(torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([False, False, True, True])) == 1.0
    assert _auroc(torch.ones(4), torch.tensor([False, True, False, True])) == 0.5  # ties count 1/2
    s, pos = torch.tensor([3.0, 1, 2, 2, 5]), torch.tensor([True, False, True, False, False])
    pairs = [(a > b) + 0.5 * (a == b) for a in s[pos] for b in s[~pos]]
    assert _auroc(s, pos) == pytest.approx(float(sum(pairs)) / len(pairs))
