"""Stochastic depth: :func:`dropout` with a per-sample noise shape ``(N, 1, ..., 1)``."""

from __future__ import annotations

import torch

from dropkit.seed import SeedGenerator
from dropkit._validation import check_bool, check_float_tensor, check_int, check_p
from dropkit.functional.dropout import dropout

__all__ = ["drop_path", "drop_path_rates"]


def drop_path(
    input: torch.Tensor,
    p: float,
    training: bool = True,
    scale_by_keep: bool = True,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Stochastic depth / DropPath (Huang et al., ECCV 2016; Larsson et al., ICLR 2017): drop whole samples.

    Applied to a residual branch, :math:`y_n = x_n\, m_n / (1-p)` with
    :math:`m_n \sim \mathrm{Bernoulli}(1-p)` per sample, so ``x + drop_path(f(x), p)`` skips
    the block for a fraction ``p`` of the samples. This is :func:`dropkit.functional.dropout`
    with ``noise_shape = (N, 1, ..., 1)``: backward regenerates the mask.

    Unlike timm's ``drop_path`` (``training=False`` by default), a bare call drops.

    Args:
        input: floating tensor ``(N, *)``; dim 0 is the sample.
        p: probability of dropping a sample's branch, in [0, 1].
        training: apply it (default ``True``); ``False`` returns ``input``.
        scale_by_keep: divide survivors by ``1 - p`` (default, as timm); ``False`` leaves
            them unscaled (eval is still the identity).
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Returns:
        Tensor of ``input``'s shape; ``input`` itself when eval or ``p == 0``; zeros when ``p == 1``.

    Example:
        >>> x = torch.ones(6, 3, 4)
        >>> y = dropkit.functional.drop_path(x, 0.5, seed=0)
        >>> y.flatten(1).std(1).max().item()     # each sample all 0 or all 2
        0.0
    """
    check_float_tensor(input)
    check_bool(scale_by_keep, "scale_by_keep")
    if input.dim() < 1:
        raise ValueError(
            "Invalid shape for `input` of drop_path: expected a tensor with at least 1 dimension (N, *). "
            "Received: a 0-D tensor"
        )
    noise_shape = (input.shape[0],) + (1,) * (input.dim() - 1)
    # eval is the identity even without scaling (timm semantics): inverted scaling's eval form
    scaling = "inverted" if scale_by_keep or not training else "classic"
    return dropout(input, p, training, scaling=scaling, noise_shape=noise_shape, seed=seed, generator=generator)


def drop_path_rates(p_max: float, depth: int) -> list[float]:
    r"""The linear depth rule of stochastic depth: block ``i`` of ``depth`` drops with ``p_max * i / (depth - 1)``.

    The rate grows linearly from 0 at the first block to ``p_max`` at the last, as
    ``torch.linspace(0, p_max, depth)`` in timm's ViT / ConvNeXt / Swin (Huang et al. 2016
    use :math:`p_l = \frac{l}{L} p_L`, which differs only by starting at block 1).
    ``depth == 1`` gives ``[0.0]``, as timm does.

    Example:
        >>> dropkit.functional.drop_path_rates(0.3, 4)
        [0.0, 0.1, 0.2, 0.3]
        >>> blocks = [dropkit.nn.DropPath(r) for r in dropkit.functional.drop_path_rates(0.1, 12)]
    """
    p_max = check_p(p_max, "p_max")
    depth = check_int(depth, "depth", minimum=1)
    if depth == 1:
        return [0.0]
    return [round(p_max * i / (depth - 1), 12) for i in range(depth)]
