"""The lab on a shared machine: `dropkit compare --seeds 2` alone, then beside two CPU-bound processes.

One run times the command (a subprocess with its own ``--out`` in a temporary folder) on the quiet
machine, then starts ``--busy`` busy loops (``python -c "while True: pass"``), times it again and
kills them. The ratio loaded / quiet is the figure of merit: a fair share of 2 cores beside 2 busy
processes is 2x; a thread team spinning on cores it does not hold makes it 10-20x. It also times
``import torch`` and ``import dropkit`` in fresh processes (median of ``--imports``), the start-up
cost of every command. Prints a table and writes ``benchmarks/out/lab_load-<label>.json``.

    python benchmarks/bench_lab_load.py [--src PATH/src] [--before OLD/src] [--label after] [--busy 2] [--imports 5]

``--src`` picks the tree whose ``python -m dropkit`` runs (PYTHONPATH); ``--before`` adds a second
tree (e.g. a checkout of the code before a change), timed in the same phases, so both see the same
machine; ``-- ARGS`` replaces the compare flags.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _env(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(src)
    return env


def time_compare(src: Path, args: list[str]) -> dict:
    """Wall time of ``python -m dropkit compare ARGS --out <tmp>`` (seconds) and the load average before it."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_lab_load-") as tmp:
        cmd = [sys.executable, "-m", "dropkit", "compare", *args, "--quiet", "--out", str(Path(tmp) / "out")]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=_env(src), capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return {"wall_s": wall, "load_before": load}


def time_imports(src: Path, n: int) -> dict:
    """Median wall and CPU (user + system) time of ``import torch`` and ``import dropkit`` in ``n`` fresh
    processes each, interleaved; CPU time is the steadier figure on a shared machine."""
    times: dict[str, list[tuple[float, float]]] = {"torch": [], "dropkit": []}
    code = (
        "import time; w, c = time.perf_counter(), time.process_time(); import {m}; "
        "print(time.perf_counter() - w, time.process_time() - c)"
    )
    for _ in range(n):
        for m in times:
            r = subprocess.run(
                [sys.executable, "-c", code.format(m=m)], env=_env(src), capture_output=True, text=True, check=True
            )
            wall, cpu = (float(v) for v in r.stdout.split())
            times[m].append((wall, cpu))
    out: dict = {}
    for m, v in times.items():
        out[m] = statistics.median(w for w, _ in v)
        out[f"{m}_cpu"] = statistics.median(c for _, c in v)
        out[f"{m}_all"] = v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ folder whose dropkit runs")
    parser.add_argument(
        "--before", type=Path, default=None, help="also time this src/ folder (the code before a change), interleaved"
    )
    parser.add_argument("--label", default="after", help="name of this measurement (JSON file name)")
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the loaded run")
    parser.add_argument("--imports", type=int, default=5, help="fresh processes per import timing (0: skip)")
    parser.add_argument("--imports-only", action="store_true", help="time the imports only")
    parser.add_argument("compare_args", nargs="*", default=["--seeds", "2"], help="flags of dropkit compare")
    a = parser.parse_args()
    trees = {a.label: a.src.resolve()}
    if a.before is not None:
        trees = {"before": a.before.resolve(), **trees}

    def note(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.2f}] {text}", file=sys.stderr, flush=True)

    imports = {}
    for name, src in trees.items():
        if a.imports:
            imports[name] = time_imports(src, a.imports)
            t = imports[name]
            note(
                f"{name}: import torch {t['torch']:.2f} s (CPU {t['torch_cpu']:.2f} s), import dropkit "
                f"{t['dropkit']:.2f} s (CPU {t['dropkit_cpu']:.2f} s), median of {a.imports}"
            )
    if a.imports_only:
        write_json(f"imports-{a.label}", [], imports=imports, usable_cores=len(os.sched_getaffinity(0)))
        return
    quiet, loaded = {}, {}
    for name, src in trees.items():
        quiet[name] = time_compare(src, a.compare_args)
        note(f"{name}: quiet {quiet[name]['wall_s']:.1f} s")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    try:
        time.sleep(1.0)  # let them take their cores
        for name, src in trees.items():
            loaded[name] = time_compare(src, a.compare_args)
            note(f"{name}: beside {a.busy} busy loops {loaded[name]['wall_s']:.1f} s")
    finally:
        for p in busy:
            p.kill()
            p.wait()
    rows, records = [], []
    for name in trees:
        ratio = loaded[name]["wall_s"] / quiet[name]["wall_s"]
        rows.append(
            [
                name,
                f"{quiet[name]['wall_s']:.1f} (load {quiet[name]['load_before']:.1f})",
                f"{loaded[name]['wall_s']:.1f} (load {loaded[name]['load_before']:.1f})",
                f"{ratio:.2f}",
            ]
        )
        records += [
            {"tree": name, "src": str(trees[name]), "case": "quiet", **quiet[name]},
            {"tree": name, "src": str(trees[name]), "case": f"busy{a.busy}", **loaded[name], "ratio": ratio},
        ]
    print_table(
        ["tree", "alone: wall s (load before)", f"beside {a.busy} busy loops", "ratio"],
        rows,
        title="dropkit compare " + " ".join(a.compare_args),
    )
    for name, t in imports.items():
        print(
            f"{name}: import torch {t['torch']:.2f} s, import dropkit {t['dropkit']:.2f} s "
            f"(+{t['dropkit'] - t['torch']:.2f} s; CPU {t['torch_cpu']:.2f} / {t['dropkit_cpu']:.2f} s), "
            f"median of {a.imports}"
        )
    write_json(
        f"lab_load-{a.label}",
        records,
        compare_args=a.compare_args,
        imports=imports,
        usable_cores=len(os.sched_getaffinity(0)),
    )


if __name__ == "__main__":
    main()
