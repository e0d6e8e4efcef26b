"""Shared benchmark harness: medians with spread, the baseline timed in the same run, ratios,
a printed table and a JSON record (torch version, thread count, CPU model, date).

Every benchmark in this folder uses it::

    from harness import Timer, machine_info, print_table, write_json, saved_bytes
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dropkit.memory import saved_bytes  # noqa: F401 (re-exported: `from harness import saved_bytes`)

OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass
class Stats:
    """Seconds per call: median and inter-quartile spread over ``repeats`` timed samples."""

    median: float
    q1: float
    q3: float
    repeats: int
    inner: int

    @property
    def spread(self) -> float:
        """Half the inter-quartile range relative to the median."""
        return (self.q3 - self.q1) / (2 * self.median) if self.median > 0 else 0.0


def measure(fn: Callable[[], Any], *, repeats: int = 15, min_sample_s: float = 0.02, warmup: int = 2) -> Stats:
    """Time ``fn``: each sample runs it ``inner`` times (enough for ``min_sample_s``)."""
    for _ in range(warmup):
        fn()
    inner = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_sample_s or inner >= 1 << 16:
            break
        inner *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return Stats(statistics.median(samples), q[0], q[2], repeats, inner)


def interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int = 5, **kw) -> dict[str, Stats]:
    """Time several functions in alternating rounds (so machine noise hits all alike); median of round medians."""
    per: dict[str, list[Stats]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            per[k].append(measure(fn, **kw))
    out = {}
    for k, runs in per.items():
        meds = sorted(s.median for s in runs)
        out[k] = Stats(statistics.median(meds), meds[0], meds[-1], sum(s.repeats for s in runs), runs[0].inner)
    return out


def cpu_model() -> str:
    """The CPU's name and widest SIMD, as the lab records it (``"AMD EPYC (AVX2, no AVX-512)"``)."""
    from dropkit.lab.experiment import cpu_model as lab_cpu_model

    return lab_cpu_model()


def machine_info() -> dict[str, Any]:
    import dropkit

    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "dropkit": dropkit.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "backend": dropkit.backend_info("cpu"),
    }


def fmt_row(values: Sequence[Any], widths: Sequence[int]) -> str:
    return "  ".join(str(v).rjust(w) for v, w in zip(values, widths))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Print (and return) a Markdown table."""
    cells = [[str(c) for c in columns]] + [[str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(f"### {title}\n")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def write_json(name: str, rows: list[dict[str, Any]], **meta: Any) -> Path:
    """Write ``{"machine": ..., "meta": ..., "rows": ...}`` to benchmarks/out/<name>.json."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    payload = {"machine": machine_info(), "meta": meta, "rows": rows}
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    print(f"\nwrote {path}")
    return path
