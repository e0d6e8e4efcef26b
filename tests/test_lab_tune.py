"""`dropkit tune`: Optuna study in SQLite (and PostgreSQL when a server can be started), continued, shared, killed."""

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


def _postgres():
    """Start a throw-away PostgreSQL server (Debian's `postgresql` package) on a Unix socket.

    Returns ``(url, stop)``; skips, printing the reason, when no server can be started here.
    As root the server runs as the ``postgres`` user (PostgreSQL refuses root).
    """
    import glob
    import pwd
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if shutil.which("initdb"):
        bins.append(os.path.dirname(shutil.which("initdb")))
    initdb = next((os.path.join(b, "initdb") for b in bins if os.path.isfile(os.path.join(b, "initdb"))), None)
    reason, prefix = None, []
    if initdb is None:
        reason = "no PostgreSQL server binaries (apt-get install postgresql)"
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        except KeyError:
            reason = "running as root and there is no `postgres` user to run the server as"
    import importlib.util

    driver = next((d for d in ("psycopg", "psycopg2") if importlib.util.find_spec(d)), None)
    if reason is None and driver is None:
        reason = "no PostgreSQL driver for SQLAlchemy (pip install 'psycopg[binary]')"
    if reason:
        print(f"PostgreSQL test skipped: {reason}")
        pytest.skip(f"PostgreSQL test skipped: {reason}")
    root = Path(tempfile.mkdtemp(prefix="dropkit-pg-"))
    if prefix:
        shutil.chown(root, "postgres")
    data, sock = root / "data", root
    pg_ctl = os.path.join(os.path.dirname(initdb), "pg_ctl")
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "dropkit"], check=True,
                       capture_output=True)
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "start",
                        "-o", f"-k {sock} -p 54329 -c listen_addresses=''"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        print(f"PostgreSQL test skipped: the server did not start ({exc.stderr.decode(errors='replace')[-300:]})")
        pytest.skip("PostgreSQL test skipped: the server did not start")

    def stop():
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+{driver}://dropkit@/postgres?host={sock}&port=54329", stop


def test_postgresql_study_shared_by_two_workers(tmp_path):
    url, stop = _postgres()
    try:
        out = tmp_path / "pgout"
        procs = [_worker(out, 3, extra=("--storage", url)) for _ in range(2)]
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read()
        study = optuna.load_study(study_name="dropkit-tune", storage=url)
        assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    finally:
        stop()
