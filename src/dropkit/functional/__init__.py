"""Functional dropout ops. ``p`` is always the probability of **dropping** an element.

Every function defaults to ``training=True`` (a bare call drops), takes ``seed=`` or
``generator=`` for its randomness, and draws every random number through the mask
contract of :mod:`dropkit.rng`.
"""

from dropkit.functional.dropout import MaskSpec, apply_mask, dropout, keep_mask_like, masked_scale
from dropkit.functional.fused import fused_bias_act_dropout_add

__all__ = ["dropout", "MaskSpec", "apply_mask", "keep_mask_like", "masked_scale"]
__all__ += ["fused_bias_act_dropout_add"]
