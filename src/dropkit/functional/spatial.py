"""Spatial (channel-wise) dropout: :func:`dropout` with a noise shape of ``(N, C, 1, ..., 1)``."""

from __future__ import annotations

import torch

from dropkit.seed import SeedGenerator
from dropkit._validation import check_float_tensor, check_rank
from dropkit.functional.dropout import dropout

__all__ = ["dropout1d", "dropout2d", "dropout3d"]


def _channel_dropout(
    input: torch.Tensor,
    p: float,
    training: bool,
    inplace: bool,
    spatial_dims: int,
    seed: int | SeedGenerator | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    check_float_tensor(input)
    spatial = {1: "L", 2: "H, W", 3: "D, H, W"}[spatial_dims]
    rank = check_rank(
        input,
        (spatial_dims + 1, spatial_dims + 2),
        f"dropout{spatial_dims}d",
        f"unbatched (C, {spatial}) or batched (N, C, {spatial})",
    )
    lead = 1 if rank == spatial_dims + 1 else 2  # (C, ...) or (N, C, ...): one mask value per channel
    noise_shape = tuple(input.shape[:lead]) + (1,) * spatial_dims
    return dropout(input, p, training, inplace, noise_shape=noise_shape, seed=seed, generator=generator)


def dropout1d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Channel-wise dropout for (N, C, L) or (C, L) inputs: whole channels are zeroed.

    See :class:`dropkit.nn.Dropout1d` for the rule, the paper and the edge cases;
    :func:`dropout2d` for the arguments. This is :func:`dropkit.functional.dropout`
    with ``noise_shape = (N, C, 1)`` (or ``(C, 1)``), so backward regenerates the mask. A seeded call never
    touches torch's global generator.

    Example:
        >>> y = dropkit.functional.dropout1d(torch.ones(2, 3, 5), 0.5, seed=0)
        >>> bool(((y == 0) | (y == 2)).all())   # each (n, c) row all 0 or all 2
        True
    """
    return _channel_dropout(input, p, training, inplace, 1, seed, generator)


def dropout2d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Spatial dropout (Tompson et al., CVPR 2015) for (N, C, H, W) or (C, H, W) inputs.

    :math:`y_{n,c,h,w} = x_{n,c,h,w}\, m_{n,c} / (1-p)` with :math:`m_{n,c} \sim \mathrm{Bernoulli}(1-p)`:
    whole feature maps are kept or zeroed. This is :func:`dropkit.functional.dropout`
    with ``noise_shape = (N, C, 1, 1)`` (``(C, 1, 1)`` unbatched).

    Unlike ``torch.nn.functional.dropout2d``, a 3-D input is always the unbatched
    ``(C, H, W)`` (one mask value per channel); torch treats it as ``(N, C, L)`` with a
    warning and drops per (sample, channel) pair.

    Args:
        input: floating tensor of shape ``(N, C, H, W)`` or ``(C, H, W)``.
        p: probability of dropping a channel, in [0, 1].
        training: apply dropout (default ``True``); ``False`` returns ``input``.
        inplace: overwrite ``input``.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Returns:
        Tensor of ``input``'s shape and dtype. ``p == 0`` or eval: ``input`` itself;
        ``p == 1``: zeros.

    Raises:
        ValueError: a rank other than 3 or 4.

    Example:
        >>> x = torch.randn(8, 16, 7, 7)
        >>> y = dropkit.functional.dropout2d(x, p=0.2, seed=1)
        >>> bool(((y == 0).flatten(2).all(2) | (y != 0).flatten(2).all(2)).all())
        True
    """
    return _channel_dropout(input, p, training, inplace, 2, seed, generator)


def dropout3d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Channel-wise dropout for (N, C, D, H, W) or (C, D, H, W) inputs: whole volumes are zeroed.

    See :func:`dropout2d`; the noise shape is ``(N, C, 1, 1, 1)`` (``(C, 1, 1, 1)`` unbatched). A seeded
    call never touches torch's global generator.

    Example:
        >>> y = dropkit.functional.dropout3d(torch.ones(2, 4, 3, 3, 3), 0.5, seed=0)
        >>> y.flatten(2).std(2).max().item()   # constant inside each channel
        0.0
    """
    return _channel_dropout(input, p, training, inplace, 3, seed, generator)
