"""``DropBlock2d`` and ``DropBlock3d``: contiguous blocks of feature maps dropped."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit._validation import check_bool, check_int, check_p
from dropkit.nn._variant import VariantModule

__all__ = ["DropBlock2d", "DropBlock3d"]


class _DropBlock(VariantModule, torch.nn.Module):
    _repr_fields = ("block_size", "inplace", "share_channels")
    _op = staticmethod(F.drop_block2d)

    def __init__(
        self, p: float, block_size: int, inplace: bool = False, *, share_channels: bool = False, seed: int | None = None
    ):
        super().__init__()
        self.p = check_p(p)
        self.block_size = check_int(block_size, "block_size", minimum=1)
        self.inplace = check_bool(inplace, "inplace")
        self.share_channels = check_bool(share_channels, "share_channels")
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._op(
            input, self.p, self.block_size, self.training, self.inplace,
            share_channels=self.share_channels, **self.key_kwargs(),
        )  # fmt: skip


class DropBlock2d(_DropBlock):
    r"""DropBlock (Ghiasi, Lin & Le, NeurIPS 2018): drop ``block_size x block_size`` squares of feature maps.

    Contiguous regions are dropped so a conv net cannot recover a dropped unit from its
    neighbours; survivors are rescaled by ``numel / kept`` per sample (torchvision rescales over the batch), so the
    mean is kept: :math:`y = x \odot M\, |M| / \sum M`. The block-start rate is solved so the
    expected dropped fraction is ``p``. Papers schedule ``p`` from 0 up to ~0.1 over training:
    set ``module.p`` between epochs. See :func:`dropkit.functional.drop_block2d`.

    Args:
        p: fraction of activations to drop, in [0, 1].
        block_size: side of a block (odd or even), >= 1 and at most min(H, W) of the input.
        inplace: overwrite the input.
        share_channels: one mask per sample for all channels (default: one per channel).
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, C, H, W)`` or ``(C, H, W)``; output the same.

    Edge cases: eval and ``p = 0`` return the input; ``p = 1`` gives zeros; a block larger
    than the input is a ``ValueError`` at call time.

    Example:
        >>> m = dropkit.nn.DropBlock2d(0.1, block_size=7)
        >>> y = m(torch.randn(8, 64, 28, 28))
        >>> y.shape
        torch.Size([8, 64, 28, 28])
    """

    _op = staticmethod(F.drop_block2d)


class DropBlock3d(_DropBlock):
    r"""DropBlock on volumes: ``block_size``-cubes of ``(N, C, D, H, W)`` inputs dropped; see :class:`DropBlock2d`.

    Args:
        p: fraction of activations to drop, in [0, 1].
        block_size: side of a block, >= 1 and at most min(D, H, W) of the input.
        inplace: overwrite the input.
        share_channels: one mask per sample for all channels.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, C, D, H, W)`` or ``(C, D, H, W)``; output the same.

    Example:
        >>> m = dropkit.nn.DropBlock3d(0.1, block_size=3)
        >>> y = m(torch.randn(2, 8, 8, 8, 8))
        >>> y.shape
        torch.Size([2, 8, 8, 8, 8])
    """

    _op = staticmethod(F.drop_block3d)
