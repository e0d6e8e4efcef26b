"""``LockedDropout``: one dropout mask per sequence, shared by all time steps."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit._validation import check_bool, check_p
from dropkit.nn._variant import VariantModule

__all__ = ["LockedDropout"]


class LockedDropout(VariantModule, torch.nn.Module):
    r"""Locked / variational dropout (Gal & Ghahramani, NeurIPS 2016; Merity et al., "AWD-LSTM", ICLR 2018).

    One mask per sequence, the same at every time step: :math:`y_{t,n,f} = x_{t,n,f}\, m_{n,f}/(1-p)`.
    Used between RNN layers and on embeddings/outputs of language models. This is
    dropout with the time entry of the noise shape set to 1
    (:func:`dropkit.functional.locked_dropout`).

    Args:
        p: probability of dropping a feature of a sequence, in [0, 1]. Default: 0.5.
        batch_first: inputs are ``(N, T, *F)`` instead of ``(T, N, *F)``.
        inplace: overwrite the input.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        ``(T, N, *F)``, ``(N, T, *F)`` with ``batch_first``, or unbatched ``(T, F)``; output the same.

    Edge cases: eval and ``p = 0`` return the input; ``p = 1`` gives zeros.

    Example:
        >>> m = dropkit.nn.LockedDropout(0.3)
        >>> y = m(torch.ones(35, 8, 400))
        >>> bool((y == y[0]).all())     # same mask at every step
        True
    """

    _repr_fields = ("batch_first", "inplace")

    def __init__(self, p: float = 0.5, batch_first: bool = False, inplace: bool = False, *, seed: int | None = None):
        super().__init__()
        self.p = check_p(p)
        self.batch_first = check_bool(batch_first, "batch_first")
        self.inplace = check_bool(inplace, "inplace")
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.locked_dropout(input, self.p, self.training, self.batch_first, self.inplace, **self.key_kwargs())
