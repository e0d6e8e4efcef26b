"""A quick start: `import dropkit` and `dropkit --help` load no compiler stack, plotting or Optuna; the lab's
threads follow the cores it may use and --jobs, and the OpenMP team does not spin (OMP_WAIT_POLICY)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch._dynamo", "torch._inductor", "matplotlib", "optuna", "sklearn", "rich")


def _loaded_after(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; return the JSON it prints on its last line."""
    probe = (
        f"{code}\nimport json, os, sys\n"
        f"print(json.dumps({{'heavy': sorted(m for m in sys.modules if m.startswith({HEAVY!r})), "
        "'omp': os.environ.get('OMP_WAIT_POLICY')}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**environ, "PYTHONPATH": str(SRC), **(env or {})},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_dropkit_loads_no_compiler_plotting_or_optuna():
    assert _loaded_after("import dropkit, dropkit.functional, dropkit.nn")["heavy"] == []


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["tune", "--help"], ["lint", "--help"]])
def test_help_loads_no_compiler_stack(argv):
    code = (
        "import sys\nfrom dropkit.cli import main\n"
        f"sys.argv = ['dropkit', *{argv!r}]\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main()\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
    )
    assert _loaded_after(code)["heavy"] == []


PROBE = '''
import json, os
import torch
from torch import nn

def make_net(in_shape, num_classes):
    with open(os.environ["PROBE_LOG"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "wait": os.environ.get("OMP_WAIT_POLICY"),
                            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                            "threads": torch.get_num_threads()}) + "\\n")
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[-1], 8), nn.Dropout(0.5), nn.Linear(8, num_classes))
'''


def _compare_with_probe(tmp_path, extra_env: dict, *flags: str) -> tuple[int, list[dict]]:
    (tmp_path / "probe_nets.py").write_text(PROBE)
    log = tmp_path / "probe.jsonl"
    log.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dropkit", "compare", "--dataset", "overfit", "--model", "./probe_nets.py:make_net",
         "--epochs", "1", "--seeds", "1", "--quiet", "--out", str(tmp_path / f"out{len(flags)}"), *flags],
        cwd=tmp_path, env={**environ, "PYTHONPATH": str(SRC), "PROBE_LOG": str(log), **extra_env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return proc.pid, [json.loads(line) for line in log.read_text().splitlines()]


def test_compare_runs_with_a_passive_openmp_team_and_its_share_of_threads(tmp_path):
    from dropkit.lab.cores import usable_cores

    pid, seen = _compare_with_probe(tmp_path, {})
    assert seen and all(s["pid"] == pid for s in seen)  # re-executed in place: the same process
    assert all(s["wait"] == "PASSIVE" and s["threads"] <= usable_cores() for s in seen)
    env = json.loads((tmp_path / "out0" / "env.json").read_text())
    assert env["omp_wait_policy"] == "PASSIVE" and env["usable_cores"] == usable_cores()

    pid, seen = _compare_with_probe(tmp_path, {"OMP_WAIT_POLICY": "ACTIVE"}, "--jobs", "2")
    workers = [s for s in seen if s["pid"] != pid]
    assert workers and all(s["wait"] == "ACTIVE" for s in seen)  # the user's setting is kept, workers included
    share = max(1, usable_cores() // 2)
    assert all(s["omp_threads"] == str(share) and s["threads"] == share for s in workers)


def test_thread_share_divides_the_usable_cores(monkeypatch):
    import torch

    from dropkit.lab import cores

    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    assert cores.usable_cores() == 8
    assert [cores.thread_share(j) for j in (1, 2, 3, 8, 16)] == [6, 4, 2, 1, 1]
    with pytest.raises(ValueError, match="Invalid value for `parts`"):
        cores.thread_share(0)


def test_passive_wait_env_keeps_a_users_policy_and_restores(monkeypatch):
    from dropkit.lab.cores import passive_wait_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with passive_wait_env(3):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "3"
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["OMP_NUM_THREADS"] == "7"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with passive_wait_env(1):
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
