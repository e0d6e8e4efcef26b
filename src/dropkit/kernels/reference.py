"""The portable backend: the mask contract in plain torch integer ops (any device).

This is the fallback every fast backend is tested against bit for bit, and the implementation the
``dropkit::`` ops register for devices without a fast backend. It computes every primitive of
:mod:`dropkit.kernels`; a fast backend that lacks one (the C kernel's fused op) is served from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dropkit.rng import compute_dtype as rng_compute_dtype
from dropkit.rng import (
    box_muller_f32_torch,
    keep_mask_numpy,
    keep_mask_torch,
    normal_torch,
    uniform_words_numpy,
    uniform_words_torch,
)

__all__ = [
    "keep_mask",
    "dropout_mul",
    "uniform",
    "normal",
    "gaussian_mul",
    "fused_bias_act_dropout_add",
    "compute_dtype",
    "round_to",
    "NAN_BITS",
    "mask_fold",
    "FUSED_ACTIVATIONS",
]

#: Activations of the fused op (``"gelu"`` is the exact, erf-based GELU).
FUSED_ACTIVATIONS = ("relu", "gelu", "silu", "identity")

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# The compute-dtype policy is part of the contract (float64 for float64 inputs, else float32).
compute_dtype = rng_compute_dtype


#: The 16-bit NaN rule (docs/rng.md): every NaN result of a 16-bit dtype is stored as this
#: canonical quiet NaN, whatever the input's sign and payload (torch's own conversion gives
#: different bits in its vectorised loop and in its scalar tail).
NAN_BITS = {torch.float16: 0x7E00, torch.bfloat16: 0x7FC0}


def round_to(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``y.to(dtype)``, then the 16-bit NaN rule (:data:`NAN_BITS`) for float16 / bfloat16."""
    z = y.to(dtype)
    bits = NAN_BITS.get(dtype)
    if bits is None:
        return z
    canonical = torch.tensor(bits, dtype=torch.int16, device=z.device)
    return torch.where(torch.isnan(z), canonical, z.view(torch.int16)).view(dtype)


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
    factor = torch.where(
        mask, torch.tensor(scale, dtype=cdt, device=x.device), torch.tensor(0.0, dtype=cdt, device=x.device)
    )
    y = round_to(x.to(cdt) * factor, x.dtype)
    if out is None:
        return y
    return out.copy_(y)


def uniform(
    n: int, seed: int, stream: int, offset: int, device: torch.device, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """1-D uniform samples ``u = (w + 0.5) * 2**-32`` (float64, then rounded to ``dtype``), ``w`` the
    32-bit word of elements ``offset .. offset + n - 1`` (element ``e``: word ``e % 4`` of block ``e // 4``).
    """
    if torch.device(device).type == "cpu":  # NumPy's uint64 arithmetic: ~3x faster than int64 torch ops
        w = uniform_words_numpy(n, seed, stream, offset)
    else:
        w = uniform_words_torch(n, seed, stream, offset, device)
    return ((w.to(torch.float64) + 0.5) * (2.0**-32)).to(dtype)


def normal(
    n: int, seed: int, stream: int, offset: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """1-D standard normals of elements ``offset .. offset + n - 1`` (normal contract v2, docs/rng.md):
    Box-Muller in torch's float32 ops (:func:`dropkit.rng.box_muller_f32_torch`), then converted to ``dtype``.
    """
    if torch.device(device).type == "cpu":  # the Philox words from NumPy (faster), the float math in torch ops
        b_first = offset // 4
        w = uniform_words_numpy(4 * ((offset + n + 3) // 4 - b_first), seed, stream, 4 * b_first).view(-1, 4)
        zc, zs = box_muller_f32_torch(w[:, 0::2].reshape(-1), w[:, 1::2].reshape(-1))
        start = offset - 4 * b_first
        z = torch.stack([zc, zs], dim=-1).reshape(-1)[start : start + n]
    else:
        z = normal_torch(n, seed, stream, offset, device)
    return z.to(dtype)


def gaussian_mul(
    x: torch.Tensor, sigma: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``out = x * (1 + sigma * z)`` over the row-major elements of contiguous ``x``, ``z`` = :func:`normal`.

    float16 / bfloat16 / float32: ``x_f32 * (1 + sigma_f32 * z)`` in float32 (``sigma`` rounded to
    float32 once), float64: ``x * (1 + sigma * z)`` in float64; rounded once to ``x.dtype`` (:func:`round_to`).
    """
    z = normal(x.numel(), seed, stream, offset, x.device).view(x.shape)
    if x.dtype == torch.float64:
        y = x * (1.0 + float(sigma) * z.to(torch.float64))
    else:
        s32 = float(np.float32(sigma))  # exact in float32: the float32 ops below take it unchanged
        y = x.to(torch.float32) * (1.0 + s32 * z)
    y = round_to(y, x.dtype)
    if out is None:
        return y
    return out.copy_(y)


def _act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(h)
    if activation == "gelu":
        return 0.5 * h * (1.0 + torch.erf(h * _SQRT1_2))
    if activation == "silu":
        return h / (1.0 + torch.exp(-h))
    return h


def _act_grad(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return (h > 0).to(h.dtype)
    if activation == "gelu":
        return 0.5 * (1.0 + torch.erf(h * _SQRT1_2)) + h * (_INV_SQRT_2PI * torch.exp(-0.5 * h * h))
    if activation == "silu":
        s = 1.0 / (1.0 + torch.exp(-h))
        return s * (1.0 + h * (1.0 - s))
    return torch.ones_like(h)


def fused_bias_act_dropout_add(
    a: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    backward: bool,
    p: float,
    scale: float,
    seed: int,
    stream: int,
    offset: int,
    keep_mask: Callable[..., torch.Tensor] = keep_mask,
) -> torch.Tensor:
    """One pass of the fused op over ``h = x + bias`` in torch ops, in :func:`compute_dtype`, rounded to ``x.dtype``.

    Forward (``a`` = residual): ``residual + act(h) * factor``; backward (``a`` = the output's
    gradient): ``grad * factor * act'(h)``, the gradient of ``x``; ``factor = keep ? scale : 0``
    with the mask bits from ``keep_mask`` (a backend without a fused kernel passes its own).
    """
    cdt = compute_dtype(x.dtype)
    h = x.to(cdt)
    if bias is not None:
        h = h + bias.to(cdt)
    keep = keep_mask(x.numel(), p, seed, stream, offset, x.device).view(x.shape)
    factor = keep.to(cdt) * scale
    y = (a.to(cdt) * factor) * _act_grad(h, activation) if backward else a.to(cdt) + _act(h, activation) * factor
    return round_to(y, x.dtype)


def mask_fold(
    A: torch.Tensor,
    X: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    R: int,
    P: int,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
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
