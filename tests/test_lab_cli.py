"""`dropkit compare / sweep / report`: end to end on tiny runs, the run folder, bad input."""

from __future__ import annotations

import json

import pytest

from dropkit.cli import _lab, build_parser, main

TINY = ["--dataset", "overfit", "--epochs", "2", "--seeds", "2", "--quiet"]


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


def test_compare_writes_table_folder_and_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, cap = _run(["compare", *TINY, "--p", "0.3", "--epochs-factor", "1.5", "--out", str(out)], capsys)
    assert code == 0
    assert "| no dropout | 2 | 2 |" in cap.out and "| dropout p=0.3 | 3 | 2 |" in cap.out
    assert "± " in cap.out and "best by validation accuracy" in cap.out
    config = json.loads((out / "config.json").read_text())
    assert config["p"] == [0.3] and config["seeds"] == 2 and config["command"] == "compare"
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "dropkit", "python", "date", "platform"} <= set(env)
    run = out / "runs" / "p0.3" / "seed-1"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and {"epoch", "train_acc", "val_acc", "gap", "val_loss", "train_loss_running"} <= set(json.loads(lines[0]))
    assert {"checkpoint.pt", "model.pt", "result.json", "config.json"} <= {p.name for p in run.iterdir()}
    report = (out / "report.md").read_text()
    assert "dropkit compare --dataset overfit" in (out / "command.txt").read_text()
    assert "| setting |" in report and "```bash" in report and "machine:" in report
    for png in ("curves.png", "gap.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the trained model can be rebuilt for inference tools
    from dropkit.lab.train import load_model

    model = load_model(run)
    assert not model.training

    # report rebuilds from the folder
    (out / "report.md").unlink()
    code, cap = _run(["report", str(out)], capsys)
    assert code == 0 and (out / "report.md").is_file() and "| dropout p=0.3 |" in cap.out

    # same command again: everything is finished, nothing retrained, same table
    before = (run / "result.json").read_text()
    code, cap2 = _run(["compare", *TINY, "--p", "0.3", "--epochs-factor", "1.5", "--out", str(out)], capsys)
    assert code == 0 and (run / "result.json").read_text() == before


def test_folder_with_other_config_is_refused(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["compare", *TINY, "--p", "0.2", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "was created with a different configuration (p: [0.5] -> [0.2])" in err and "another --out" in err


def test_sweep_flags_and_names_best_rate(tmp_path, capsys):
    out = tmp_path / "sw"
    code, cap = _run(["sweep", *TINY, "--seeds", "1", "--rates", "0", "0.5", "0.95", "--out", str(out)], capsys)
    assert code == 0
    for label in ("| p=0 |", "| p=0.5 |", "| p=0.95 |"):
        assert label in cap.out
    assert "best by validation accuracy: p=" in cap.out
    summary = json.loads((out / "summary.json").read_text())
    assert [r["rate"] for r in summary["rows"]] == [0, 0.5, 0.95]


def test_sweep_verdicts_detect_under_and_overfitting():
    from dropkit.lab.report import sweep_verdicts

    def row(label, rate, train, val):
        return {"label": label, "rate": rate, "final_train_acc": (train, 0.0), "final_val_acc": (val, 0.0),
                "final_gap": (train - val, 0.0)}

    v = sweep_verdicts([row("p=0", 0, 1.0, 0.80), row("p=0.5", 0.5, 0.95, 0.90), row("p=0.8", 0.8, 0.85, 0.83)])
    assert v[0].startswith("p=0: overfits: gap 20.0")
    assert v[1] == "p=0.5: no over- or underfitting flag"
    assert v[2].startswith("p=0.8: underfits")
    assert v[3].startswith("best by validation accuracy: p=0.5")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--dataset", "imagenet"], "invalid choice: 'imagenet' (choose from digits, overfit, mnist1d, fashion-mnist, mnist)"),
        (["compare", "--model", "resnet"], "invalid choice: 'resnet' (choose from mlp, overfit-mlp, cnn, lstm)"),
        (["compare", "--variant", "Nope"], "invalid choice: 'Nope' (choose from Dropout, GaussianDropout"),
        (["compare", "--p", "1.5"], "Invalid value for `--p`: expected a real number in [0, 1]"),
        (["compare", "--p", "0.1,0.2,0.3"], "Invalid value for `--p`: expected one rate or 2 rates (hidden1, hidden2)"),
        (["compare", "--input-p", "-0.1"], "Invalid value for `--input-p`"),
        (["sweep", "--rates", "0", "2"], "Invalid value for `--rates`: expected a real number in [0, 1]"),
        (["compare", "--epochs", "0"], "Invalid value for `--epochs`"),
        (["compare", "--model", "cnn", "--dataset", "overfit"], "model 'cnn' needs image inputs"),
        (["compare", "--dataset", "mnist", "--no-download", "--cache-dir", "/nonexistent/x"], "downloads are off"),
        (["report", "/nonexistent/folder"], "does not exist"),
        (["compare", "--schedule", "early:5"], "Invalid value for `spec`: expected early:linear:K"),
    ],
)
def test_bad_input_messages(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(argv + (["--out", str(tmp_path / "o"), "--quiet"] if argv[0] != "report" else []))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message.replace("'", "") in err.replace("'", "")


def test_help_shows_defaults_and_lists_match_the_library(capsys):
    from dropkit.lab.datasets import DATASETS
    from dropkit.lab.models import MODELS, VARIANTS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--help"])
    text = capsys.readouterr().out
    for fragment in ("--dataset", "(default: digits)", "(default: mlp)", "(default: 0.5)", "(default: 3)", "--jobs"):
        assert fragment in text
    assert _lab.DATASETS == DATASETS and _lab.MODELS == MODELS and _lab.VARIANTS == tuple(VARIANTS)


def test_jobs_runs_points_in_processes_with_the_same_results(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["sweep", "--dataset", "overfit", "--epochs", "2", "--seeds", "1", "--rates", "0", "0.5", "--quiet"]
    assert main(argv + ["--out", str(a)]) == 0
    assert main(argv + ["--jobs", "2", "--out", str(b)]) == 0
    capsys.readouterr()
    for slug in ("p0", "p0.5"):
        ra = json.loads((a / "runs" / slug / "seed-0" / "result.json").read_text())["history"]
        rb = json.loads((b / "runs" / slug / "seed-0" / "result.json").read_text())["history"]
        assert [m["epoch"] for m in ra] == [m["epoch"] for m in rb]
        for ma, mb in zip(ra, rb):
            assert ma["val_acc"] == pytest.approx(mb["val_acc"], abs=1e-3)
            assert ma["train_loss_running"] == pytest.approx(mb["train_loss_running"], rel=1e-4)


def test_schedule_steps_the_dropout_runs_and_is_checkpointed(tmp_path, capsys):
    import torch

    out = tmp_path / "sched"
    argv = ["compare", *TINY, "--seeds", "1", "--p", "0.5", "--schedule", "early:linear:3", "--out", str(out)]
    code, cap = _run(argv, capsys)
    assert code == 0
    assert json.loads((out / "config.json").read_text())["schedule"] == "early:linear:3"
    assert "--schedule early:linear:3" in (out / "command.txt").read_text()
    run = out / "runs" / "p0.5" / "seed-0"
    assert json.loads((run / "config.json").read_text())["schedule"] == "early:linear:3"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    # overfit: 100 training samples, batch 64 -> 2 optimiser steps per epoch, 2 epochs
    assert ckpt["schedule"] == {"last_step": 4, "base_rates": [0.5, 0.5]}
    # the run without dropout has nothing to schedule
    assert torch.load(out / "runs" / "p0" / "seed-0" / "checkpoint.pt", weights_only=True)["schedule"] is None
