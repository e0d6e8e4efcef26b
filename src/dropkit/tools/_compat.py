"""Old import paths of moved names: module ``__getattr__`` forwarding with a DeprecationWarning, callable modules.

Example (the body of a module kept at its old path)::

    from dropkit.tools.guard import *  # noqa: F403
    __getattr__ = forward_moved(__name__, "dropkit.tools.guard", {"_module_stack": "dropkit.tools._introspect:module_stack"})
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["forward_moved", "CallableModule", "make_callable"]


def forward_moved(old: str, new: str, renamed: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A PEP 562 module ``__getattr__`` for module ``old`` whose code moved to module ``new``.

    A name that ``old`` does not re-export (a private helper, an internal constant) is looked
    up in ``new``, or where ``renamed[name]`` (``"module:attribute"``) says, and returned
    with a ``DeprecationWarning`` naming its new home. Unknown names raise ``AttributeError``.
    """
    renamed = dict(renamed or {})

    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        module_name, _, attr = renamed.get(name, f"{new}:{name}").partition(":")
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except AttributeError:
            raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
        warnings.warn(
            f"{old}.{name} is internal and moved to {module_name}.{attr}; the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__


class CallableModule(ModuleType):
    """A module that can be called: ``module(*args, **kwargs)`` is ``module.__call_target__(*args, **kwargs)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__call_target__"](*args, **kwargs)


def make_callable(module_name: str, fn: Callable[..., Any]) -> None:
    """Make the (imported) module ``module_name`` callable as ``fn``; its names stay reachable as attributes."""
    module = sys.modules[module_name]
    module.__dict__["__call_target__"] = fn
    module.__class__ = CallableModule
