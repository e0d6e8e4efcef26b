"""The lab's share of a shared machine: torch threads from the usable cores and ``--jobs``, and an
OpenMP team that sleeps instead of spinning while it waits.

torch (CPU) and dropkit's C kernel run on one OpenMP team (libgomp). By default its threads spin
for a while at every barrier, which is fast on an idle machine and ruinous on a busy one: a
spinning thread holds a core that another process (or a descheduled team member) needs, and a
small model's thousands of short parallel regions then run 10-20x slower. ``OMP_WAIT_POLICY`` is
read once, when libgomp is loaded (with torch), so it must be in the environment before torch
is imported: :func:`passive_wait_env` sets it for ``--jobs`` workers, and the command line
re-runs a training command with it (``dropkit.cli.main``).

Example:
    >>> thread_share(2) <= max(1, usable_cores() // 2)
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["WAIT_POLICY", "passive_wait_env", "thread_share", "usable_cores"]

#: The environment variable libgomp reads at load; the lab sets it to PASSIVE unless the user set it.
WAIT_POLICY = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity(0)``; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def thread_share(parts: int = 1) -> int:
    """torch threads for each of ``parts`` processes sharing this process's cores.

    ``max(1, usable_cores() // parts)``, and never more than ``torch.get_num_threads()`` (so a
    user's ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` is an upper bound).
    """
    import torch

    if not isinstance(parts, int) or parts < 1:
        raise ValueError(f"Invalid value for `parts`: expected an integer >= 1. Received: parts={parts!r}")
    return max(1, min(torch.get_num_threads(), usable_cores() // parts))


@contextmanager
def passive_wait_env(threads: int) -> Iterator[None]:
    """Inside: ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) and ``OMP_NUM_THREADS=threads`` in
    ``os.environ``, for the child processes started here to read when they load torch; restored on exit."""
    saved = {k: os.environ.get(k) for k in (WAIT_POLICY, "OMP_NUM_THREADS")}
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
