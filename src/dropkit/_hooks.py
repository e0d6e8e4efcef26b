"""Observer hook inside dropkit's functional ops (used by :mod:`dropkit.guard`).

Every mask-based dropkit op ends in :func:`dropkit.functional.masked_scale`, which calls
:func:`notify` once per training-mode call. With no observer registered (the normal
case) ``notify`` is one list check. Observers must not modify anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["notify", "observe"]

_observers: list[Callable[[str, Any, Any], None]] = []


def notify(op: str, input: Any, spec: Any) -> None:
    """Tell every registered observer that dropkit op ``op`` draws a random mask ``spec`` for ``input``."""
    if _observers:
        for fn in tuple(_observers):
            fn(op, input, spec)


@contextlib.contextmanager
def observe(fn: Callable[[str, Any, Any], None]) -> Iterator[None]:
    """Register ``fn(op, input, spec)`` for the duration of the ``with`` block."""
    _observers.append(fn)
    try:
        yield
    finally:
        _observers.remove(fn)
