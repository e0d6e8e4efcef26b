"""Shared machinery of the variants whose noise is not a plain keep mask.

Gaussian dropout, alpha dropout, DropBlock and word dropout compute ``y = x * f + b``
where the factor ``f`` (and the shift ``b``) is a pure function of a few integers
(key, stream, offset, shapes) held in a small frozen "noise" object. The autograd
function below keeps only that object: backward calls it again to regenerate ``f``,
so no tensor proportional to the input is stored, exactly as
:func:`dropkit.functional.masked_scale` does for plain masks.
"""

from __future__ import annotations

from typing import Protocol

import torch

from dropkit import _hooks
from dropkit._validation import check_bool, check_float_tensor, check_p
from dropkit.kernels.reference import compute_dtype
from dropkit.functional.dropout import zeros_like_input
from dropkit.rng import check_rng_args

__all__ = ["Noise", "apply_noise", "check_common", "zeros_like_input"]


class Noise(Protocol):
    """A regenerable noise: ``factors`` must return the same tensors every time it is called."""

    def factors(
        self, shape: torch.Size, device: torch.device, dtype: torch.dtype, with_bias: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(f, b)`` in ``dtype``, broadcastable to ``shape``; ``b`` is ``None`` when there is no shift
        (or when ``with_bias`` is False and the caller only needs ``f``)."""
        ...


def _forward(x: torch.Tensor, noise: Noise) -> torch.Tensor:
    cdt = compute_dtype(x.dtype)
    factor, bias = noise.factors(x.shape, x.device, cdt, True)
    y = x.to(cdt) * factor
    return y if bias is None else y + bias


class _NoiseFunction(torch.autograd.Function):
    """``y = x * f + b`` with ``f`` regenerated from ``noise`` in backward (no tensor saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, noise: Noise, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.noise = noise
        y = _forward(x, noise)
        if inplace:
            ctx.mark_dirty(x)
            return x.copy_(y)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        cdt = compute_dtype(grad.dtype)
        factor, _ = ctx.noise.factors(grad.shape, grad.device, cdt, False)
        return (grad.to(cdt) * factor).to(grad.dtype), None, None


def apply_noise(x: torch.Tensor, noise: Noise, op: str, inplace: bool = False) -> torch.Tensor:
    """``x * f + b`` for ``noise`` with autograd support; tells :mod:`dropkit._hooks` observers (``op``)."""
    _hooks.notify(op, x, noise)
    if inplace or (torch.is_grad_enabled() and x.requires_grad):
        return _NoiseFunction.apply(x, noise, inplace)
    return _forward(x, noise).to(x.dtype)


def check_common(
    input: object,
    p: object,
    training: object,
    seed: object,
    generator: object,
    stream: object,
    *,
    allow_one: bool = True,
    p_name: str = "p",
) -> tuple[float, int]:
    """The checks every variant runs first (in eval too): tensor, rate, flags, key arguments.

    Returns ``(p, stream)`` as ``float`` and ``int``.
    """
    check_float_tensor(input)
    p = check_p(p, p_name, allow_one=allow_one)
    check_bool(training, "training")
    return p, check_rng_args(seed, generator, stream)
