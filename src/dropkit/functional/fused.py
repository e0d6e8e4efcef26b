"""``fused_bias_act_dropout_add``: residual + dropout(act(x + bias)) in one pass, no mask saved.

The registered op ``dropkit::fused_bias_act_dropout_add`` (:mod:`dropkit.ops`): on CUDA tensors
(Triton installed) forward and backward are one kernel each; elsewhere the same math runs as
torch ops with the same mask bits, so the op works on every device and a CPU run reproduces a
GPU run's masks.
"""

from __future__ import annotations

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from dropkit import ops
from dropkit._validation import check_bool, check_choice, check_float_tensor, check_p
from dropkit.distributed import refuse_dtensor
from dropkit.functional.dropout import _shard_offset
from dropkit.rng import inverted_scale
from dropkit.seed import SeedGenerator, check_seed_arg, resolve_key

__all__ = ["fused_bias_act_dropout_add", "FUSED_ACTIVATIONS"]

#: Activations of :func:`fused_bias_act_dropout_add` (``"gelu"`` is the exact, erf-based GELU).
FUSED_ACTIVATIONS = ("relu", "gelu", "silu", "identity")

_NO_KEY = torch.zeros(4, dtype=torch.int64)  # p = 0 or 1 draws nothing: any key gives the same mask


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
    seed: int | SeedGenerator | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""``residual + dropout(act(x + bias), p)`` in one fused pass whose backward stores no mask.

    The feed-forward / attention-output tail of a transformer block (Vaswani et al. 2017;
    the "bias-dropout-add" fusion of Megatron-LM, Shoeybi et al. 2019) with the activation
    folded in. ``p`` is the probability of **dropping**; survivors are scaled by
    :math:`1/q`, :math:`q \approx 1-p` the exact keep probability (inverted dropout, :func:`dropkit.rng.inverted_scale`). The mask is the one
    ``dropkit.functional.dropout(act(x + bias), p, seed=...)`` draws for the same key
    (element-wise over ``x``'s row-major index, :mod:`dropkit.rng`), so the fused
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
        seed: an int (this 64-bit key) or a :class:`dropkit.SeedGenerator` (its next key); a seeded
            call never touches torch's global generator.
        generator: CPU ``torch.Generator`` to draw the key from; default: torch's global one.

    Shape:
        ``x``, ``residual`` and the output: ``(*, H)``; ``bias``: ``(H,)``.

    Returns:
        A new tensor. ``p == 1`` gives ``residual + act(x + bias) * 0`` (the residual for finite inputs).

    Example:
        >>> x, r = torch.randn(8, 16), torch.randn(8, 16)
        >>> b = torch.zeros(16, requires_grad=True)
        >>> y = dropkit.functional.fused_bias_act_dropout_add(x, b, r, p=0.1, activation="gelu", seed=0)
    """
    if has_torch_function_unary(x):
        return handle_torch_function(
            fused_bias_act_dropout_add, (x,), x, bias, residual, p, activation, training, seed=seed, generator=generator,
        )  # fmt: skip
    for t, name in ((x, "x"), (bias, "bias"), (residual, "residual")):
        refuse_dtensor(t, f"fused_bias_act_dropout_add (`{name}`)")
    _check_operands(x, bias, residual)
    p = check_p(p)
    check_choice(activation, "activation", FUSED_ACTIVATIONS)
    check_bool(training, "training")
    check_seed_arg(seed, generator)

    offset = 0
    if not training or p == 0.0:
        key, p, scale = _NO_KEY, 0.0, 1.0  # threshold 0: every element kept, scale 1
    elif p == 1.0:
        key, scale = _NO_KEY, 0.0  # threshold 65536: every element dropped (never 0 * inf)
    else:
        key, scale, offset = resolve_key(seed, generator), inverted_scale(p), _shard_offset(None, x.shape)
    return ops.apply_fused(x, bias, residual, key, p, scale, activation, offset)
