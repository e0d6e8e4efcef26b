"""`dropkit tune` against a real PostgreSQL server (Debian's `postgresql` package, installed by .ci/run).

The fixture runs ``initdb`` and ``pg_ctl`` in a temporary folder as a non-root user (PostgreSQL refuses
root; CI runs as root), with password (SCRAM) authentication on a free loopback port, and stops the server
afterwards. Each test gets a database of its own. Skipped, with the reason, only when the PostgreSQL server
binaries are absent; the driver (``psycopg[binary]``) is part of the test extras.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from dropkit.cli import main
from test_lab_tune import _states

BASE = ["tune", "--dataset", "overfit", "--model", "overfit-mlp", "--epochs", "2", "--heartbeat", "1", "--quiet"]


def _server_binaries() -> str | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        dirs.insert(0, os.path.dirname(shutil.which("initdb")))
    return next((d for d in dirs if os.path.isfile(os.path.join(d, "initdb"))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """``(url of the server's admin database, password)``; the server is stopped and its folder removed after."""
    bindir = _server_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are absent (apt-get install postgresql; .ci/run installs them)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="dropkit-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the package's own user, else nobody
        user = next(u for u in ("postgres", "nobody") if _has_user(u))
        prefix = ["runuser", "-u", user, "--"]
        shutil.chown(root, user)
    password = secrets.token_hex(8)
    (root / "pw").write_text(password + "\n")
    if prefix:
        shutil.chown(root / "pw", prefix[2])
    port = _free_port()
    data = root / "data"
    pg_ctl = os.path.join(bindir, "pg_ctl")
    subprocess.run(
        [*prefix, os.path.join(bindir, "initdb"), "-D", str(data), "-U", "dropkit", "--pwfile", str(root / "pw"),
         "--auth-host=scram-sha-256", "--auth-local=scram-sha-256"],
        check=True, capture_output=True,
    )
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "start",
         "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {root}"],
        check=True, capture_output=True, env={**os.environ, "PGPASSWORD": password},
    )
    try:
        yield f"postgresql+psycopg://dropkit:{password}@127.0.0.1:{port}/postgres", password
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def database(postgres, request):
    """A fresh database on the server for one test: its URL (with the password)."""
    import psycopg

    admin, _ = postgres
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:40]
    plain = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def _worker(out: Path, trials: int, storage: str, delay: str = "0") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dropkit", *BASE, "--trials", str(trials), "--storage", storage, "--out", str(out)],
        env={**os.environ, "DROPKIT_LAB_EPOCH_DELAY": delay},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_workers_share_one_study_with_exactly_n_trials(database, postgres, tmp_path):
    _, password = postgres
    out = tmp_path / "pg"
    procs = [_worker(out, 4, database, delay="0.05") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr
        assert password not in stdout + stderr and ":***@127.0.0.1" in stdout
    states = _states(database)
    assert states["COMPLETE"] == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    for written in (out / "report.md", out / "config.json"):
        assert password not in written.read_text()


def test_sigkilled_worker_loses_only_its_trial(database, tmp_path):
    out = tmp_path / "pgkill"
    proc = _worker(out, 3, database, delay="0.5")
    running = out / "trials" / "trial-1" / "seed-0" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (running.is_file() and running.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _states(database) == {"COMPLETE": 1, "RUNNING": 1}
    again = _worker(out, 3, database)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    states = _states(database)
    assert states == {"COMPLETE": 3, "FAIL": 1}


def test_wrong_password_is_one_line_with_the_password_masked(database, postgres, tmp_path, capsys):
    _, password = postgres
    wrong = database.replace(f":{password}@", ":not-the-password@")
    with pytest.raises(SystemExit) as info:
        main([*BASE, "--trials", "1", "--storage", wrong, "--out", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "not-the-password" not in err and ":***@127.0.0.1" in err
    assert "127.0.0.1" in err and "password authentication failed" in err


def test_database_down_is_one_line_naming_the_host(tmp_path, capsys):
    port = _free_port()  # nothing listens there
    url = f"postgresql+psycopg://dropkit:hunter2@127.0.0.1:{port}/postgres"
    with pytest.raises(SystemExit) as info:
        main([*BASE, "--trials", "1", "--storage", url, "--out", str(tmp_path / "down")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "hunter2" not in err and f"127.0.0.1:{port}" in err and "refused" in err.lower()
