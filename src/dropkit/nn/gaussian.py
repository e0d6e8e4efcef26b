"""``GaussianDropout`` (multiplicative noise) and ``GaussianNoise`` (additive)."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit._validation import check_real
from dropkit.functional.gaussian import check_gaussian_p
from dropkit.nn._base import extra_repr_suffix
from dropkit.nn._variant import VariantModule

__all__ = ["GaussianDropout", "GaussianNoise"]


class GaussianDropout(VariantModule, torch.nn.Module):
    r"""Gaussian dropout (Srivastava et al., JMLR 2014, sec. 10): :math:`y = x \odot (1 + \sigma z)`, :math:`\sigma^2 = p/(1-p)`.

    Multiplicative noise of mean 1 and variance :math:`p/(1-p)`, the moments of inverted
    dropout's factor, without zeros. Noise from :func:`dropkit.rng.normal`, regenerated in
    backward; see :func:`dropkit.functional.gaussian_dropout`.

    Args:
        p: the dropout rate whose variance to match, in [0, 1); ``p = 1`` is rejected
            (infinite variance).
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(*)``, output ``(*)``.

    Edge cases: eval and ``p = 0`` return the input.

    Example:
        >>> m = dropkit.nn.GaussianDropout(0.3)
        >>> y = m(torch.randn(16, 32))
        >>> m.eval()(y) is y
        True
    """

    def __init__(self, p: float, *, seed: int | None = None):
        super().__init__()
        self.p = check_gaussian_p(p)
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gaussian_dropout(input, self.p, self.training, **self.key_kwargs())


class GaussianNoise(VariantModule, torch.nn.Module):
    r"""Additive Gaussian noise (Keras' ``GaussianNoise``): :math:`y = x + \mathrm{std}\cdot z`, :math:`z \sim \mathcal N(0,1)`.

    A regulariser / augmentation that drops nothing, so ``p`` is ``0.0`` (tools that read
    ``.p`` see no drop rate); the noise level is ``std``. See
    :func:`dropkit.functional.gaussian_noise`.

    Args:
        std: standard deviation of the noise, a finite real >= 0.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Shape:
        Input ``(*)``, output ``(*)``.

    Edge cases: eval and ``std = 0`` return the input.

    Example:
        >>> m = dropkit.nn.GaussianNoise(0.1)
        >>> y = m(torch.zeros(1000))
        >>> 0.05 < y.std().item() < 0.15
        True
    """

    p = 0.0

    def __init__(self, std: float, *, seed: int | None = None):
        super().__init__()
        self.std = check_real(std, "std", low=0.0, what="(the noise's standard deviation)")
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gaussian_noise(input, self.std, self.training, **self.key_kwargs())

    def extra_repr(self) -> str:
        return f"std={self.std}" + extra_repr_suffix(self)
