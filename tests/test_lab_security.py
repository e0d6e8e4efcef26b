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
