"""Core dropout op on the Philox mask contract (see :mod:`dropkit.rng`), through the registered op ``dropkit::dropout``.

Autograd saves only the key (4 words) and a few numbers: backward regenerates the mask from
them, so no tensor proportional to the input is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from dropkit import ops
from dropkit._validation import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_int,
    check_noise_shape,
    check_p,
    SCALINGS,
)
from dropkit.distributed import dtensor_dropout, is_dtensor
from dropkit.rng import current_batch_start, inverted_scale, key_tensor
from dropkit.seed import SeedGenerator, check_seed_arg, resolve_key

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

    def key(self) -> torch.Tensor:
        return key_tensor(self.seed, self.stream)


def keep_mask_like(spec: MaskSpec, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The ``bool`` keep mask of ``spec`` (``True`` = kept), shaped ``noise_shape`` or ``shape``."""
    mshape = tuple(spec.noise_shape) if spec.noise_shape is not None else tuple(shape)
    return ops.keep_mask_op(spec.key(), list(mshape), spec.p, spec.offset, device)


def apply_mask(x: torch.Tensor, spec: MaskSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` with the mask of ``spec`` (no autograd); writes into ``out`` when given."""
    ns = None if spec.noise_shape is None else list(spec.noise_shape)
    if out is x:
        ops.dropout_inplace_op(x, spec.key(), spec.p, spec.scale, ns, spec.offset)
        return x
    y = ops.dropout_op(x, spec.key(), spec.p, spec.scale, ns, spec.offset)
    return y if out is None else out.copy_(y)


def masked_scale(x: torch.Tensor, spec: MaskSpec, inplace: bool = False) -> torch.Tensor:
    """Apply ``spec``'s mask with autograd support (``dropkit::dropout`` / ``dropkit::dropout_``)."""
    ns = None if spec.noise_shape is None else list(spec.noise_shape)
    if inplace:
        return ops.dropout_(x, spec.key(), spec.p, spec.scale, ns, spec.offset)
    return ops.dropout(x, spec.key(), spec.p, spec.scale, ns, spec.offset)


def zeros_like_input(input: torch.Tensor, inplace: bool) -> torch.Tensor:
    """The ``p == 1`` result: ``x * 0`` (never ``0 * inf``: zeros for every finite input), in place when asked."""
    if inplace:
        ops.check_inplace(input)
        return input.mul_(0.0)
    return input * 0.0


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
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
    batch_dim: int = 0,
) -> torch.Tensor:
    r"""Dropout (Srivastava et al., JMLR 2014): zero each element with probability ``p``.

    ``p`` is the probability of **dropping** (PyTorch / Keras convention), not of keeping.

    * ``scaling="inverted"`` (default, as PyTorch and Keras): training
      :math:`y = x \odot m / q`, :math:`m_j \sim \mathrm{Bernoulli}(q)`, :math:`q = 1 - p` to within
      :math:`2^{-17}` (:func:`dropkit.rng.keep_probability`; dividing by the exact ``q`` keeps
      :math:`E[y] = x`); eval :math:`y = x`.
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
        seed: an int: use this 64-bit key directly (same seed, same mask, every call); a
            :class:`dropkit.SeedGenerator`: its next key (call ``k`` uses stream ``k``); ``None``:
            draw the key from ``generator`` (see :mod:`dropkit.seed`).
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
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout, (input,), input, p, training, inplace, scaling=scaling, noise_shape=noise_shape, seed=seed,
            generator=generator, stream=stream, batch_dim=batch_dim,
        )  # fmt: skip
    check_float_tensor(input)
    p = check_p(p)
    check_bool(training, "training")
    check_bool(inplace, "inplace")
    check_choice(scaling, "scaling", SCALINGS)
    shape = None if noise_shape is None else check_noise_shape(noise_shape, input.shape)
    stream = check_seed_arg(seed, generator, stream)
    batch_dim = check_int(batch_dim, "batch_dim")

    if not training:
        if scaling == "inverted" or p == 0.0:
            return input
        if inplace:
            ops.check_inplace(input)
            return input.mul_(1.0 - p)
        return input * (1.0 - p)
    if p == 0.0:
        return input
    if p == 1.0:
        return zeros_like_input(input, inplace)
    scale = inverted_scale(p) if scaling == "inverted" else 1.0
    offset = _shard_offset(shape, input.shape, batch_dim) if current_batch_start() else 0
    if is_dtensor(input):  # tensor parallel: each local element's mask at its global index (dropkit.distributed)
        return dtensor_dropout(input, p, scale, shape, offset, inplace, seed=seed, generator=generator, stream=stream)
    if shape is not None:
        ops.refuse_shape_trace("dropout with a noise_shape (spatial, DropPath, locked and RNN dropout)")
    key = resolve_key(seed, generator, stream)
    if inplace:
        return ops.dropout_(input, key, p, scale, shape, offset)
    return ops.apply_linear(ops.dropout_op, input, key, p, scale, None if shape is None else list(shape), offset)
