"""Core dropout op on the Philox mask contract (see :mod:`dropkit.rng`).

The autograd function saves only integers (seed, stream, offset, p): backward
regenerates the mask from them, so no tensor proportional to the input is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dropkit import _hooks, kernels
from dropkit._validation import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_int,
    check_noise_shape,
    check_p,
    SCALINGS,
)
from dropkit.rng import check_rng_args, current_batch_start, resolve_seed

__all__ = ["dropout", "MaskSpec", "apply_mask", "keep_mask_like", "masked_scale"]


@dataclass(frozen=True)
class MaskSpec:
    """Everything that determines one call's mask: a few integers, no tensors.

    ``noise_shape`` is ``None`` for an element-wise mask, else the broadcastable shape
    of the mask; ``offset`` is the global index of the mask's element 0.
    """

    p: float
    scale: float
    seed: int
    stream: int = 0
    offset: int = 0
    noise_shape: tuple[int, ...] | None = None


def keep_mask_like(spec: MaskSpec, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The ``bool`` keep mask of ``spec`` (``True`` = kept), shaped ``noise_shape`` or ``shape``."""
    mshape = tuple(spec.noise_shape) if spec.noise_shape is not None else tuple(shape)
    n = math.prod(mshape)
    return kernels.keep_mask(n, spec.p, spec.seed, spec.stream, spec.offset, device).view(mshape)


def apply_mask(x: torch.Tensor, spec: MaskSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` with the mask of ``spec``; writes into ``out`` when given.

    Values equal those of ``x.contiguous()`` whatever ``x``'s strides.
    """
    if spec.noise_shape is None:
        xc = x.contiguous()
        if out is not None and out.is_contiguous() and out.data_ptr() == xc.data_ptr():
            return kernels.dropout_mul(xc, spec.p, spec.scale, spec.seed, spec.stream, spec.offset, out=out)
        y = kernels.dropout_mul(xc, spec.p, spec.scale, spec.seed, spec.stream, spec.offset)
        return y if out is None else out.copy_(y)
    keep = keep_mask_like(spec, x.shape, x.device)
    cdt = kernels.reference.compute_dtype(x.dtype)
    factor = keep.to(cdt) * spec.scale  # exact: 0 or scale rounded to cdt
    if out is None:
        return (x.to(cdt) * factor).to(x.dtype)
    if cdt == x.dtype:
        return out.mul_(factor) if out is x else torch.mul(x, factor, out=out)
    return out.copy_(x.to(cdt) * factor)


class _DropoutFunction(torch.autograd.Function):
    """y = x * m * scale with m regenerated from ``spec`` in backward (nothing saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: MaskSpec, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.spec = spec
        if inplace:
            ctx.mark_dirty(x)
            return apply_mask(x, spec, out=x)
        return apply_mask(x, spec)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        if torch.is_grad_enabled() and grad.requires_grad:  # double backward (create_graph=True)
            return _DropoutFunction.apply(grad, ctx.spec, False), None, None
        return apply_mask(grad, ctx.spec), None, None


def masked_scale(x: torch.Tensor, spec: MaskSpec, inplace: bool = False) -> torch.Tensor:
    """Apply ``spec``'s mask with autograd support (the entry point for every mask-based variant)."""
    _hooks.notify("dropkit.functional.masked_scale", x, spec)  # observers: dropkit.guard
    if inplace or (torch.is_grad_enabled() and x.requires_grad):
        return _DropoutFunction.apply(x, spec, inplace)
    return apply_mask(x, spec)


def zeros_like_input(input: torch.Tensor, inplace: bool) -> torch.Tensor:
    """The ``p == 1`` result: ``x * 0`` (never ``0 * inf``: zeros for every finite input), in place when asked."""
    return input.mul_(0.0) if inplace else input * 0.0


def _shard_offset(noise_shape: tuple[int, ...] | None, shape: torch.Size, batch_dim: int = 0) -> int:
    """Offset of this process's shard of the global batch (see :func:`dropkit.rng.batch_shard`).

    ``batch_dim`` is the input's sample dimension. A mask is shared along the batch (offset 0
    on every shard) iff its size there is 1 while the input's is not; with a local batch of
    one sample the mask is taken as per-sample. The mask's dimensions before ``batch_dim``
    must have size 1 (time-first locked dropout: ``(1, N, H)``), so that the shard's mask
    elements are one contiguous run of the global mask.
    """
    start = current_batch_start()
    if start == 0 or len(shape) == 0:
        return 0
    mshape = noise_shape if noise_shape is not None else tuple(shape)
    d = batch_dim % len(shape)
    if mshape[d] == 1 and shape[d] != 1:
        return 0
    if any(m != 1 for m in mshape[:d]):
        raise ValueError(
            f"inside dropkit.rng.batch_shard the mask's dimensions before the batch dimension ({d}) must be 1 "
            f"(shared); received mask shape {tuple(mshape)} for input shape {tuple(shape)}"
        )
    return start * math.prod(mshape[d + 1 :])


def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
    batch_dim: int = 0,
) -> torch.Tensor:
    r"""Dropout (Srivastava et al., JMLR 2014): zero each element with probability ``p``.

    ``p`` is the probability of **dropping** (PyTorch / Keras convention), not of keeping.

    * ``scaling="inverted"`` (default, as PyTorch and Keras): training
      :math:`y = x \odot m / (1-p)`, :math:`m_j \sim \mathrm{Bernoulli}(1-p)`; eval :math:`y = x`.
    * ``scaling="classic"`` (the original papers): training :math:`y = x \odot m`; eval :math:`y = (1-p)\,x`.

    The mask is a pure function of a 64-bit key and the element index (see
    :mod:`dropkit.rng`): the same on every device, thread count, dtype and layout,
    and regenerated in backward, so autograd stores no tensor for this op.

    Args:
        input: floating tensor (float16, bfloat16, float32, float64), any shape.
        p: probability of dropping an element, in [0, 1].
        training: apply dropout (``True``, the default) or the inference form.
        inplace: overwrite ``input`` and return it, as ``torch.nn.functional.dropout``.
        scaling: ``"inverted"`` or ``"classic"``.
        noise_shape: Keras semantics, one entry per input dimension: ``1`` shares one
            mask value along that dimension, ``None`` or the dimension's size draws
            independently. ``(N, C, 1, 1)`` on an (N, C, H, W) input is spatial dropout.
        seed: use this 64-bit key directly (same seed, same mask, every call).
        generator: CPU ``torch.Generator`` to draw the key from; default: torch's global
            generator, so ``torch.manual_seed`` makes runs reproducible.
        stream: 64-bit sub-stream (Philox counter words 2-3); modules use it as a call counter.
        batch_dim: the sample dimension, used only inside :func:`dropkit.rng.batch_shard`
            (data-parallel training) to tie the mask to global sample indices.

    Shape:
        Input ``(*)``, output ``(*)``, same shape and dtype.

    Returns:
        The dropped-out tensor; ``input`` itself when nothing changes (p == 0, or eval with
        inverted scaling) or when ``inplace=True``. ``p == 1`` gives zeros (``x * 0``).

    Example:
        >>> x = torch.ones(2, 4)
        >>> dropkit.functional.dropout(x, p=0.5, seed=0)   # entries are 0 or 2
        >>> dropkit.functional.dropout(x, p=0.5, training=False) is x
        True
    """
    check_float_tensor(input)
    p = check_p(p)
    check_bool(training, "training")
    check_bool(inplace, "inplace")
    check_choice(scaling, "scaling", SCALINGS)
    shape = check_noise_shape(noise_shape, input.shape)
    stream = check_rng_args(seed, generator, stream)

    if not training:
        if scaling == "inverted" or p == 0.0:
            return input
        return input.mul_(1.0 - p) if inplace else input * (1.0 - p)
    if p == 0.0:
        return input
    if p == 1.0:
        return zeros_like_input(input, inplace)
    key = resolve_seed(seed, generator)
    scale = 1.0 / (1.0 - p) if scaling == "inverted" else 1.0
    spec = MaskSpec(p, scale, key, stream, _shard_offset(shape, input.shape, check_int(batch_dim, "batch_dim")), shape)
    return masked_scale(input, spec, inplace)
