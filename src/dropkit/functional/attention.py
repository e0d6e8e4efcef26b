"""Attention with dropkit's dropout on the attention probabilities (what ``dropkit.patch`` routes SDPA to)."""

from __future__ import annotations

import math

import torch

from dropkit.functional.dropout import dropout
from dropkit.seed import SeedGenerator

__all__ = ["scaled_dot_product_attention"]


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    seed: int | SeedGenerator | None = None,
) -> torch.Tensor:
    r"""Scaled dot-product attention with dropkit's dropout on the attention probabilities.

    :math:`\mathrm{out} = \mathrm{dropout}(\mathrm{softmax}(Q K^\top s + M), p)\, V`, ``s`` = ``scale``
    (default :math:`1/\sqrt{E}`), ``M`` the additive mask (``attn_mask``: bool, ``True`` = take part,
    or float added to the scores; ``is_causal``: the lower triangle). Arguments as
    ``torch.nn.functional.scaled_dot_product_attention``; ``dropout_p`` is the probability of dropping.

    ``seed``: an int (a fixed key), a :class:`dropkit.SeedGenerator` (its next key) or ``None`` (a key drawn from
    torch's generator). A seeded call never touches torch's global generator (not even a read); inside
    ``torch.utils.checkpoint`` the recompute reuses the forward's key.

    Shapes: ``query (..., L, E)``, ``key (..., S, E)``, ``value (..., S, Ev)`` -> ``(..., L, Ev)``; with
    ``enable_gqa`` the head dim (-3) of ``key``/``value`` may divide ``query``'s.

    Example:
        >>> q = k = v = torch.randn(2, 4, 8, 16)
        >>> out = dropkit.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1, seed=0)   # (2, 4, 8, 16)
    """
    L, S = query.size(-2), key.size(-2)
    s = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    if enable_gqa and key.dim() >= 3 and key.size(-3) != query.size(-3):
        rep = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    scores = (query @ key.transpose(-2, -1)) * s
    if is_causal:
        if attn_mask is not None:
            raise ValueError("pass either `attn_mask` or `is_causal=True`, not both (as torch's SDPA)")
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = dropout(probs, dropout_p, True, seed=seed)
    return probs @ value
