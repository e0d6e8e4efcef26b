"""Concrete dropout (Gal, Hron & Kendall, NeurIPS 2017): dropout with a learned rate."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as tnf
from torch.autograd.function import once_differentiable

from dropkit import _hooks
from dropkit._validation import check_bool, check_float_tensor, check_rank, check_real
from dropkit.functional.dropout import _shard_offset
from dropkit.kernels.reference import compute_dtype
from dropkit.rng import check_rng_args, resolve_seed, uniform

__all__ = ["concrete_dropout", "concrete_regularizer"]


def concrete_dropout(
    input: torch.Tensor,
    p_logit: torch.Tensor,
    training: bool = True,
    *,
    temperature: float = 0.1,
    spatial: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
) -> torch.Tensor:
    r"""Concrete dropout (Gal, Hron & Kendall, "Concrete Dropout", NeurIPS 2017), differentiable in the rate.

    The Bernoulli mask is replaced by its Concrete (relaxed) form so that gradients reach
    :math:`p = \sigma(\text{p\_logit})`: with :math:`u \sim U(0, 1)` from :func:`dropkit.rng.uniform`,
    :math:`\tilde z = \sigma\big((\operatorname{logit} p + \operatorname{logit} u) / t\big)` (the
    relaxed "dropped" indicator) and :math:`y = x \odot (1 - \tilde z) / (1 - p)`.

    Args:
        input: ``(N, *, F)`` for dense use (one mask value per element) or ``(N, C, *)`` with
            ``spatial=True`` (one value per sample and channel).
        p_logit: 0-d tensor, the logit of the drop rate (a ``Parameter`` in
            :class:`dropkit.nn.ConcreteDropout`); gradients flow to it.
        training: apply it (default ``True``); ``False`` returns ``input``.
        temperature: the relaxation's temperature ``t > 0`` (0.1 in the paper).
        spatial: one mask value per (sample, channel) instead of per element.
        seed, generator, stream: the key, as in :func:`dropkit.functional.dropout`.

    Returns:
        Tensor of ``input``'s shape and dtype (computed in float32, float64 for float64).

    Example:
        >>> logit = torch.tensor(-2.0, requires_grad=True)          # p ~ 0.12
        >>> y = dropkit.functional.concrete_dropout(torch.randn(8, 16), logit, seed=0)
        >>> y.sum().backward(); logit.grad is not None
        True
    """
    check_float_tensor(input)
    if not isinstance(p_logit, torch.Tensor) or p_logit.numel() != 1 or not p_logit.is_floating_point():
        raise TypeError(f"`p_logit` must be a floating tensor with one element; received {p_logit!r}")
    check_bool(training, "training")
    check_bool(spatial, "spatial")
    temperature = check_real(temperature, "temperature", low=0.0, low_open=True)
    stream = check_rng_args(seed, generator, stream)
    if spatial:
        check_rank(input, range(2, 9), "concrete_dropout(spatial=True)", "(N, C, *)")
    if not training:
        return input
    noise_shape = tuple(input.shape[:2]) + (1,) * (input.dim() - 2) if spatial else tuple(input.shape)
    key = resolve_seed(seed, generator)
    noise = _ConcreteNoise(key, stream, _shard_offset(noise_shape, input.shape), noise_shape, temperature)
    _hooks.notify("dropkit.functional.concrete_dropout", input, noise)
    return _ConcreteFunction.apply(input, p_logit.reshape(()), noise)


@dataclass(frozen=True)
class _ConcreteNoise:
    """The relaxed keep factor as a function of (key, stream, offset) and the logit: regenerated in backward."""

    key: int
    stream: int
    offset: int
    noise_shape: tuple[int, ...]
    temperature: float

    def keep(self, logit: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 - z~, 1 - p)``: the relaxed keep indicator and the keep rate, in ``dtype``."""
        u = uniform(self.noise_shape, self.key, self.stream, self.offset, dtype=torch.float64, device=device)
        logit_u = (torch.log(u) - torch.log1p(-u)).to(dtype)  # in float64: u near 1 stays < 1
        logit = logit.to(dtype)
        return torch.sigmoid(-(logit + logit_u) / self.temperature), torch.sigmoid(-logit)


class _ConcreteFunction(torch.autograd.Function):
    """``y = x * k / (1 - p)``; saves ``x`` and the logit, regenerates the uniforms in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, logit: torch.Tensor, noise: _ConcreteNoise) -> torch.Tensor:  # type: ignore[override]
        cdt = compute_dtype(x.dtype)
        keep, q = noise.keep(logit, x.device, cdt)
        ctx.noise = noise
        ctx.save_for_backward(x, logit)
        return (x.to(cdt) * (keep / q)).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, logit = ctx.saved_tensors
        cdt = compute_dtype(grad.dtype)
        keep, q = ctx.noise.keep(logit.detach(), grad.device, cdt)
        factor = keep / q
        g = grad.to(cdt)
        gx = (g * factor).to(x.dtype) if ctx.needs_input_grad[0] else None
        glogit = None
        if ctx.needs_input_grad[1]:
            # d(k/q)/dlogit = (k/q) * (-(1 - k)/t + (1 - q)) with k = sigmoid(-(logit + logit_u)/t), q = sigmoid(-logit)
            dfactor = factor * ((keep - 1.0) / ctx.noise.temperature + (1.0 - q))
            glogit = (g * x.to(cdt) * dfactor).sum().to(logit.dtype)
        return gx, glogit, None


def concrete_regularizer(p_logit: torch.Tensor, units: int, dropout_regularizer: float) -> torch.Tensor:
    r"""The rate's part of the Concrete dropout objective: :math:`\lambda_p K (p \log p + (1-p)\log(1-p))`.

    ``K`` is the number of units that share one mask value per sample: the feature count for
    dense inputs, the **channel** count for spatial (convolutional) ones, as in the
    authors' ``SpatialConcreteDropout`` (using C*H*W there overweights the entropy term
    by H*W). Minimising it pushes ``p`` towards 0.5 (maximum entropy).
    """
    logit = p_logit.reshape(())
    p = torch.sigmoid(logit)
    neg_entropy = p * tnf.logsigmoid(logit) + (1.0 - p) * tnf.logsigmoid(-logit)  # stable p log p + q log q
    return dropout_regularizer * units * neg_entropy
