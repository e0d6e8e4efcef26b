"""``Dropout1d/2d/3d``: channel-wise dropout, drop-ins for torch's, batched and unbatched inputs alike."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit.nn._variant import InplaceOpModule

__all__ = ["Dropout1d", "Dropout2d", "Dropout3d"]


class Dropout1d(InplaceOpModule, torch.nn.Dropout1d):
    r"""Channel-wise dropout for (N, C, L) or unbatched (C, L) inputs (Tompson et al., CVPR 2015).

    Each channel of each sample is zeroed with probability ``p`` as a whole, survivors scaled
    by :math:`1/(1-p)`: :math:`y_{n,c,l} = x_{n,c,l}\, m_{n,c}/(1-p)`. A drop-in for
    ``torch.nn.Dropout1d`` (an ``isinstance`` of it); the mask comes from
    :func:`dropkit.functional.dropout1d` (dropout with noise shape ``(N, C, 1)``).

    Args:
        p: probability of dropping a channel, in [0, 1]. Default: 0.5.
        inplace: overwrite the input.
        seed: own a stream saved in the ``state_dict`` (see :class:`dropkit.nn.Dropout`); a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, C, L)`` or ``(C, L)``; output the same. Other ranks: ``ValueError``.

    Edge cases: eval and ``p = 0`` return the input; ``p = 1`` gives zeros.

    Example:
        >>> m = dropkit.nn.Dropout1d(0.3)
        >>> y = m(torch.randn(4, 16, 100))
        >>> m.eval()(y) is y
        True
    """

    _op = staticmethod(F.dropout1d)


class Dropout2d(InplaceOpModule, torch.nn.Dropout2d):
    r"""Spatial dropout (Tompson et al., "Efficient object localization using convolutional networks", CVPR 2015).

    Whole feature maps are zeroed with probability ``p``, survivors scaled by :math:`1/(1-p)`:
    :math:`y_{n,c,h,w} = x_{n,c,h,w}\, m_{n,c}/(1-p)`. Adjacent pixels of a feature map are
    strongly correlated, so element-wise dropout barely regularises conv layers; this does.

    A drop-in for ``torch.nn.Dropout2d`` with one difference: a 3-D input is the unbatched
    ``(C, H, W)`` and whole channels are dropped. torch reads a 3-D input as ``(N, C, L)``
    with a warning and drops per (dim 0, dim 1) pair, i.e. 1-d dropout.

    Args:
        p: probability of dropping a channel, in [0, 1]. Default: 0.5.
        inplace: overwrite the input.
        seed: own a stream saved in the ``state_dict`` (see :class:`dropkit.nn.Dropout`); a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, C, H, W)`` or ``(C, H, W)``; output the same. Other ranks: ``ValueError``.

    Edge cases: eval and ``p = 0`` return the input; ``p = 1`` gives zeros.

    Example:
        >>> m = dropkit.nn.Dropout2d(0.2, seed=0)
        >>> y = m(torch.randn(8, 32, 14, 14))
        >>> bool(((y == 0).flatten(2).all(2) | (y != 0).flatten(2).all(2)).all())
        True
    """

    _op = staticmethod(F.dropout2d)


class Dropout3d(InplaceOpModule, torch.nn.Dropout3d):
    r"""Channel-wise dropout for (N, C, D, H, W) or unbatched (C, D, H, W) inputs.

    :math:`y_{n,c,d,h,w} = x_{n,c,d,h,w}\, m_{n,c}/(1-p)`; see :class:`Dropout2d`. A drop-in
    for ``torch.nn.Dropout3d``.

    Args:
        p: probability of dropping a channel, in [0, 1]. Default: 0.5.
        inplace: overwrite the input.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output the same. Other ranks: ``ValueError``.

    Example:
        >>> m = dropkit.nn.Dropout3d(0.5)
        >>> y = m(torch.randn(2, 4, 8, 8, 8))
        >>> y.shape
        torch.Size([2, 4, 8, 8, 8])
    """

    _op = staticmethod(F.dropout3d)
