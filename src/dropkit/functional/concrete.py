"""Concrete dropout (Gal, Hron & Kendall, NeurIPS 2017): dropout with a learned rate."""

from __future__ import annotations

import torch
import torch.nn.functional as tnf
from torch.overrides import handle_torch_function, has_torch_function_unary

from dropkit import ops
from dropkit._validation import check_bool, check_float_tensor, check_rank, check_real
from dropkit.distributed import dtensor_variant, is_dtensor
from dropkit.functional.dropout import _shard_offset
from dropkit.rng import compute_dtype
from dropkit.seed import SeedGenerator, check_seed_arg, resolve_key

__all__ = ["concrete_dropout", "concrete_regularizer", "clamp_logit", "LOGIT_LIMIT"]


def concrete_dropout(
    input: torch.Tensor,
    p_logit: torch.Tensor,
    training: bool = True,
    *,
    temperature: float = 0.1,
    spatial: bool = False,
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
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
        seed, generator: the key, as in :func:`dropkit.functional.dropout`; a seeded call never
            touches torch's global generator.

    Returns:
        Tensor of ``input``'s shape and dtype (computed in float32, float64 for float64).

    Example:
        >>> logit = torch.tensor(-2.0, requires_grad=True)          # p ~ 0.12
        >>> y = dropkit.functional.concrete_dropout(torch.randn(8, 16), logit, seed=0)
        >>> y.sum().backward(); logit.grad is not None
        True
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            concrete_dropout, (input,), input, p_logit, training, temperature=temperature, spatial=spatial, seed=seed,
            generator=generator,
        )  # fmt: skip
    check_float_tensor(input)
    if not isinstance(p_logit, torch.Tensor) or p_logit.numel() != 1 or not p_logit.is_floating_point():
        raise TypeError(f"`p_logit` must be a floating tensor with one element; received {p_logit!r}")
    check_bool(training, "training")
    check_bool(spatial, "spatial")
    temperature = check_real(temperature, "temperature", low=0.0, low_open=True)
    check_seed_arg(seed, generator)
    if spatial:
        check_rank(input, range(2, 9), "concrete_dropout(spatial=True)", "(N, C, *)")
    if not training:
        return input
    if is_dtensor(input):
        return dtensor_variant(
            input, lambda t, k: concrete_dropout(t, p_logit, temperature=temperature, spatial=spatial, seed=k),
            what="concrete_dropout", linear=False, seed=seed, generator=generator,
        )  # fmt: skip
    noise_shape = tuple(input.shape[:2]) + (1,) * (input.dim() - 2) if spatial else tuple(input.shape)
    ops.refuse_shape_trace("concrete_dropout")
    key = resolve_key(seed, generator)
    offset = _shard_offset(noise_shape, input.shape)
    logit = clamp_logit(p_logit.reshape(()))
    if torch.compiler.is_compiling():  # torch ops: the partitioner decides what to keep (dynamo cannot trace a jvp)
        return _concrete(input, logit, key, offset, temperature, noise_shape)
    return _Concrete.apply(input, logit, key, offset, temperature, noise_shape)


def _keep(logit, key, offset, temperature, noise_shape, device, cdt):
    """The relaxed keep indicator ``1 - z~ = sigmoid(-(logit + logit(u)) / t)`` and ``1 - p = sigmoid(-logit)``."""
    u = ops.uniform_op(key, list(noise_shape), offset, torch.float64, device)
    logit_u = (torch.log(u) - torch.log1p(-u)).to(cdt)  # in float64: u near 1 stays < 1
    logit = logit.to(cdt)
    return torch.sigmoid(-(logit + logit_u) / temperature), torch.sigmoid(-logit)


def _concrete(x, logit, key, offset, temperature, noise_shape):
    """``y = x * keep / (1 - p)`` in the compute dtype, rounded once to x's dtype."""
    keep, q = _keep(logit, key, offset, temperature, noise_shape, x.device, compute_dtype(x.dtype))
    return (x.to(keep.dtype) * (keep / q)).to(x.dtype)


class _Concrete(torch.autograd.Function):
    """:func:`_concrete` that saves ``x`` and the logit only: the uniforms (and ``keep``) are regenerated from
    the key in backward and in the tangent, so nothing of the noise's size is stored.

    With ``f = keep / q``: ``dy/dx = f`` and ``dy/dlogit = x * f * ((1 - q) - (1 - keep) / t)``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, logit, key, offset, temperature, noise_shape):  # type: ignore[override]
        return _concrete(x, logit, key, offset, temperature, noise_shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, logit, key, offset, temperature, noise_shape = inputs
        ctx.save_for_backward(x, logit)
        ctx.save_for_forward(x, logit)
        ctx.rest = (key, offset, temperature, noise_shape)

    @staticmethod
    def _factor_and_slope(ctx, x, logit):
        key, offset, temperature, noise_shape = ctx.rest
        keep, q = _keep(logit, key, offset, temperature, noise_shape, x.device, compute_dtype(x.dtype))
        f = keep / q
        return f, f * ((1.0 - q) - (1.0 - keep) / temperature)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, logit = ctx.saved_tensors
        f, slope = _Concrete._factor_and_slope(ctx, x, logit)
        g = grad.to(f.dtype)
        gx = (g * f).to(x.dtype) if ctx.needs_input_grad[0] else None
        glogit = (g * x.to(f.dtype) * slope).sum().to(logit.dtype) if ctx.needs_input_grad[1] else None
        return gx, glogit, None, None, None, None

    @staticmethod
    def jvp(ctx, t_x, t_logit, *_):  # type: ignore[override]
        x, logit = ctx.saved_tensors
        f, slope = _Concrete._factor_and_slope(ctx, x, logit)
        out = torch.zeros_like(x, dtype=f.dtype) if t_x is None else t_x.to(f.dtype) * f
        if t_logit is not None:
            out = out + x.to(f.dtype) * slope * t_logit.to(f.dtype)
        return out.to(x.dtype)


#: ``|p_logit|`` is clamped here: ``p`` stays in ``[sigmoid(-15), sigmoid(15)]`` (about 3e-7 from 0 and 1), so the
#: output (divided by ``1 - p``) and :func:`concrete_regularizer` stay finite in float32.
LOGIT_LIMIT = 15.0


def clamp_logit(p_logit: torch.Tensor) -> torch.Tensor:
    """``p_logit`` clamped to ``[-LOGIT_LIMIT, LOGIT_LIMIT]`` (zero gradient beyond: the rate stops there)."""
    return p_logit.clamp(-LOGIT_LIMIT, LOGIT_LIMIT)


def concrete_regularizer(p_logit: torch.Tensor, units: int, dropout_regularizer: float) -> torch.Tensor:
    r"""The rate's part of the Concrete dropout objective: :math:`\lambda_p K (p \log p + (1-p)\log(1-p))`.

    ``K`` is the number of units that share one mask value per sample: the feature count for
    dense inputs, the **channel** count for spatial (convolutional) ones, as in the
    authors' ``SpatialConcreteDropout`` (using C*H*W there overweights the entropy term
    by H*W). Minimising it pushes ``p`` towards 0.5 (maximum entropy).
    """
    logit = clamp_logit(p_logit.reshape(()))
    p = torch.sigmoid(logit)
    neg_entropy = p * tnf.logsigmoid(logit) + (1.0 - p) * tnf.logsigmoid(-logit)  # stable p log p + q log q
    return dropout_regularizer * units * neg_entropy
