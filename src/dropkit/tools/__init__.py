"""dropkit's tools around the dropout core: inference checks, MC dropout, metrics, a linter, schedules, pictures.

=================================== =====================================================
:mod:`dropkit.guard`                deterministic inference: find every source of randomness
:mod:`dropkit.mc`                   Monte-Carlo dropout prediction and uncertainty
:mod:`dropkit.metrics`              calibration metrics (ECE, NLL, Brier, accuracy-coverage)
:mod:`dropkit.lint`                 dropout pitfalls, codes DK101-DK109 (``dropkit.lint(model)``)
:mod:`dropkit.schedules`            dropout-rate schedules (early, late, ramps, depth rule)
:mod:`dropkit.viz`                  mask pictures
:mod:`dropkit.tools.memory`         bytes autograd saves for backward (``saved_bytes``)
``dropkit.tools._introspect``       the one introspection layer the tools share
``dropkit.tools._mc_fold``          MC dropout's fold of the first dropout into a convolution
=================================== =====================================================

The implementations live here (``dropkit.tools.guard``, ...); the documented names are
``dropkit.guard``, ``dropkit.mc``, ... (thin modules re-exporting these), reachable after a
plain ``import dropkit``. Submodules are imported on first use.

Example:
    >>> import dropkit
    >>> dropkit.tools.guard.check_inference is dropkit.guard.check_inference
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["guard", "mc", "metrics", "lint", "schedules", "viz", "memory"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
