"""``dropkit.nn.Dropout``: a drop-in for ``torch.nn.Dropout`` on the Philox mask contract."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit.nn._base import SeededStream, extra_repr_suffix, init_dropout_args

__all__ = ["Dropout"]


class Dropout(SeededStream, torch.nn.Dropout):
    r"""Dropout (Srivastava et al., JMLR 2014) as a module that follows ``.train()`` / ``.eval()``.

    ``p`` is the probability of **dropping** an element. In training each element is
    zeroed with probability ``p``; with ``scaling="inverted"`` (default) survivors are
    scaled by :math:`1/q` (:math:`q \approx 1-p` the exact keep probability, :func:`dropkit.rng.inverted_scale`)
    and eval is the identity; with ``scaling="classic"``
    survivors are not scaled and eval multiplies by :math:`1-p`.

    A drop-in for ``torch.nn.Dropout``: the same positional arguments, the same repr,
    an ``isinstance`` of it, and no parameters or buffers, so a ``state_dict`` saved from
    a model built with torch's Dropout loads strictly. Masks come from
    :func:`dropkit.functional.dropout`: regenerated in backward (nothing stored), the
    same on every device.

    Args:
        p: probability of dropping an element, in [0, 1]. Default: 0.5.
        inplace: overwrite the input. Default: ``False``.
        scaling: ``"inverted"`` or ``"classic"``.
        seed: if given, the module owns its stream: call ``k`` in training uses
            ``(seed, stream=k)``, and ``(seed, k)`` is saved in the ``state_dict`` as
            ``rng_state`` so a resumed run draws the masks an uninterrupted run would; a seeded
            call never touches torch's global generator, and inside ``torch.utils.checkpoint``
            the recompute reuses the forward's keys (:mod:`dropkit.seed`).

    Shape:
        Input ``(*)``, output ``(*)``, same shape.

    Example:
        >>> m = dropkit.nn.Dropout(0.2)
        >>> y = m(torch.randn(20, 16))
        >>> m.eval()(x) is x       # eval: identity
        True
    """

    scaling: str

    def __init__(self, p: float = 0.5, inplace: bool = False, *, scaling: str = "inverted", seed: int | None = None):
        torch.nn.Module.__init__(self)  # torch's Dropout.__init__ would validate p with its own message
        init_dropout_args(self, p, inplace, scaling)
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, self.inplace, scaling=self.scaling, **self.key_kwargs())

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" + extra_repr_suffix(self)
