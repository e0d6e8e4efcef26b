"""``AlphaDropout`` and ``FeatureAlphaDropout`` for self-normalizing (SELU) networks."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit.nn._variant import InplaceOpModule

__all__ = ["AlphaDropout", "FeatureAlphaDropout"]


class AlphaDropout(InplaceOpModule, torch.nn.AlphaDropout):
    r"""Alpha dropout (Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017).

    For SELU networks: a dropped unit takes SELU's negative saturation
    :math:`\alpha' = -\lambda\alpha` and an affine map restores the statistics,
    :math:`y = a\,(x \odot m + \alpha'(1-m)) + b`, so standard-normal inputs keep mean 0 and
    variance 1. A drop-in for ``torch.nn.AlphaDropout``; see :func:`dropkit.functional.alpha_dropout`.

    Args:
        p: probability of dropping an element, in [0, 1]. Default: 0.5.
        inplace: overwrite the input.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(*)``, output ``(*)``.

    Edge cases: eval and ``p = 0`` return the input; ``p = 1`` gives zeros.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.SELU(), dropkit.nn.AlphaDropout(0.1))
        >>> y = net(torch.randn(32, 64))
        >>> y.shape
        torch.Size([32, 64])
    """

    _op = staticmethod(F.alpha_dropout)


class FeatureAlphaDropout(InplaceOpModule, torch.nn.FeatureAlphaDropout):
    r"""Alpha dropout of whole channels of an ``(N, C, *)`` input (one mask value per sample and channel).

    The rule of :class:`AlphaDropout` with noise shape ``(N, C, 1, ..., 1)``; a drop-in for
    ``torch.nn.FeatureAlphaDropout`` (dim 0 is always the batch, as in torch).

    Args:
        p: probability of dropping a channel, in [0, 1]. Default: 0.5.
        inplace: overwrite the input.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, C, *)`` with at least 2 dimensions; output the same.

    Example:
        >>> m = dropkit.nn.FeatureAlphaDropout(0.2)
        >>> y = m(torch.randn(4, 8, 16, 16))
        >>> y.shape
        torch.Size([4, 8, 16, 16])
    """

    _op = staticmethod(F.feature_alpha_dropout)
