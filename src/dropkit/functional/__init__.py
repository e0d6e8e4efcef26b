"""Functional dropout ops. ``p`` is always the probability of **dropping** an element.

Every function defaults to ``training=True`` (a bare call drops), takes ``seed=`` or
``generator=`` for its randomness, and draws every random number through the mask
contract of :mod:`dropkit.rng`.
"""

from dropkit.functional.dropout import MaskSpec, apply_mask, dropout, keep_mask_like, masked_scale
from dropkit.functional.alpha import alpha_dropout, feature_alpha_dropout
from dropkit.functional.concrete import clamp_logit, concrete_dropout, concrete_regularizer
from dropkit.functional.drop_block import drop_block2d, drop_block3d
from dropkit.functional.drop_path import drop_path, drop_path_rates
from dropkit.functional.embedding import embedding_dropout
from dropkit.functional.gaussian import gaussian_dropout, gaussian_noise
from dropkit.functional.locked import locked_dropout
from dropkit.functional.spatial import dropout1d, dropout2d, dropout3d
from dropkit.functional.fused import fused_bias_act_dropout_add
from dropkit.functional.attention import scaled_dot_product_attention

__all__ = [
    "dropout",
    "MaskSpec",
    "apply_mask",
    "keep_mask_like",
    "masked_scale",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "drop_block2d",
    "drop_block3d",
    "drop_path",
    "drop_path_rates",
    "locked_dropout",
    "embedding_dropout",
    "concrete_dropout",
    "concrete_regularizer",
    "clamp_logit",
    "scaled_dot_product_attention",
]
__all__ += ["fused_bias_act_dropout_add"]
