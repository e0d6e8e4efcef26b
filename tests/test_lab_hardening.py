"""Run folders that survive bad files, full disks, two processes, bad flags, Ctrl-C and bugs (issue #13)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dropkit import _io
from dropkit.cli import build_parser, main
from dropkit.lab.datasets import load_dataset
from dropkit.lab.train import RunSpec, load_model, train_run

TINY = ["--dataset", "overfit", "--epochs", "2", "--seeds", "1", "--quiet"]


def _flip_bit(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x10
    path.write_bytes(bytes(data))


class _Stop(Exception):
    pass


def test_bit_flipped_checkpoint_restarts_the_run_and_ends_like_an_uninterrupted_one(tmp_path, capsys):
    data = load_dataset("overfit")
    spec = RunSpec("overfit", "overfit-mlp", (0.5,), epochs=4, schedule="linear:4")
    ref = train_run(spec, data, tmp_path / "ref")

    def stop_after_2(epoch, n, m):
        if epoch == 2:
            raise _Stop

    run = tmp_path / "run"
    with pytest.raises(_Stop):
        train_run(spec, data, run, progress=stop_after_2)
    _flip_bit(run / "checkpoint.pt")
    res = train_run(spec, data, run)
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} is corrupt or truncated" in err and "restarting this run from scratch" in err
    assert res["history"] == ref["history"]  # every metric of every epoch, as uninterrupted
    assert len(res["restarted"]) == 1 and "SHA-256" in res["restarted"][0]["reason"]
    assert json.loads((run / "result.json").read_text())["restarted"] == res["restarted"]
    assert (run / "checkpoint.pt.corrupt").is_file()


def test_checkpoint_digest_survives_a_kill_between_the_two_renames(tmp_path):
    path = tmp_path / "c.pt"
    _io.atomic_torch_save({"a": torch.ones(3)}, path)
    old = path.read_bytes()
    _io.atomic_torch_save({"a": torch.zeros(3)}, path)
    path.write_bytes(old)  # as if killed after the sidecar but before the checkpoint's rename
    assert torch.equal(_io.load_torch_verified(path)["a"], torch.ones(3))
    path.write_bytes(old[: len(old) // 2])
    with pytest.raises(_io.CorruptFileError, match="c.pt is corrupt or truncated"):
        _io.load_torch_verified(path)
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.raises(_io.CorruptFileError, match="no readable checksum file"):
        _io.load_torch_verified(path)


def _compare(out, *extra):
    return main(["compare", *TINY, *extra, "--out", str(out)])


def test_corrupt_run_files_are_named_in_the_error(tmp_path, capsys):
    out = tmp_path / "o"
    assert _compare(out) == 0
    capsys.readouterr()
    run = out / "runs" / "p0.5" / "seed-0"

    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_acc": 0.5\n')
    with pytest.raises(SystemExit) as exc:
        main(["report", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{run / 'metrics.jsonl'}, line 1, is not valid JSON" in err

    (run / "result.json").write_text('{"summary": "unterminated')
    with pytest.raises(SystemExit) as exc:
        _compare(out)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{run / 'result.json'} is not valid JSON" in err and "delete it" in err

    (out / "config.json").write_text("{")
    with pytest.raises(SystemExit) as exc:
        _compare(out)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{out / 'config.json'} is not valid JSON" in err


def test_truncated_model_is_a_clear_error_with_the_path(tmp_path, capsys):
    out = tmp_path / "o"
    assert _compare(out) == 0
    run = out / "runs" / "p0.5" / "seed-0"
    model = run / "model.pt"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(_io.CorruptFileError, match="model.pt is corrupt or truncated"):
        load_model(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["mc", str(run), "--samples", "2"])
    assert exc.value.code == 2 and str(model) in capsys.readouterr().err


def test_disk_full_is_a_clear_message_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "f.json"
    _io.atomic_write_json(path, {"v": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", full)
    with pytest.raises(_io.DiskFullError, match=f"no space left on the device while writing {path}"):
        _io.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with pytest.raises(SystemExit) as exc:
        _compare(tmp_path / "o")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no space left on the device" in err and "Traceback" not in err


def test_every_run_folder_file_is_0644(tmp_path, capsys):
    out = tmp_path / "o"
    old = os.umask(0o077)  # even under a strict umask: one mode for every file
    try:
        assert _compare(out) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {"0o644"}, modes
    assert {"report.md", "summary.json", "plots/curves.png", "env.json", "lint.json", ".lock"} <= set(modes)


def test_second_process_on_the_same_folder_is_refused_naming_the_holder(tmp_path, capsys):
    from dropkit.lab.experiment import folder_lock

    out = tmp_path / "o"
    with folder_lock(out), pytest.raises(SystemExit) as exc:
        _compare(out)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"is in use by process {os.getpid()}" in err
    assert _compare(out) == 0  # the lock is released with its holder


def test_invalid_flag_then_the_corrected_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for bad in (["--val-fraction", "1.5"], ["--epochs-factor", "inf"], ["--lr", "nan"]):
        with pytest.raises(SystemExit) as exc:
            main(["compare", *TINY, *bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"Invalid value for `{bad[0]}`" in err and "Traceback" not in err
        assert not (tmp_path / "runs").exists()  # nothing created
    assert main(["compare", *TINY]) == 0  # the default --out, not blocked by the failed attempts
    assert (tmp_path / "runs" / "compare-overfit-mlp" / "report.md").is_file()


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch, capsys):
    from dropkit.lab import train

    def broken(*a, **k):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(train, "evaluate", broken)
    assert _compare(tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug, not bad input" in err and "please report it" in err


def test_ctrl_c_prints_one_line_how_to_resume(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "dropkit", "compare", *TINY, "--epochs", "50", "--out", str(out)],
                            env={**os.environ, "DROPKIT_LAB_EPOCH_DELAY": "0.2"}, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    metrics = out / "runs" / "p0" / "seed-0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("run the same command again to resume")


def test_progress_one_plain_line_per_finished_run_off_a_terminal(tmp_path, capsys):
    assert main(["compare", "--dataset", "overfit", "--epochs", "2", "--seeds", "2", "--out", str(tmp_path / "o")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[")]
    assert len(lines) == 4 and lines[0].startswith("[1/4] no dropout, seed 0: val acc ")
    assert lines[3].startswith("[4/4] dropout p=0.5, seed 1:") and "after 2 epochs" in lines[3]


def test_missing_matplotlib_is_reported_at_start(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "matplotlib" else real(name, *a, **k))
    with pytest.raises(SystemExit) as exc:
        _compare(tmp_path / "o")
    assert exc.value.code == 2 and "pip install 'dropkit[lab]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["demo", "guard", "mc", "lint", "masks", "compare", "sweep", "tune", "report"])
def test_help_texts_are_plain(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    import re

    for markup in ("``", ":mod:", ":func:", ":class:", "**", "(default: None)", "['"):
        assert markup not in text, (command, markup)
    assert not re.search(r"\(default: [^)]*\)\s+\(default:", text), command
    assert len(text.split("\n\n")[1].strip()) > 20  # a description under the usage


def test_flag_of_the_validation_kind_from_the_cli_is_short_but_a_deep_value_error_is_not():
    from dropkit.cli._errors import UsageError, is_user_error

    assert is_user_error(UsageError("x"))
    try:
        from dropkit._validation import check_p

        check_p(2.0)
    except ValueError as exc:
        assert is_user_error(exc)
    try:
        torch.zeros(2) @ torch.zeros(3)
    except RuntimeError as exc:
        assert not is_user_error(exc)
    try:
        int("x")
    except ValueError as exc:
        assert not is_user_error(exc)


def test_ctrl_c_with_jobs_stops_every_worker_and_prints_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: workers leave it to the parent, which stops them;
    one line, no traceback from any process, no worker left behind, and the same command resumes to the end."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "dropkit", "compare", "--dataset", "overfit", "--seeds", "2", "--quiet", "--jobs", "2",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([*cmd, "--epochs", "40"], env={**os.environ, "DROPKIT_LAB_EPOCH_DELAY": "0.2"},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while not any(m.read_text().count("\n") >= 1 for m in out.glob("runs/*/*/metrics.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].endswith("run the same command again to resume")
    with pytest.raises(ProcessLookupError):  # the group is gone: no worker outlived the parent
        for _ in range(100):
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
    done = subprocess.run([*cmd, "--epochs", "40"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("runs/*/*/result.json"))) == 4
