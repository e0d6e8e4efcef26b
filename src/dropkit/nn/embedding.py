"""``EmbeddingDropout``: word dropout around a ``torch.nn.Embedding``."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit._validation import check_p
from dropkit.nn._variant import VariantModule

__all__ = ["EmbeddingDropout"]


class EmbeddingDropout(VariantModule, torch.nn.Module):
    r"""Embedding dropout / word dropout (Gal & Ghahramani, NeurIPS 2016; Merity et al., ICLR 2018).

    Wraps an embedding and drops whole vocabulary rows, one mask per forward, so every
    occurrence of a dropped word is zero: :math:`y = (E \odot m / (1-p))[\text{input}]`,
    :math:`m_v \sim \mathrm{Bernoulli}(1-p)`. The wrapped module keeps its parameters
    (``state_dict`` keys ``embedding.weight``); see :func:`dropkit.functional.embedding_dropout`.

    Args:
        embedding: the ``torch.nn.Embedding`` to wrap (its padding_idx, max_norm, ... are used).
        p: probability of dropping a vocabulary entry, in [0, 1]. Default: 0.1 (AWD-LSTM).
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(*)`` token ids, output ``(*, embedding_dim)``.

    Edge cases: eval and ``p = 0`` are the plain embedding; ``p = 1`` gives zeros.

    Example:
        >>> m = dropkit.nn.EmbeddingDropout(torch.nn.Embedding(1000, 64), p=0.1)
        >>> y = m(torch.randint(0, 1000, (35, 8)))
        >>> y.shape
        torch.Size([35, 8, 64])
    """

    def __init__(self, embedding: torch.nn.Embedding, p: float = 0.1, *, seed: int | None = None):
        super().__init__()
        if not isinstance(embedding, torch.nn.Embedding):
            raise TypeError(f"`embedding` must be a torch.nn.Embedding; received {type(embedding).__name__}")
        self.embedding = embedding
        self.p = check_p(p)
        self._init_stream(seed)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped embedding's matrix (for weight tying)."""
        return self.embedding.weight

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        e = self.embedding
        return F.embedding_dropout(
            input, e.weight, self.p, self.training, padding_idx=e.padding_idx, max_norm=e.max_norm,
            norm_type=e.norm_type, scale_grad_by_freq=e.scale_grad_by_freq, sparse=e.sparse, **self.key_kwargs(),
        )  # fmt: skip
