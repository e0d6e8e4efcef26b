"""dropkit: dropout regularization for PyTorch, done right.

Every dropout variant as a function (:mod:`dropkit.functional`) and a module
(:mod:`dropkit.nn`), all drawing their masks from one counter-based RNG
(Philox4x32-10, :mod:`dropkit.rng`): a mask is a pure function of (seed, element
index), the same on every device and thread count, and regenerated in backward.
``p`` is always the probability of **dropping** an element.

The tools (:mod:`dropkit.guard`, :mod:`dropkit.mc`, :mod:`dropkit.metrics`,
:mod:`dropkit.lint`, :mod:`dropkit.schedules`, :mod:`dropkit.viz`, :mod:`dropkit.memory`) and the NumPy teaching layer (:mod:`dropkit.scratch`) are imported on first use, so
``import dropkit`` stays fast and ``dropkit.mc.predict(...)`` works after it.
"""

import importlib

from dropkit import functional, kernels, nn, ops, rng, seed
from dropkit.seed import SeedGenerator
from dropkit.ops import backend_info

#: Submodules imported on first attribute access (PEP 562).
_LAZY = ("guard", "mc", "metrics", "lint", "schedules", "viz", "memory", "scratch")

__all__ = [
    "functional",
    "nn",
    "ops",
    "rng",
    "seed",
    "SeedGenerator",
    "kernels",
    "backend_info",
    "patch",
    "__version__",
    *_LAZY,
]


def _version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dropkit")
    except PackageNotFoundError:  # a source tree on sys.path without `pip install`
        return "0+unknown"


def __getattr__(name: str) -> object:
    if name == "patch":  # the context manager (dropkit._patch): imported on first use
        from dropkit._patch import patch

        globals()["patch"] = patch
        return patch
    if name == "__version__":
        globals()["__version__"] = v = _version()
        return v
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__", "patch"})
