"""Dropout-rate schedules that change ``p`` of a model's dropout layers during training.

A schedule multiplies each target layer's **base rate** (its ``p`` when the schedule was
made) by a factor ``f(step)``; call :meth:`DropoutSchedule.step` once per optimizer step
(or epoch), like torch's LR schedulers, and save / restore it with ``state_dict()`` /
``load_state_dict()``.

* :func:`early` -- early dropout (Liu et al., ICML 2023): ``f`` goes from 1 to 0 over the
  first ``k`` steps (``"linear"``) or stays 1 then drops to 0 (``"constant"``).
* :func:`late` -- late dropout: ``f = 0`` before step ``s``, 1 from then on.
* :func:`linear_ramp` / :func:`cosine_ramp` -- ``f`` from ``start`` to ``end`` over ``k`` steps.
* :func:`dropblock_ramp` -- DropBlock's keep-probability ramp (Ghiasi et al. 2018): keep
  probability from 1 down to ``1 - p`` linearly over ``k`` steps (``f`` from 0 to 1).
* :func:`depthwise_drop_path` -- stochastic depth's linear rule (Huang et al. 2016):
  block ``i`` of ``L`` gets ``p_max * i / (L - 1)`` (:func:`dropkit.functional.drop_path_rates`).

Targets: every dropout layer of a model (anything with a ``p`` that
:func:`dropkit._introspect.is_dropout_module` recognises), or a chosen list of modules.
:func:`from_spec` builds one from a short string for command lines, e.g.
``from_spec("early:linear:500", model)``.

Example:
    >>> sched = dropkit.schedules.early(model, steps=500)
    >>> for batch in loader:
    ...     train_step(batch); sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from dropkit import functional
from dropkit._validation import check_choice, check_int, check_p
from dropkit._introspect import is_dropout_module

__all__ = [
    "DropoutSchedule",
    "early",
    "late",
    "linear_ramp",
    "cosine_ramp",
    "dropblock_ramp",
    "depthwise_drop_path",
    "from_spec",
    "SPEC_HELP",
]

SPEC_HELP = "early:linear:K | early:constant:K | late:S | linear:K[:START:END] | cosine:K[:START:END] | dropblock:K"


def _targets(target: torch.nn.Module | Iterable[torch.nn.Module]) -> list[Any]:
    """The modules to schedule: each has a float ``p`` (typed ``Any``: ``p`` is not an nn.Module attribute)."""
    if isinstance(target, torch.nn.Module):
        mods = [m for m in target.modules() if is_dropout_module(m) and hasattr(m, "p")]
    else:
        mods = list(target)
        bad = [type(m).__name__ for m in mods if not hasattr(m, "p")]
        if bad:
            raise TypeError(f"every scheduled module needs a `p` attribute; these have none: {bad}")
    if not mods:
        raise ValueError("no dropout layer to schedule (no module with a `p` attribute was found)")
    return mods


class DropoutSchedule:
    """Sets ``m.p = base_p * factor(step)`` on every target module; ``step()`` advances by one.

    Args:
        target: a model (all its dropout layers) or an iterable of modules with ``p``.
        factor: ``step -> float`` in [0, 1] (the result is clamped to [0, 1] times the base rate).
    """

    def __init__(self, target: torch.nn.Module | Iterable[torch.nn.Module], factor: Callable[[int], float]):
        self.modules = _targets(target)
        self.base_rates = [float(m.p) for m in self.modules]
        self.factor = factor
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        raw = self.factor(self.last_step)
        try:
            f = float(raw)
        except (TypeError, ValueError):
            raise TypeError(
                f"the schedule's factor({self.last_step}) must return a real number; received {raw!r}"
            ) from None
        if not math.isfinite(f):  # NaN would otherwise clamp to a silent 0
            raise ValueError(f"the schedule's factor({self.last_step}) must be finite; received {f!r}")
        f = min(1.0, max(0.0, f))
        for m, base in zip(self.modules, self.base_rates, strict=True):
            m.p = base * f

    def step(self) -> None:
        self.last_step += 1
        try:
            self._apply()
        except Exception:
            self.last_step -= 1  # a factor that fails leaves the schedule where it was
            raise

    def get_rates(self) -> list[float]:
        """The current ``p`` of every target module."""
        return [float(m.p) for m in self.modules]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_rates": list(self.base_rates)}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``last_step`` and ``base_rates`` from :meth:`state_dict`, validated before anything changes:
        both keys present, ``last_step`` an int >= 0, one rate in [0, 1] per scheduled module."""
        if not isinstance(state, Mapping):
            raise TypeError(
                f"`state` must be a dict from DropoutSchedule.state_dict(); received {type(state).__name__}"
            )
        for key in ("last_step", "base_rates"):
            if key not in state:
                raise ValueError(
                    f"`state` has no {key!r} entry (a DropoutSchedule.state_dict() has "
                    f"'last_step' and 'base_rates'); received keys {sorted(map(str, state))}"
                )
        rates = state["base_rates"]
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
            raise TypeError(f"`state['base_rates']` must be a list of rates; received {type(rates).__name__}")
        if len(rates) != len(self.modules):
            raise ValueError(f"state has {len(rates)} base rates for {len(self.modules)} scheduled modules")
        base_rates = [check_p(b, f"base_rates[{i}]") for i, b in enumerate(rates)]
        last_step = check_int(state["last_step"], "last_step", minimum=0)
        previous = self.last_step, self.base_rates
        self.last_step, self.base_rates = last_step, base_rates
        try:
            self._apply()
        except Exception:
            self.last_step, self.base_rates = previous
            raise


def early(target, steps: int, mode: str = "linear") -> DropoutSchedule:
    """Early dropout: rates decay to 0 over the first ``steps`` steps (``linear``) or stay on then stop (``constant``)."""
    k = check_int(steps, "steps", minimum=1)
    check_choice(mode, "mode", ("linear", "constant"))
    if mode == "linear":
        return DropoutSchedule(target, lambda t: max(0.0, 1.0 - t / k))
    return DropoutSchedule(target, lambda t: 1.0 if t < k else 0.0)


def late(target, start: int) -> DropoutSchedule:
    """Late dropout: off before step ``start``, the base rate from then on."""
    s = check_int(start, "start", minimum=0)
    return DropoutSchedule(target, lambda t: 1.0 if t >= s else 0.0)


def _ramp(target, steps: int, start: float, end: float, shape: Callable[[float], float]) -> DropoutSchedule:
    k = check_int(steps, "steps", minimum=1)
    a, b = check_p(start, "start"), check_p(end, "end")
    return DropoutSchedule(target, lambda t: a + (b - a) * shape(min(1.0, t / k)))


def linear_ramp(target, steps: int, start: float = 0.0, end: float = 1.0) -> DropoutSchedule:
    """Factor from ``start`` to ``end`` linearly over ``steps`` steps, then ``end``."""
    return _ramp(target, steps, start, end, lambda u: u)


def cosine_ramp(target, steps: int, start: float = 0.0, end: float = 1.0) -> DropoutSchedule:
    """Factor from ``start`` to ``end`` along a half cosine over ``steps`` steps, then ``end``."""
    return _ramp(target, steps, start, end, lambda u: (1 - math.cos(math.pi * u)) / 2)


def dropblock_ramp(target, steps: int) -> DropoutSchedule:
    """DropBlock's schedule: keep probability from 1 to ``1 - p`` linearly over ``steps`` (``p`` from 0 to the base)."""
    return linear_ramp(target, steps, 0.0, 1.0)


def _depth_rates(p_max: float, depth: int) -> list[float]:
    """Stochastic depth's linear rule, :func:`dropkit.functional.drop_path_rates` (the one implementation),
    except that one block gets ``p_max`` (a single DropPath to schedule is the deepest one)."""
    p_max = check_p(p_max, "p_max")
    rates = functional.drop_path_rates(p_max, depth)
    return [p_max] if len(rates) == 1 else rates


def depthwise_drop_path(modules: Sequence[torch.nn.Module], p_max: float) -> list[float]:
    """Set ``p`` of the given DropPath modules (shallow to deep) by the linear rule
    (:func:`dropkit.functional.drop_path_rates`; one module gets ``p_max``); returns the rates."""
    mods = _targets(modules)
    rates = _depth_rates(p_max, len(mods))
    for m, r in zip(mods, rates, strict=True):
        m.p = r
    return rates


def from_spec(spec: str, target) -> DropoutSchedule:
    """A schedule from a string (see :data:`SPEC_HELP`): ``early:linear:500``, ``late:1000``, ``cosine:300:0:1``..."""
    parts = spec.split(":") if isinstance(spec, str) else []
    try:
        kind, args = parts[0], parts[1:]
        if kind == "early" and len(args) == 2:
            return early(target, int(args[1]), args[0])
        if kind == "late" and len(args) == 1:
            return late(target, int(args[0]))
        if kind in ("linear", "cosine") and len(args) in (1, 3):
            ramp = linear_ramp if kind == "linear" else cosine_ramp
            return ramp(target, int(args[0]), *(float(a) for a in args[1:]))
        if kind == "dropblock" and len(args) == 1:
            return dropblock_ramp(target, int(args[0]))
    except (ValueError, IndexError) as exc:
        if "no dropout layer" in str(exc):
            raise
    raise ValueError(f"Invalid value for `spec`: expected {SPEC_HELP}. Received: spec={spec!r}")
