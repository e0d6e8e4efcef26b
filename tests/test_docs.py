"""Every shell command and Python block of README.md and docs/*.md runs as written (issue 22).

* A ```python block runs in a fresh interpreter; a ```bash block is split into commands (``\\``
  continuations joined, comment lines dropped), each run with bash. A block or command is one test,
  named by its file and line.
* The items of one document run in one temporary folder, in document order: an item first runs the
  earlier items of its document that have not run yet (under a lock, so pytest-xdist workers share
  the folder and nothing runs twice), so ``dropkit report runs/...`` finds the run that an earlier
  command made, and a command finds the ``nets.py`` a block before it wrote.
* The lab runs with tiny experiments through its one environment override, ``DROPKIT_LAB_MAX_*``
  (``dropkit.lab.plan.LIMITS``, docs/lab.md).
* A command that cannot run here is on :data:`SKIP`, with the reason; a Fashion-MNIST command is
  skipped when Debian's ``dataset-fashion-mnist`` is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FASHION = "/usr/share/datasets/fashion-mnist"

#: What the lab may do per documented command (dropkit.lab.plan.LIMITS): 1 epoch, at most 2 seeds
#: (the std over seeds is still computed), 2 tune trials (the importance plot needs two), 5 MC
#: samples, 1000 training and 500 validation samples.
LAB_LIMITS = {
    "DROPKIT_LAB_MAX_EPOCHS": "1",
    "DROPKIT_LAB_MAX_SEEDS": "2",
    "DROPKIT_LAB_MAX_TRIALS": "2",
    "DROPKIT_LAB_MAX_SAMPLES": "5",
    "DROPKIT_LAB_MAX_TRAIN_SIZE": "1000",
    "DROPKIT_LAB_MAX_VAL_SIZE": "500",
}

#: Commands that cannot run here: (a regular expression searched in the command, the reason).
SKIP = [
    (r"^pip install ", "installs packages (the test runs on the installed tree)"),
    (r"^apt-get install ", "installs a Debian package as root (.ci/run installs dataset-fashion-mnist)"),
    (r"^python -m pytest", "the test suite itself"),
    (r"^sudo ", "sets up a PostgreSQL server (root, a database host)"),
    (r"--storage postgresql", "needs a reachable PostgreSQL server (placeholder host and password)"),
]

#: Commands marked slow (still run in CI): full-size data, several processes, Optuna studies.
SLOW = [r"--dataset fashion-mnist", r"^torchrun ", r"--jobs [2-9]", r"^dropkit tune ", r"^dropkit mc "]


@dataclass(frozen=True)
class Item:
    """A Python block or one shell command of a document."""

    doc: str  # path relative to the repository
    line: int  # 1-based line of its first line
    kind: str  # "python" or "shell"
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def extract(doc: str, text: str) -> list[Item]:
    """The ```python blocks and the commands of the ```bash blocks of one Markdown text, in order."""
    items: list[Item] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        body = lines[start:end]
        if lang == "python":
            items.append(Item(doc, start + 1, "python", "\n".join(body) + "\n"))
        elif lang in ("bash", "sh", "shell"):
            j = 0
            while j < len(body):
                first, command = j, body[j]
                while command.rstrip().endswith("\\") and j + 1 < len(body):
                    j += 1
                    command = command.rstrip()[:-1] + " " + body[j].strip()
                j += 1
                command = command.strip()
                if command and not command.startswith("#"):
                    items.append(Item(doc, start + first + 1, "shell", command))
        i = end + 1
    return items


ITEMS = {str(p.relative_to(ROOT)): extract(str(p.relative_to(ROOT)), p.read_text()) for p in DOCS}
ALL = [item for items in ITEMS.values() for item in items]


def skip_listed(item: Item) -> str | None:
    """The reason :data:`SKIP` gives for ``item``, if any."""
    if item.kind == "shell":
        for pattern, reason in SKIP:
            if re.search(pattern, item.text):
                return reason
    return None


def skip_reason(item: Item) -> str | None:
    """Why ``item`` cannot run here (:data:`SKIP`, or data that is not installed); None: it runs."""
    reason = skip_listed(item)
    if reason:
        return reason
    if FASHION in item.text and not Path(FASHION).is_dir():
        return f"{FASHION} is missing: Debian's dataset-fashion-mnist is not installed (.ci/run installs it)"
    if "dropkit.lab.zoo" in item.text and importlib.util.find_spec("transformers") is None:
        return "needs the integrations extra (transformers; tests/test_models.py runs the lab on it in CI)"
    return None


def _param(item: Item):
    slow = item.kind == "shell" and any(re.search(p, item.text) for p in SLOW)
    return pytest.param(item, id=item.id, marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory) -> Path:
    """One folder for the whole session, shared by the pytest-xdist workers (their parent folder)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "docs-run"
    folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ, **LAB_LIMITS)
    # one intra-op thread unless told otherwise: pytest-xdist runs two items at once on CI's 2 cores
    env.setdefault("OMP_NUM_THREADS", "1")
    # a free port for torchrun (PET_MASTER_PORT is its --master_port) and the TP example, not the 29500 default
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        env["MASTER_PORT"] = env["PET_MASTER_PORT"] = str(sock.getsockname()[1])
    # one cache for the session (generated data sets; a kernel built at first use is built once)
    env.update(MPLBACKEND="Agg", DROPKIT_CACHE_DIR=str(folder.parent / ".cache"), PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(item: Item, folder: Path) -> dict:
    """Run ``item`` in ``folder``; its exit status and output, recorded in the folder (``.result-<line>``)."""
    record = folder / f".result-{item.line}.json"
    if record.exists():
        return json.loads(record.read_text())
    if item.kind == "python":
        argv = [sys.executable, "-c", item.text]
    else:
        argv = ["bash", "-c", item.text]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            argv, cwd=folder, env=_env(folder), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600
        )
        result = {"returncode": done.returncode, "output": (done.stdout + done.stderr)[-6000:]}
    except subprocess.TimeoutExpired as exc:
        result = {"returncode": "timeout after 600 s", "output": str(exc.stdout or "")[-3000:]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    record.write_text(json.dumps(result))
    return result


@pytest.mark.parametrize("item", [_param(item) for item in ALL])
def test_doc_item_runs(item: Item, docs_dir: Path):
    reason = skip_reason(item)
    if reason:
        pytest.skip(reason)
    folder = docs_dir / re.sub(r"[^A-Za-z0-9]+", "-", item.doc)
    folder.mkdir(exist_ok=True)
    items = ITEMS[item.doc]
    with _locked(docs_dir / (folder.name + ".lock")):
        failed = []
        for earlier in items[: items.index(item)]:  # the sequence the document shows, as written
            if skip_reason(earlier) is None and _run(earlier, folder)["returncode"] != 0:
                failed.append(earlier.id)
        result = _run(item, folder)
    note = f" (earlier items that failed: {', '.join(failed)})" if failed else ""
    shown = item.text if item.kind == "shell" else item.text.splitlines()[0] + " ..."
    assert result["returncode"] == 0, (
        f"{item.id}: {shown}\nexit status {result['returncode']} after {result['seconds']} s{note}\n{result['output']}"
    )


def _out_folder(argv: list[str]) -> str | None:
    """The run folder a ``dropkit compare | sweep | tune`` command writes (``--out`` or its default)."""
    from dropkit.cli import _lab, build_parser

    if argv[:1] == ["torchrun"]:
        argv = ["dropkit", *argv[argv.index("dropkit") + 1 :]] if "dropkit" in argv else []
    if argv[:1] != ["dropkit"] or len(argv) < 2 or argv[1] not in ("compare", "sweep", "tune") or "..." in argv:
        return None
    args = build_parser().parse_args(argv[1:])
    return args.out or _lab.default_out({"command": args.command, "dataset": args.dataset, "model": args.model})


@pytest.mark.parametrize("doc", list(ITEMS))
def test_commands_of_a_document_use_distinct_out_folders(doc: str):
    """Two different lab commands of one document never share a run folder (the second would be refused)."""
    writers: dict[str, tuple[str, list[str]]] = {}
    for item in ITEMS[doc]:
        if item.kind != "shell" or skip_listed(item):
            continue
        argv = shlex.split(item.text, comments=True)
        out = _out_folder(argv)
        if out is None:
            continue
        if argv[1] == "tune" and "--trials" in argv:  # the same study with more trials continues it
            i = argv.index("--trials")
            argv = argv[:i] + argv[i + 2 :]
        if out in writers and writers[out][1] != argv:
            pytest.fail(f"{item.id} and {writers[out][0]} both write {out}: give one of them --out")
        writers.setdefault(out, (item.id, argv))


def test_extraction_reads_blocks_continuations_and_comments():
    text = "\n".join(
        [
            "# Title",
            "```bash",
            "# a comment line",
            "dropkit compare --epochs 2 \\",
            "  --seeds 1   # a trailing comment",
            "",
            "dropkit report runs/x",
            "```",
            "```",
            "dropkit not-a-command (an output block)",
            "```",
            "```python",
            "import torch",
            "print(torch.ones(1))",
            "```",
        ]
    )
    items = extract("x.md", text)
    assert [(i.line, i.kind) for i in items] == [(4, "shell"), (7, "shell"), (13, "python")]
    assert items[0].text == "dropkit compare --epochs 2  --seeds 1   # a trailing comment"
    assert items[2].text == "import torch\nprint(torch.ones(1))\n"
    assert items[0].id == "x.md:4"
    assert {p.name for p in DOCS} >= {"README.md", "lab.md", "tools.md"} and len(ALL) > 40


def test_every_skip_entry_matches_a_command():
    """The skip list stays short and true: each entry skips at least one documented command."""
    for pattern, reason in SKIP:
        assert any(i.kind == "shell" and re.search(pattern, i.text) for i in ALL), (
            f"unused skip entry {pattern!r} ({reason})"
        )


def test_lab_limits_cap_the_flags_they_name(monkeypatch, capsys):
    """The lab's one override: each DROPKIT_LAB_MAX_* caps its flag (never raises it); a bad value is refused."""
    import argparse

    from dropkit.lab.errors import ConfigError
    from dropkit.lab.plan import LIMITS, apply_limits

    assert set(LIMITS.values()) == set(LAB_LIMITS)  # the test sets every variable the lab reads
    for var in LIMITS.values():
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(epochs=30, seeds=1, trials=20, train_size=None, val_size=None)
    apply_limits(args)
    assert vars(args) == {"epochs": 30, "seeds": 1, "trials": 20, "train_size": None, "val_size": None}
    monkeypatch.setenv("DROPKIT_LAB_MAX_EPOCHS", "2")
    monkeypatch.setenv("DROPKIT_LAB_MAX_SEEDS", "2")
    monkeypatch.setenv("DROPKIT_LAB_MAX_SAMPLES", "5")  # no --samples here: ignored
    monkeypatch.setenv("DROPKIT_LAB_MAX_TRAIN_SIZE", "100")  # None = all samples: capped
    apply_limits(args)
    assert vars(args) == {"epochs": 2, "seeds": 1, "trials": 20, "train_size": 100, "val_size": None}
    err = capsys.readouterr().err
    assert "DROPKIT_LAB_MAX_EPOCHS=2: --epochs 30 capped at 2" in err
    assert "DROPKIT_LAB_MAX_TRAIN_SIZE=100: --train-size (all) capped at 100" in err
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("DROPKIT_LAB_MAX_TRIALS", bad)
        with pytest.raises(
            ConfigError, match=f"DROPKIT_LAB_MAX_TRIALS.*integer >= 1.*Received: DROPKIT_LAB_MAX_TRIALS={bad}"
        ):
            apply_limits(argparse.Namespace(trials=3))


def test_commands_are_in_bash_blocks():
    """A command written in a block of another language (or none) would escape this test: each is in a ```bash block."""
    command = re.compile(r"^(\$ )?(dropkit |python -m dropkit|torchrun |pip install )")
    stray = []
    for path in DOCS:
        lang = None
        for n, line in enumerate(path.read_text().splitlines(), 1):
            fence = re.match(r"^```(\w*)", line)
            if fence:
                lang = None if lang is not None else fence.group(1)
            elif lang not in (None, "bash", "sh", "shell") and command.match(line):
                stray.append(f"{path.relative_to(ROOT)}:{n}: {line}")
    assert not stray, "commands outside ```bash blocks:\n" + "\n".join(stray)


def test_fashion_commands_are_skipped_without_the_debian_data(monkeypatch):
    item = Item("x.md", 1, "shell", f"dropkit compare --dataset fashion-mnist --data-dir {FASHION} --epochs 15")
    monkeypatch.setattr(Path, "is_dir", lambda self: False)
    assert "dataset-fashion-mnist is not installed" in skip_reason(item)
    assert skip_reason(Item("x.md", 2, "shell", "dropkit compare --dataset digits")) is None
    assert "PostgreSQL" in skip_reason(Item("x.md", 3, "shell", "dropkit tune --storage postgresql://u@h/db"))
