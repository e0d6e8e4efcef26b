"""The user's own model and data for the lab: ``MODULE:FACTORY`` and ``FILE.py:FACTORY`` targets.

* :func:`load_callable` imports ``pkg.mod:name`` (the current folder is importable, as with
  ``python -m``) or loads ``./path/file.py:name`` from the file. **This runs the code of
  that module**, as importing it would: point it only at code you trust.
* :func:`build_user_model` calls a model factory, swaps torch's dropout modules for
  dropkit's (``replace=True``, :func:`dropkit.nn.replace_dropout`), finds every dropout
  module the way :mod:`dropkit.schedules` does and sets their rates: one rate for all, or
  one per module in ``model.modules()`` order.

A model factory is called with the keyword arguments it names among ``in_shape`` (per-sample
input shape) and ``num_classes`` (classes, or outputs for regression), and must return a
``torch.nn.Module``.

Example:
    >>> # nets.py:  def make_net(num_classes): return nn.Sequential(nn.Flatten(), nn.Linear(64, 128),
    >>> #           nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes))
    >>> model, sites = build_user_model("./nets.py:make_net", (1, 8, 8), 10, p=0.3)
    >>> sites
    ['3']
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "UserCodeError",
    "build_user_model",
    "call_with_known",
    "dropout_modules",
    "is_user_target",
    "load_callable",
    "named_arguments",
]


def is_user_target(name: str) -> bool:
    """Whether ``name`` is a ``MODULE:FACTORY`` / ``FILE.py:FACTORY`` target (not a built-in name)."""
    return isinstance(name, str) and ":" in name


def _split(target: str, flag: str) -> tuple[str, str]:
    module, sep, attr = target.rpartition(":")
    if not sep or not module or not attr:
        raise ValueError(
            f"Invalid value for `{flag}`: expected MODULE:FACTORY or FILE.py:FACTORY "
            f"(e.g. mypkg.nets:make_net or ./nets.py:make_net). Received: {flag}={target}"
        )
    return module, attr


def load_callable(target: str, flag: str = "--model") -> Callable:
    """The callable named by ``target`` (``pkg.mod:name`` or ``path/file.py:name``, attribute paths allowed)."""
    module_name, attr = _split(target, flag)
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise ValueError(
                f"Invalid value for `{flag}`: file {module_name} not found (from {os.getcwd()}). "
                f"Received: {flag}={target}"
            )
        key = "_dropkit_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, path)
            if spec is None or spec.loader is None:
                raise ValueError(
                    f"Invalid value for `{flag}`: {path} cannot be imported as a Python module. Received: {flag}={target}"
                )
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses and pickling look modules up here
            try:
                spec.loader.exec_module(module)
            except BaseException as exc:
                del sys.modules[key]
                if isinstance(exc, Exception):
                    raise _code_error(f"running {path}", exc) from exc
                raise
    else:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder is importable
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ValueError(
                f"Invalid value for `{flag}`: cannot import {module_name!r} ({exc}). Received: {flag}={target}"
            ) from None
        except Exception as exc:
            raise _code_error(f"importing {module_name}", exc) from exc
        finally:
            sys.path.remove(os.getcwd())
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"Invalid value for `{flag}`: {module_name} has no attribute {attr!r}. Received: {flag}={target}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"Invalid value for `{flag}`: {target} is a {type(obj).__name__}, not a callable")
    return obj


class UserCodeError(RuntimeError):
    """The user's factory (``--model``, ``--dataset``, ``dropkit lint``'s target) raised; the message
    names the target, the exception and where in the user's file it was raised."""

    user_facing = True


def named_arguments(fn: Callable, available: Sequence[str]) -> set[str]:
    """Those of ``available`` that ``fn``'s signature names (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(available)
    return {k for k in available if k in params}


def call_with_known(fn: Callable, target: str = "the factory", **available):
    """Call ``fn`` with those of ``available`` that its signature names (all of them if it takes ``**kwargs``).

    A signature with a required argument outside ``available`` is a ``TypeError`` naming it and the
    accepted ones; an exception raised by ``fn`` itself is a :class:`UserCodeError` naming ``target``
    and the file and line where it was raised (chained to the original).
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        required = [
            n
            for n, p in sig.parameters.items()
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            and n not in available
        ]
        if required:
            given = f"with keyword arguments among {', '.join(available)} only" if available else "with no arguments"
            raise TypeError(
                f"{target} requires {', '.join(required)}, but it is called {given}: give the others defaults. "
                f"Received: a factory{sig}"
            )
    kwargs = {k: available[k] for k in named_arguments(fn, list(available))}
    try:
        return fn(**kwargs)
    except Exception as exc:
        raise _code_error(target, exc) from exc


def _code_error(what: str, exc: Exception) -> UserCodeError:
    """``"<what> raised <Type>: <message> (at <file>:<line>, in <function>)"``, the innermost frame of ``exc``."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""
    return UserCodeError(f"{what} raised {type(exc).__name__}: {exc}{where}")


def dropout_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(path, module)`` of every dropout module of ``model`` with a ``p``, as :mod:`dropkit.schedules` finds them."""
    from dropkit.schedules import DropoutSchedule

    try:
        found = DropoutSchedule(model, lambda step: 1.0).modules  # factor 1: every p stays as it is
    except ValueError:
        return []
    names = {id(m): name for name, m in model.named_modules()}
    return [(names.get(id(m), "?"), m) for m in found]


def build_user_model(
    target: str, in_shape: Sequence[int], num_classes: int, p: float | Sequence[float], *, replace: bool = True
) -> tuple[torch.nn.Module, list[str]]:
    """Build the model of factory ``target`` and set its dropout rates; returns ``(model, dropout module paths)``.

    Args:
        target: ``MODULE:FACTORY`` or ``FILE.py:FACTORY``.
        in_shape: per-sample input shape, passed as ``in_shape=`` if the factory takes it.
        num_classes: passed as ``num_classes=`` if the factory takes it.
        p: one drop rate for every dropout module, or one per module (``model.modules()`` order).
        replace: swap torch's dropout modules for dropkit's first.
    """
    from dropkit._validation import check_p

    made = call_with_known(load_callable(target), target, in_shape=tuple(in_shape), num_classes=num_classes)
    if isinstance(made, tuple) and made and isinstance(made[0], torch.nn.Module):
        made = made[0]  # the (model, example_inputs) form of `dropkit lint` factories
    if not isinstance(made, torch.nn.Module):
        raise TypeError(f"{target} must return a torch.nn.Module; it returned {type(made).__name__}")
    if replace:
        from dropkit.nn import replace_dropout

        replace_dropout(made)
    mods = dropout_modules(made)
    if not mods:
        raise ValueError(
            f"model {target} has no dropout module (torch.nn.Dropout*, AlphaDropout or dropkit.nn) "
            "whose rate the lab could set: add one where you want dropout"
        )
    rates = [p] if isinstance(p, (int, float)) else list(p)
    if len(rates) == 1:
        rates = rates * len(mods)
    if len(rates) != len(mods):
        raise ValueError(
            f"Invalid value for `p`: expected one rate or {len(mods)} rates (one per dropout module of {target}: "
            f"{', '.join(n for n, _ in mods)}). Received: p={','.join(f'{r:g}' for r in rates)}"
        )
    for (_, m), r in zip(mods, rates):
        m.p = check_p(r, "p")  # type: ignore[assignment]  # a dropout module's `p` is a float, not a submodule
    return made, [n for n, _ in mods]
