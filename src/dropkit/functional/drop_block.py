"""DropBlock (Ghiasi, Lin & Le, NeurIPS 2018): drop contiguous blocks of feature maps."""

from __future__ import annotations

import collections
import functools
import math

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from dropkit import ops
from dropkit._validation import check_bool, check_int, check_rank
from dropkit.functional._noise import check_common, write_inplace, zeros_like_input
from dropkit.distributed import dtensor_variant, is_dtensor
from dropkit.functional.dropout import _shard_offset
from dropkit.seed import SeedGenerator, resolve_key

__all__ = ["drop_block2d", "drop_block3d", "block_seed_rate"]


def _cover_histogram(size: int, block: int) -> collections.Counter:
    """For one dimension of ``size``: how many positions are covered by ``k`` valid block starts, per ``k``."""
    return collections.Counter(min(i, size - block) - max(i - block + 1, 0) + 1 for i in range(size))


def block_seed_rate(p: float, spatial: tuple[int, ...], block_size: int) -> float:
    r"""The rate :math:`\gamma` of block centres for which the expected dropped fraction is exactly ``p``.

    A block of side ``block_size`` starts at each of the :math:`\prod_d (L_d - b + 1)` valid
    positions independently with probability :math:`\gamma`; position ``i`` is covered by
    :math:`k(i)` starts, so :math:`E[\text{dropped}] = 1 - \frac{1}{\prod L_d}\sum_i (1-\gamma)^{k(i)}`.
    Solved by bisection (plain Python numbers: a constant under torch.compile). The paper's
    closed form :math:`\gamma = \frac{p}{b^{d}} \prod_d \frac{L_d}{L_d - b + 1}` is the
    first-order approximation; it drops noticeably less than ``p`` once blocks overlap.

    Eager calls are cached (``functools.lru_cache``); under torch.compile the solve is traced
    into constants instead (Dynamo does not trace through an ``lru_cache`` wrapper reliably).

    Example:
        >>> 0.1 / 9 < block_seed_rate(0.1, (8, 8), 3) < 0.1  # more than the paper's first-order value
        True
    """
    if torch.compiler.is_compiling():
        return _solve_seed_rate(p, tuple(spatial), block_size)
    return _cached_seed_rate(p, tuple(spatial), block_size)


def _solve_seed_rate(p: float, spatial: tuple[int, ...], block_size: int) -> float:
    hist = collections.Counter({1: 1})
    for size in spatial:  # k(i) is the product of the per-dimension counts
        hist = _product(hist, _cover_histogram(size, block_size))
    total = math.prod(spatial)
    lo, hi = 0.0, 1.0
    for _ in range(60):  # f(gamma) = 1 - mean((1-gamma)^k) is increasing; 2^-60 precision
        mid = 0.5 * (lo + hi)
        if 1.0 - sum(n * (1.0 - mid) ** k for k, n in hist.items()) / total < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


_cached_seed_rate = functools.lru_cache(maxsize=256)(_solve_seed_rate)


def _product(a: collections.Counter, b: collections.Counter) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for ka, na in a.items():
        for kb, nb in b.items():
            out[ka * kb] += na * nb
    return out


def _drop_block(input, p, block_size, training, inplace, share_channels, dims, seed, generator, stream):
    op = f"drop_block{dims}d"
    if has_torch_function_unary(input):
        return handle_torch_function(
            drop_block2d if dims == 2 else drop_block3d, (input,), input, p, block_size, training, inplace,
            share_channels=share_channels, seed=seed, generator=generator, stream=stream,
        )  # fmt: skip
    p, stream = check_common(input, p, training, seed, generator, stream)
    check_bool(inplace, "inplace")
    check_bool(share_channels, "share_channels")
    names = "H, W" if dims == 2 else "D, H, W"
    rank = check_rank(input, (dims + 1, dims + 2), op, f"unbatched (C, {names}) or batched (N, C, {names})")
    block_size = check_int(block_size, "block_size", minimum=1)
    spatial = tuple(input.shape[-dims:])
    if block_size > min(spatial):
        raise ValueError(
            f"Invalid value for `block_size`: expected an int in [1, {min(spatial)}] (at most the smallest "
            f"spatial size of the input, {spatial}). Received: block_size={block_size}"
        )
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return zeros_like_input(input, inplace)
    if is_dtensor(input):
        fn = drop_block2d if dims == 2 else drop_block3d
        y = dtensor_variant(
            input, lambda t, k: fn(t, p, block_size, share_channels=share_channels, seed=k), what=op, linear=True,
            seed=seed, generator=generator, stream=stream,
        )  # fmt: skip
        return write_inplace(input, y) if inplace else y
    lead = list(input.shape[: rank - dims])
    if share_channels:
        lead[-1] = 1
    seed_shape = tuple(lead) + tuple(s - block_size + 1 for s in spatial)
    ops.refuse_shape_trace(op)
    key = resolve_key(seed, generator, stream)
    offset = _shard_offset(seed_shape, input.shape) if rank == dims + 2 else 0  # batch_shard: offset by sample
    y = ops.apply_linear(
        ops.drop_block_op,
        input,
        key,
        block_seed_rate(p, spatial, block_size),
        block_size,
        list(seed_shape),
        dims,
        offset,
    )
    return write_inplace(input, y) if inplace else y


def drop_block2d(
    input: torch.Tensor,
    p: float,
    block_size: int,
    training: bool = True,
    inplace: bool = False,
    *,
    share_channels: bool = False,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
) -> torch.Tensor:
    r"""DropBlock (Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional networks", NeurIPS 2018).

    Zeroes ``block_size x block_size`` squares of each feature map: block starts are drawn
    with rate :math:`\gamma` on the positions where a whole block fits, each grown into a
    block, and each sample's survivors rescaled by ``numel / kept`` of that sample (torchvision
    rescales over the whole batch; per sample, the result does not depend on how a batch is
    split across processes) so the mean
    is kept: :math:`y = x \odot M \cdot |M| / \sum M`. :math:`\gamma` is solved
    (:func:`block_seed_rate`) so the expected fraction dropped is exactly ``p``. Odd and
    even block sizes both work (a block covers ``block_size`` positions, never more).
    Starts are drawn with :func:`dropkit.rng.uniform` and regenerated in backward.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        p: the fraction of activations to drop, in [0, 1].
        block_size: side of a block, an int in [1, min(H, W)] (1 is plain dropout).
        training: apply it (default ``True``); ``False`` returns ``input``.
        inplace: overwrite ``input``.
        share_channels: one block mask per sample shared by all channels (default: one per channel).
        seed, generator, stream: the key, as in :func:`dropkit.functional.dropout`.

    Returns:
        Tensor of ``input``'s shape; ``input`` itself in eval or when ``p == 0``; zeros when ``p == 1``.

    Example:
        >>> x = torch.ones(2, 3, 16, 16)
        >>> y = dropkit.functional.drop_block2d(x, 0.2, block_size=4, seed=0)
        >>> round((y == 0).float().mean().item(), 1)
        0.2
    """
    return _drop_block(input, p, block_size, training, inplace, share_channels, 2, seed, generator, stream)


def drop_block3d(
    input: torch.Tensor,
    p: float,
    block_size: int,
    training: bool = True,
    inplace: bool = False,
    *,
    share_channels: bool = False,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
) -> torch.Tensor:
    r"""DropBlock on volumes: ``block_size``-cubes of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs.

    The rule and arguments of :func:`drop_block2d`, with ``block_size <= min(D, H, W)``.

    Example:
        >>> x = torch.ones(2, 3, 8, 8, 8)
        >>> y = dropkit.functional.drop_block3d(x, 0.3, block_size=3, seed=0)
        >>> y.shape
        torch.Size([2, 3, 8, 8, 8])
    """
    return _drop_block(input, p, block_size, training, inplace, share_channels, 3, seed, generator, stream)
