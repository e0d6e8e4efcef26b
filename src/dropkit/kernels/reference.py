"""The portable backend: the mask contract in plain torch integer ops (any device).

This is the fallback every fast backend is tested against bit for bit.
"""

from __future__ import annotations

import torch

import numpy as np

from dropkit.rng import keep_mask_numpy, keep_mask_torch

__all__ = ["keep_mask", "dropout_mul", "compute_dtype", "mask_fold"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which ``x * scale`` is evaluated: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def keep_mask(n: int, p: float, seed: int, stream: int, offset: int, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":  # NumPy's uint64 arithmetic is ~3x faster than torch int64 ops on CPU
        return torch.from_numpy(np.ascontiguousarray(keep_mask_numpy(n, p, seed, stream, offset)))
    return keep_mask_torch(n, p, seed, stream, offset, device)


def dropout_mul(
    x: torch.Tensor, p: float, scale: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``out = x * (keep ? scale : 0)`` over the row-major elements of contiguous ``x``.

    The product is taken in :func:`compute_dtype` and rounded once to ``x.dtype``.
    """
    mask = keep_mask(x.numel(), p, seed, stream, offset, x.device).view(x.shape)
    cdt = compute_dtype(x.dtype)
    factor = torch.where(mask, torch.tensor(scale, dtype=cdt, device=x.device), torch.tensor(0.0, dtype=cdt, device=x.device))
    y = x.to(cdt) * factor
    if out is None:
        return y.to(x.dtype)
    return out.copy_(y)


def mask_fold(A: torch.Tensor, X: torch.Tensor, mask: torch.Tensor, scale: float, R: int, P: int,
              bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """:func:`dropkit.kernels.mask_fold` in torch ops (any dtype and device); the same math as
    ``kernels/cpu/mask_fold.c``, the rounding differs.
    """
    kept = mask != 0
    if bool((kept & (mask != scale)).any()):
        raise ValueError(f"mask_fold: every mask value must be 0 or scale={scale}")
    U = torch.einsum("dko,bdkrp->bdrpo", A, X)  # (B, D, R, P, O)
    if U.shape[0] == 1:
        U = U.expand(mask.shape[1], *U.shape[1:])
    out = torch.einsum("tbd,bdrpo->tbrpo", kept.to(U.dtype), U).amax(2) * scale  # (T, B, P, O)
    if bias is not None:
        out = out + bias
    if relu:
        out = out.clamp_min(0)
    return out.reshape(mask.shape[0], mask.shape[1], -1)
