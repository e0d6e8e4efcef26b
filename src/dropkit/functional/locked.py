"""Locked (variational) dropout: :func:`dropout` with the time dimension of the noise shape set to 1."""

from __future__ import annotations

import torch

from dropkit.seed import SeedGenerator
from dropkit._validation import check_bool, check_float_tensor
from dropkit.functional.dropout import dropout

__all__ = ["locked_dropout"]


def locked_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    batch_first: bool = False,
    inplace: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Locked dropout (Gal & Ghahramani, NeurIPS 2016; Merity et al., ICLR 2018): one mask per sequence.

    :math:`y_{t,n,f} = x_{t,n,f}\, m_{n,f} / (1-p)`: the same features are dropped at every
    time step. This is :func:`dropkit.functional.dropout` with the time entry of the
    noise shape set to 1, so backward regenerates the mask. See :class:`dropkit.nn.LockedDropout`.

    Args:
        input: ``(T, N, *F)`` (``batch_first=False``), ``(N, T, *F)`` (``batch_first=True``),
            or an unbatched ``(T, F)`` sequence (time first whatever ``batch_first``, as
            ``torch.nn.LSTM`` reads unbatched input).
        p: probability of dropping a feature of a sequence, in [0, 1].
        training: apply dropout (default ``True``); ``False`` returns ``input``.
        batch_first: whether dim 0 is the batch (then dim 1 is time).
        inplace: overwrite ``input``.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Example:
        >>> x = torch.ones(10, 4, 8)                          # (T, N, F)
        >>> y = dropkit.functional.locked_dropout(x, 0.5, seed=0)
        >>> bool((y == y[0]).all())                           # same mask at every step
        True
    """
    check_float_tensor(input)
    check_bool(batch_first, "batch_first")
    if input.dim() < 2:
        raise ValueError(
            "Invalid shape for `input` of locked_dropout: expected a tensor with at least 2 dimensions "
            f"((T, N, *F), (N, T, *F) or unbatched (T, F)). Received: a {input.dim()}-D tensor of shape {tuple(input.shape)}"
        )
    time_dim = 1 if batch_first and input.dim() > 2 else 0
    noise_shape = list(input.shape)
    noise_shape[time_dim] = 1
    batch_dim = 1 - time_dim if input.dim() > 2 else 0  # for dropkit.rng.batch_shard
    return dropout(
        input, p, training, inplace, noise_shape=noise_shape, seed=seed, generator=generator,
        batch_dim=batch_dim,
    )  # fmt: skip
