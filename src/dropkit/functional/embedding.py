"""Embedding (word) dropout: whole vocabulary rows dropped, one mask per forward."""

from __future__ import annotations

import torch
import torch.nn.functional as tnf

from dropkit import ops
from dropkit._validation import check_float_tensor
from dropkit.distributed import refuse_dtensor
from dropkit.functional._noise import check_common
from dropkit.rng import inverted_scale
from dropkit.seed import SeedGenerator, resolve_key

__all__ = ["embedding_dropout"]


def embedding_dropout(
    input: torch.Tensor,
    weight: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Embedding dropout / word dropout (Gal & Ghahramani, NeurIPS 2016; Merity et al., ICLR 2018).

    Drops whole rows of the embedding matrix: :math:`y = E'[\text{input}]` with
    :math:`E'_v = E_v\, m_v / (1-p)`, :math:`m_v \sim \mathrm{Bernoulli}(1-p)` per vocabulary
    entry, one mask per call, so every occurrence of a dropped word in the batch is zero.
    Computed as ``F.embedding(input, weight) * mask[input]`` (no masked copy of the
    matrix); the mask is regenerated from the key in backward, and gradients reach
    ``weight`` only through kept rows.

    Args:
        input: integer tensor of token ids, any shape ``(*)``.
        weight: the embedding matrix ``(V, D)``.
        p: probability of dropping a vocabulary entry, in [0, 1].
        training: apply it (default ``True``); ``False`` is plain ``F.embedding``.
        padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse: as in
            ``torch.nn.functional.embedding``.
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Shape:
        ``input`` ``(*)``, ``weight`` ``(V, D)``, output ``(*, D)``.

    Example:
        >>> emb = torch.randn(100, 8)
        >>> y = dropkit.functional.embedding_dropout(torch.tensor([[3, 3, 5]]), emb, 0.5, seed=1)
        >>> bool((y[0, 0] == y[0, 1]).all())        # both occurrences of token 3 alike
        True
    """
    if not isinstance(input, torch.Tensor) or input.dtype not in (torch.int32, torch.int64):
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(f"`input` must be a tensor of token ids (int64 or int32); received {got}")
    check_float_tensor(weight, "weight")
    refuse_dtensor(weight, "embedding_dropout (`weight`)")
    refuse_dtensor(input, "embedding_dropout (`input`)")
    if weight.dim() != 2:
        raise ValueError(
            f"Invalid shape for `weight`: expected a 2-D (num_embeddings, embedding_dim) matrix. "
            f"Received: shape {tuple(weight.shape)}"
        )
    p = check_common(weight, p, training, seed, generator)
    out = tnf.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    if not training or p == 0.0:
        return out
    if p == 1.0:
        return out * 0.0
    key = resolve_key(seed, generator)
    return ops.apply_linear(ops.embedding_dropout_op, out, key, input, weight.shape[0], p, inverted_scale(p))
