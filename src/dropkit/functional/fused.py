"""``fused_bias_act_dropout_add``: residual + dropout(act(x + bias)) in one pass, no mask saved.

On CUDA tensors (Triton installed) forward and backward are one kernel each; elsewhere
the same math runs as torch ops with the same mask bits (drawn through
:func:`dropkit.kernels.keep_mask`), so the op works on every device and a CPU run
reproduces a GPU run's masks.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from dropkit import kernels
from dropkit._validation import check_bool, check_choice, check_float_tensor, check_p
from dropkit.functional.dropout import MaskSpec, _shard_offset
from dropkit.rng import check_rng_args, resolve_seed

__all__ = ["fused_bias_act_dropout_add", "FUSED_ACTIVATIONS"]

#: Activations of :func:`fused_bias_act_dropout_add` (``"gelu"`` is the exact, erf-based GELU).
FUSED_ACTIVATIONS = ("relu", "gelu", "silu", "identity")

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _triton_backend(device: torch.device):
    """The Triton backend module when it serves ``device`` (CUDA, or anything under the interpreter)."""
    be = kernels._select(device)
    return be if getattr(be, "__name__", "") == "dropkit.kernels.triton" else None


def _factor(spec: MaskSpec, shape: torch.Size, device: torch.device, cdt: torch.dtype) -> torch.Tensor:
    """``keep ? scale : 0`` in the compute dtype, from the contract's mask bits."""
    keep = kernels.keep_mask(math.prod(shape), spec.p, spec.seed, spec.stream, spec.offset, device).view(shape)
    return keep.to(cdt) * spec.scale


def _act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(h)
    if activation == "gelu":
        return 0.5 * h * (1.0 + torch.erf(h * _SQRT1_2))
    if activation == "silu":
        return h / (1.0 + torch.exp(-h))
    return h


def _act_grad(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return (h > 0).to(h.dtype)
    if activation == "gelu":
        return 0.5 * (1.0 + torch.erf(h * _SQRT1_2)) + h * (_INV_SQRT_2PI * torch.exp(-0.5 * h * h))
    if activation == "silu":
        s = 1.0 / (1.0 + torch.exp(-h))
        return s * (1.0 + h * (1.0 - s))
    return torch.ones_like(h)


def _pre_act(x: torch.Tensor, bias: torch.Tensor | None, cdt: torch.dtype) -> torch.Tensor:
    h = x.to(cdt)
    return h + bias.to(cdt) if bias is not None else h


def _run(a, x, bias, activation: str, spec: MaskSpec, backward: bool) -> torch.Tensor:
    """One pass over ``h = x + bias``, in ``x.dtype``.

    Forward (``a`` = residual): ``residual + act(h) * factor``; backward (``a`` = the output's
    gradient): ``grad * factor * act'(h)``, the gradient of ``x``; ``factor = keep ? scale : 0``.
    """
    be = _triton_backend(x.device)
    if be is not None:
        return be.fused_bias_act_dropout_add(
            a, x, bias, activation, backward, spec.p, spec.scale, spec.seed, spec.stream, spec.offset
        )
    cdt = kernels.reference.compute_dtype(x.dtype)
    h = _pre_act(x, bias, cdt)
    factor = _factor(spec, x.shape, x.device, cdt)
    y = (a.to(cdt) * factor) * _act_grad(h, activation) if backward else a.to(cdt) + _act(h, activation) * factor
    return y.to(x.dtype)


class _FusedBiasActDropoutAdd(torch.autograd.Function):
    """out = residual + act(x + bias) * m * scale; saves x and bias, regenerates m in backward."""

    @staticmethod
    def forward(ctx, x, bias, residual, activation: str, spec: MaskSpec):  # type: ignore[override]
        x = x.contiguous()
        bias = bias.contiguous() if bias is not None else None
        ctx.save_for_backward(x, bias)
        ctx.activation, ctx.spec, ctx.has_bias = activation, spec, bias is not None
        return _run(residual.contiguous(), x, bias, activation, spec, backward=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        need_x, need_b, need_r = ctx.needs_input_grad[:3]
        grad_x = grad_b = grad_r = None
        if need_x or need_b:
            grad_h = _run(grad.contiguous(), x, bias, ctx.activation, ctx.spec, backward=True)
            grad_x = grad_h if need_x else None
            if need_b and ctx.has_bias:
                grad_b = grad_h.reshape(-1, x.shape[-1]).sum(0)
        if need_r:
            grad_r = grad
        return grad_x, grad_b, grad_r, None, None


def _check_operands(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> None:
    check_float_tensor(x, "x")
    check_float_tensor(residual, "residual")
    if x.dim() == 0:
        raise ValueError("`x` must have at least one dimension (the features, last); received a 0-d tensor")
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            "`residual` must have the shape, dtype and device of `x`; received "
            f"x: {tuple(x.shape)} {x.dtype} {x.device}, residual: {tuple(residual.shape)} {residual.dtype} {residual.device}"
        )
    if bias is not None:
        check_float_tensor(bias, "bias")
        if bias.shape != (x.shape[-1],) or bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(
                f"`bias` must be 1-D of size x.shape[-1] = {x.shape[-1]} with the dtype and device of `x`, or None; "
                f"received bias: {tuple(bias.shape)} {bias.dtype} {bias.device}"
            )


def fused_bias_act_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    p: float = 0.5,
    activation: str = "relu",
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stream: int = 0,
) -> torch.Tensor:
    r"""``residual + dropout(act(x + bias), p)`` in one fused pass whose backward stores no mask.

    The feed-forward / attention-output tail of a transformer block (Vaswani et al. 2017;
    the "bias-dropout-add" fusion of Megatron-LM, Shoeybi et al. 2019) with the activation
    folded in. ``p`` is the probability of **dropping**; survivors are scaled by
    :math:`1/(1-p)` (inverted dropout). The mask is the one
    ``dropkit.functional.dropout(act(x + bias), p, seed=...)`` draws for the same key and
    stream (element-wise over ``x``'s row-major index, :mod:`dropkit.rng`), so the fused
    and unfused forms agree mask for mask. Autograd saves ``x`` and ``bias`` (needed for
    ``act'``) and a few integers; backward regenerates the mask.

    .. math:: y = r + \mathrm{act}(x + b) \odot m / (1 - p), \qquad m_j \sim \mathrm{Bernoulli}(1 - p)

    On CUDA tensors with Triton installed forward and backward are single Triton kernels;
    elsewhere the same arithmetic runs as torch ops: ``x + bias``, the activation, the
    masked scale and the residual add in float32 (float64 for float64 inputs), rounded
    once to ``x.dtype``.

    Args:
        x: floating tensor ``(*, H)`` (float16, bfloat16, float32, float64).
        bias: ``(H,)`` tensor added along the last dimension, or ``None``.
        residual: tensor with the shape, dtype and device of ``x``.
        p: probability of dropping an element, in [0, 1].
        activation: ``"relu"``, ``"gelu"`` (exact, erf-based, as ``torch.nn.GELU()``),
            ``"silu"`` or ``"identity"`` (bias-dropout-add).
        training: apply dropout (``True``, the default); ``False`` gives
            ``residual + act(x + bias)``.
        seed: use this 64-bit key directly.
        generator: CPU ``torch.Generator`` to draw the key from; default: torch's global one.
        stream: 64-bit sub-stream (Philox counter words 2-3).

    Shape:
        ``x``, ``residual`` and the output: ``(*, H)``; ``bias``: ``(H,)``.

    Returns:
        A new tensor. ``p == 1`` gives ``residual + act(x + bias) * 0`` (the residual for finite inputs).

    Example:
        >>> x, r = torch.randn(8, 16), torch.randn(8, 16)
        >>> b = torch.zeros(16, requires_grad=True)
        >>> y = dropkit.functional.fused_bias_act_dropout_add(x, b, r, p=0.1, activation="gelu", seed=0)
    """
    _check_operands(x, bias, residual)
    p = check_p(p)
    check_choice(activation, "activation", FUSED_ACTIVATIONS)
    check_bool(training, "training")
    stream = check_rng_args(seed, generator, stream)

    if not training or p == 0.0:
        spec = MaskSpec(0.0, 1.0, 0, 0, 0)  # threshold 0: every element kept, scale 1
    elif p == 1.0:
        spec = MaskSpec(1.0, 0.0, 0, 0, 0)  # threshold 65536: every element dropped (never 0 * inf)
    else:
        key = resolve_seed(seed, generator)
        spec = MaskSpec(p, 1.0 / (1.0 - p), key, stream, _shard_offset(None, x.shape))
    return _FusedBiasActDropoutAdd.apply(x, bias, residual, activation, spec)
