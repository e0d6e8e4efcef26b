"""``DropPath``: stochastic depth, one mask value per sample."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit._validation import check_bool, check_p
from dropkit.nn._variant import VariantModule

__all__ = ["DropPath"]


class DropPath(VariantModule, torch.nn.Module):
    r"""Stochastic depth / DropPath (Huang et al., ECCV 2016; Larsson et al., ICLR 2017).

    Put on a residual branch, ``x + drop_path(f(x))`` skips the block for a fraction ``p``
    of the samples: :math:`y_n = x_n\, m_n / (1-p)`, :math:`m_n \sim \mathrm{Bernoulli}(1-p)`.
    Rates usually grow with depth: :func:`dropkit.functional.drop_path_rates`. A drop-in
    for timm's ``DropPath(drop_prob, scale_by_keep)``; see :func:`dropkit.functional.drop_path`.

    Args:
        p: probability of dropping a sample's branch, in [0, 1].
        scale_by_keep: divide survivors by ``1 - p`` (default).
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(N, *)``, output ``(N, *)``.

    Edge cases: eval and ``p = 0`` return the input; ``p = 1`` gives zeros.

    Example:
        >>> rates = dropkit.functional.drop_path_rates(0.1, depth=12)
        >>> paths = torch.nn.ModuleList(dropkit.nn.DropPath(r) for r in rates)
        >>> y = torch.randn(8, 197, 384) + paths[-1](torch.randn(8, 197, 384))
    """

    _repr_fields = ("scale_by_keep",)

    def __init__(self, p: float, scale_by_keep: bool = True, *, seed: int | None = None):
        super().__init__()
        self.p = check_p(p)
        self.scale_by_keep = check_bool(scale_by_keep, "scale_by_keep")
        self._init_stream(seed)

    @property
    def drop_prob(self) -> float:
        """timm's name for ``p``."""
        return self.p

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.drop_path(input, self.p, self.training, self.scale_by_keep, **self.key_kwargs())
