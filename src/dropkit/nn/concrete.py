"""``ConcreteDropout``: dropout whose rate is a learned parameter."""

from __future__ import annotations

import math

import torch

from dropkit import functional as F
from dropkit._validation import check_bool, check_int, check_real
from dropkit.nn._base import extra_repr_suffix
from dropkit.nn._variant import VariantModule

__all__ = ["ConcreteDropout"]


class ConcreteDropout(VariantModule, torch.nn.Module):
    r"""Concrete dropout (Gal, Hron & Kendall, "Concrete Dropout", NeurIPS 2017): the drop rate is learned.

    The Bernoulli mask is relaxed to a Concrete distribution (temperature ``t``) so that
    :math:`p = \sigma(\text{p\_logit})` gets gradients: with :math:`u \sim U(0,1)`,
    :math:`y = x \odot \big(1 - \sigma((\operatorname{logit} p + \operatorname{logit} u)/t)\big) / (1-p)`.
    Add :meth:`regularizer` to the loss, or ``p`` drifts to 0: it is
    :math:`\frac{\lambda_w \lVert W \rVert^2}{1-p} + \lambda_p K\,(p\log p + (1-p)\log(1-p))` with ``W``
    the parameters of the layer that follows and ``K`` the number of units sharing one
    mask value: the feature count (last dim) for dense inputs, the **channel** count for
    ``spatial=True`` (conv) inputs, as in the authors' ``SpatialConcreteDropout``. The
    paper sets :math:`\lambda_w = l^2 / N` and :math:`\lambda_p = 2 / N` for ``N`` training
    points (``l``: prior length scale).

    Args:
        p: initial drop rate, in (0, 1). Default: 0.1.
        spatial: one mask value per (sample, channel) of an ``(N, C, *)`` input.
        temperature: of the relaxation, > 0. Default: 0.1 (the paper's).
        weight_regularizer: :math:`\lambda_w`. Default: 1e-6.
        dropout_regularizer: :math:`\lambda_p`. Default: 1e-5.
        seed: own a stream saved in the ``state_dict``; a seeded call never touches torch's global generator.

    Attributes:
        p: the current rate as a Python float (read-only; the parameter is ``p_logit``).
        units: ``K`` as seen in the last forward (0 before the first).

    Shape:
        Dense: ``(N, *, F)``; spatial: ``(N, C, *)``. Output the same.

    Edge cases: eval returns the input (inverted scaling); ``p`` is kept in (0, 1) by the
    logit parametrisation.

    Example:
        >>> cd, fc = dropkit.nn.ConcreteDropout(0.2), torch.nn.Linear(32, 10)
        >>> loss = fc(cd(torch.randn(16, 32))).pow(2).mean() + cd.regularizer(fc)
        >>> loss.backward(); cd.p_logit.grad is not None
        True
    """

    def __init__(
        self,
        p: float = 0.1,
        *,
        spatial: bool = False,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        seed: int | None = None,
    ):
        super().__init__()
        p = check_real(p, "p", low=0.0, high=1.0, low_open=True, high_open=True, what="(the initial drop rate)")
        self.spatial = check_bool(spatial, "spatial")
        self.temperature = check_real(temperature, "temperature", low=0.0, low_open=True)
        self.weight_regularizer = check_real(weight_regularizer, "weight_regularizer", low=0.0)
        self.dropout_regularizer = check_real(dropout_regularizer, "dropout_regularizer", low=0.0)
        self.p_logit = torch.nn.Parameter(torch.tensor(math.log(p) - math.log1p(-p), dtype=torch.float32))
        self.units = 0
        self._init_stream(seed)

    @property
    def p(self) -> float:  # type: ignore[override]
        """The current drop rate :math:`\\sigma(\\text{p\\_logit})` as a float."""
        return float(torch.sigmoid(F.clamp_logit(self.p_logit.detach())))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.dim() >= (2 if self.spatial else 1):
            self.units = int(input.shape[1] if self.spatial else input.shape[-1])
        return F.concrete_dropout(
            input, self.p_logit, self.training, temperature=self.temperature, spatial=self.spatial, **self.key_kwargs()
        )

    def regularizer(self, layer: torch.nn.Module | None = None, units: int | None = None) -> torch.Tensor:
        """The Concrete dropout penalty to add to the loss (a 0-d tensor differentiable in ``p_logit``).

        Args:
            layer: the layer this dropout feeds; the sum of squares of all its parameters
                enters the weight term (omit it to get the rate term alone).
            units: ``K``; default: as seen in the last forward.
        """
        k = self.units if units is None else check_int(units, "units", minimum=1)
        if k == 0:
            raise RuntimeError("ConcreteDropout.regularizer needs `units` or one forward call first (K is unknown)")
        reg = F.concrete_regularizer(self.p_logit, k, self.dropout_regularizer)
        if layer is not None:
            if not isinstance(layer, torch.nn.Module):
                raise TypeError(f"`layer` must be a torch.nn.Module or None; received {type(layer).__name__}")
            squares = sum((w.pow(2).sum() for w in layer.parameters()), torch.zeros((), device=self.p_logit.device))
            reg = reg + self.weight_regularizer * squares / torch.sigmoid(-F.clamp_logit(self.p_logit))
        return reg

    def extra_repr(self) -> str:
        return (
            f"p={self.p:.4g}, spatial={self.spatial}, temperature={self.temperature}, "
            f"weight_regularizer={self.weight_regularizer}, dropout_regularizer={self.dropout_regularizer}"
        ) + extra_repr_suffix(self)
