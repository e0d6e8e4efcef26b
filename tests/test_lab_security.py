"""Issue 21 for the lab: a run folder is data (mc and report import no code it names), no secret is
printed or written, report inputs are verified, a checkpoint belongs to its run, bad sizes are refused early."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from dropkit.cli import main

TINY = ["--epochs", "1", "--seeds", "1", "--quiet", "--train-size", "200", "--val-size", "100"]


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A model factory file that writes a marker whenever it is imported."""
    marker = tmp_path / "imported"
    (tmp_path / "plantnets.py").write_text(textwrap.dedent(f'''
        import pathlib
        from torch import nn
        pathlib.Path({str(marker)!r}).write_text("imported")

        def make_net(in_shape, num_classes):
            n = 1
            for s in in_shape:
                n *= s
            return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, num_classes))
    '''))
    monkeypatch.chdir(tmp_path)
    yield marker
    for key in [k for k in sys.modules if k.startswith("_dropkit_user_")]:
        sys.modules.pop(key)


def test_mc_and_report_import_no_factory_named_by_the_folder(planted, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compare", "--model", "./plantnets.py:make_net", *TINY, "--out", str(out)]) == 0
    assert planted.exists()  # the user named it on the command line: imported
    planted.unlink()
    for key in [k for k in sys.modules if k.startswith("_dropkit_user_")]:
        sys.modules.pop(key)  # a fresh process: nothing imported yet
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # report reads files only
    assert not planted.exists()
    with pytest.raises(SystemExit) as info:
        main(["mc", str(out), "--samples", "2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "./plantnets.py:make_net" in err and "--model ./plantnets.py:make_net" in err and "model.pt" in err
    assert not planted.exists()
    # another factory named on the command line is not the folder's: still refused
    with pytest.raises(SystemExit):
        main(["mc", str(out), "--samples", "2", "--model", "./other.py:f"])
    assert "you named --model ./other.py:f" in capsys.readouterr().err and not planted.exists()
    assert main(["mc", str(out), "--samples", "2", "--model", "./plantnets.py:make_net"]) == 0
    assert planted.exists()


def test_mc_refuses_a_dataset_factory_named_by_the_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"dataset": "evilmod:make_data"}))
    with pytest.raises(SystemExit) as info:
        main(["mc", str(run)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--dataset evilmod:make_data" in err and "config.json" in err


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("--storage postgresql://ann:s3cret@db:5432/x", "--storage postgresql://ann:***@db:5432/x"),
        ("postgresql+psycopg://ann:p@ss/word@db/x", "postgresql+psycopg://ann:***@db/x"),
        ("mysql://root:pw@h/db?sslpassword=abc&x=1", "mysql://root:***@h/db?sslpassword=***&x=1"),
        ("https://host/x?token=abc", "https://host/x?token=***"),
        ("postgresql://ann@db/x sqlite:////tmp/a.db", "postgresql://ann@db/x sqlite:////tmp/a.db"),
    ],
)
def test_credentials_are_masked(text, masked):
    from dropkit._secrets import mask_credentials

    assert mask_credentials(text) == masked


def test_error_lines_and_tracebacks_are_masked(monkeypatch, capsys):
    """Every error line of the CLI, and the traceback of an internal error, pass through the mask."""
    import dropkit.cli.report as report_cli

    def boom(args):
        raise RuntimeError("cannot reach postgresql://ann:s3cret@db/x")

    monkeypatch.setattr(report_cli, "run", boom)
    assert main(["report", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err and "postgresql://ann:***@db/x" in err


def _flip_digit(path, key):
    """Change one digit of the first ``key`` value in a JSON-lines file (still valid JSON)."""
    text = path.read_text()
    at = text.index(f'"{key}": ') + len(key) + 6
    while not text[at].isdigit() or text[at] == "0" and text[at + 1] == ".":
        at += 1
    digit = text[at]
    path.write_text(text[:at] + ("5" if digit != "5" else "3") + text[at + 1:])


def test_bit_flipped_metrics_are_recomputed_from_the_verified_checkpoint(tmp_path, capsys):
    """MEDIUM: one flipped digit of metrics.jsonl changed a report's val acc silently."""
    out = tmp_path / "o"
    assert main(["compare", "--dataset", "overfit", "--epochs", "2", "--seeds", "2", "--quiet", "--out", str(out)]) == 0
    before = (out / "report.md").read_text()
    metrics = out / "runs" / "p0.5" / "seed-1" / "metrics.jsonl"
    good = metrics.read_text()
    _flip_digit(metrics, "val_acc")
    assert metrics.read_text() != good
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert str(metrics) in err and "recomputed it from" in err and "checkpoint.pt" in err
    assert metrics.read_text() == good  # rewritten from the checkpoint, with its digest
    after = (out / "report.md").read_text()
    assert after.split("- date:")[1].split("## Plots")[0] == before.split("- date:")[1].split("## Plots")[0]
    # without a checkpoint that verifies there is nothing to recompute from: refused, naming the file
    _flip_digit(metrics, "val_acc")
    (metrics.parent / "checkpoint.pt").unlink()
    with pytest.raises(SystemExit) as info:
        main(["report", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(metrics) in err and "does not match" in err


def test_tampered_result_json_is_named(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compare", "--dataset", "overfit", "--epochs", "2", "--seeds", "1", "--quiet", "--out", str(out)]) == 0
    result = out / "runs" / "p0" / "seed-0" / "result.json"
    data = json.loads(result.read_text())
    data["history"][0]["val_acc"] = 0.123
    result.write_text(json.dumps(data))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["report", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(result) in err and "disagrees" in err


def test_another_runs_checkpoint_is_refused_naming_both(tmp_path):
    import shutil

    from dropkit.lab.datasets import load_dataset
    from dropkit.lab.train import ForeignCheckpoint, RunSpec, train_run

    data = load_dataset("overfit")
    spec = RunSpec("overfit", "overfit-mlp", (0.5,), epochs=3)

    class Stop(Exception):
        pass

    def stop_after_1(epoch, n, m):
        if epoch == 1:
            raise Stop

    runs = {}
    for name, s in (("a", spec), ("b", spec), ("c", RunSpec("overfit", "overfit-mlp", (0.5,), epochs=3, seed=1))):
        runs[name] = tmp_path / name
        with pytest.raises(Stop):
            train_run(s, data, runs[name], progress=stop_after_1)
    ids = {k: (v / "run_id").read_text().strip() for k, v in runs.items()}
    for other in ("b", "c"):  # same config in another folder; another config (seed)
        for f in ("checkpoint.pt", "checkpoint.pt.sha256"):
            shutil.copy(runs[other] / f, runs["a"] / f)
        with pytest.raises(ForeignCheckpoint) as info:
            train_run(spec, data, runs["a"])
        msg = str(info.value)
        assert ids[other] in msg and ids["a"] in msg and str(runs["a"] / "checkpoint.pt") in msg
    # its own checkpoint resumes
    with pytest.raises(Stop):
        train_run(spec, data, tmp_path / "d", progress=stop_after_1)
    assert train_run(spec, data, tmp_path / "d")["summary"]["epochs"] == 3


def test_train_size_larger_than_the_data_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "big"
    with pytest.raises(SystemExit) as info:
        main(["compare", "--epochs", "1", "--seeds", "1", "--quiet", "--train-size", "999999", "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "`--train-size`" in err and "has 1438 samples" in err and "Received: 999999" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["tune", "--epochs", "1", "--trials", "1", "--quiet", "--val-size", "5000", "--out", str(tmp_path / "t")])
    assert "--val-size" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_another_runs_model_is_refused_by_mc(tmp_path, capsys):
    import shutil

    out = tmp_path / "o"
    assert main(["compare", "--dataset", "overfit", "--epochs", "1", "--seeds", "1", "--quiet", "--out", str(out)]) == 0
    mine, theirs = out / "runs" / "p0.5" / "seed-0", out / "runs" / "p0" / "seed-0"
    for f in ("model.pt", "model.pt.sha256"):
        shutil.copy(theirs / f, mine / f)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["mc", str(out), "--samples", "2"])
    err = capsys.readouterr().err
    ids = [(d / "run_id").read_text().strip() for d in (mine, theirs)]
    assert info.value.code == 2 and str(mine / "model.pt") in err and all(i in err for i in ids), err
