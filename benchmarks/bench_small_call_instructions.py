"""Instructions per small dropout call, registered op vs the pre-op path, counted by valgrind (not timed).

    python benchmarks/bench_small_call_instructions.py          # needs valgrind; ~4 minutes per run, 4 runs

Single calls of 2^10 elements move by up to 50 % between runs on a shared VM, so the small-call target of
``bench_pt2.py`` (the op within 1.5x of the pre-op path) is also checked with a count that does not move:
``valgrind --tool=callgrind`` runs the same Python program with ``N`` and ``N + 1000`` calls of one path, one
thread; the difference of the two totals divided by 1,000 is the instructions of one call, the kernel
included. Writes benchmarks/out/bench_small_call_instructions.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALLS = 1000


def _child(path: str, calls: int) -> None:
    """Run ``calls`` calls of one path after a warm-up (inside valgrind)."""
    import torch

    sys.path.insert(0, str(HERE))
    import dropkit.functional as F
    from bench_pt2 import previous_path

    torch.set_num_threads(1)
    x = torch.randn(1 << 10)
    fn = {"op": lambda: F.dropout(x, 0.5, seed=7), "pre-op": lambda: previous_path(x)}[path]
    for _ in range(50 + calls):
        fn()


def _instructions(path: str, calls: int, folder: Path) -> int:
    out = folder / f"{path}.{calls}.callgrind"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
           "--child", path, str(calls)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "CALLS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from harness import print_table, write_json

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("op", "pre-op"):
            lo, hi = _instructions(path, 100, Path(tmp)), _instructions(path, 100 + CALLS, Path(tmp))
            rows[path] = (hi - lo) / CALLS
    ratio = rows["op"] / rows["pre-op"]
    print_table(["path", "instructions per call"], [[k, f"{v:,.0f}"] for k, v in rows.items()],
                title=f"dropkit.functional.dropout at 2^10 fp32, one thread: op / pre-op = {ratio:.2f}x (target <= 1.5x)")  # fmt: skip
    write_json("bench_small_call_instructions", [{"path": k, "instructions_per_call": v} for k, v in rows.items()],
               ratio=ratio)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
