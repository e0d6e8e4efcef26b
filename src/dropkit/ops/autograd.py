"""Autograd and vmap of the ``dropkit::`` ops: one ``Autograd`` kernel per differentiable op, one vmap rule per op.

The ops linear in ``x`` (:data:`LINEAR`: ``y = x * f(key)``) share one ``autograd.Function``,
:class:`Linear`: backward is the op on the gradient and the tangent is the op on the tangent (the mask
is regenerated from the key, nothing per element is saved). The fused op has its own, :class:`Fused`.
The functional API applies the Function only when a gradient or a tangent is wanted, outside the op
(torch.func applies an ``autograd.Function`` only there), and the Function's forward calls the op.

Below that, each op has one ``Autograd`` kernel. With the C++ registration (:data:`CPP_AUTOGRAD`,
``kernels/cpu/dk_torch.cpp``, every device) it is C++, the fused op's too: a call without a gradient or a
tangent wanted (the Function's forward, ``no_grad``) goes below autograd to the device kernel, and a direct
call of the op that wants one gets a C++ graph node and its tangent. Without it (no C++ compiler,
``DROPKIT_CPP_KERNELS=0``), this module registers the Python kernels :func:`call_linear`,
``_dropout_inplace_kernel`` and ``_fused_kernel``. ``torch.library.register_autograd`` would be the public
way from Python, but it has no forward-mode AD (and its Function lacks a vmap rule for the torch.func
transforms).

vmap: with one key the op is a pure function of its input, so ``vmap`` over a batch returns what a loop
over the rows returns (every row gets the mask of one row); with one key per row
(``vmap(randomness="different")`` or an ensemble's stacked streams) each row gets its own noise.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch.autograd.forward_ad import unpack_dual

from dropkit import kernels, rng
from dropkit.ops.kernels import CPP_AUTOGRAD, embedding_factor, drop_block_factor, gaussian_factor, mask_factor
from dropkit.ops.schemas import LIB, OPS

__all__ = ["LINEAR", "Linear", "Fused", "apply_linear", "apply_fused", "dropout_inplace"]

#: The ops linear in ``x`` (first argument ``x``, second the key): backward and tangent are the op itself.
LINEAR = ("dropout", "gaussian_dropout", "drop_block", "embedding_dropout")

dropout_op, dropout_inplace_op = OPS["dropout"], OPS["dropout_"]
fused_op, fused_backward_op = OPS["fused_bias_act_dropout_add"], OPS["fused_bias_act_dropout_add_backward"]

# No public API redispatches an op below the Autograd key (torch.library.register_autograd's own kernel uses
# this guard internally); the public alternative, register_autograd, has no forward-mode AD. Only the Python
# registration runs it: with the C++ Autograd kernels (CPP_AUTOGRAD), the op itself goes below autograd.
_below_autograd = torch._C._AutoDispatchBelowAutograd  # no public API redispatches below Autograd (see above)
_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling


def _wants_autograd(t: torch.Tensor | None) -> bool:
    """``t`` needs a graph node: it requires grad with grad mode on, or carries a forward-AD tangent."""
    if t is None:
        return False
    return (t.requires_grad and _grad_enabled()) or unpack_dual(t).tangent is not None


class Linear(torch.autograd.Function):
    """``y = op(x, key, *args)`` with ``op`` linear in ``x``: backward and the tangent are ``op`` again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, key, op, *args):  # type: ignore[override]
        return call_linear(op, x, key, *args)  # grad and forward grad are off here (eager): below autograd

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.key, ctx.op, ctx.args = inputs[1], inputs[2], inputs[3:]  # a key of 32 bytes, nothing per element

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return (call_linear(ctx.op, grad, ctx.key, *ctx.args), None, None) + (None,) * len(ctx.args)

    @staticmethod
    def jvp(ctx, tangent, *_):  # type: ignore[override]
        return call_linear(ctx.op, tangent, ctx.key, *ctx.args)


class _PositionalArguments(inspect.BoundArguments):
    """What binding positional arguments to ``(*args)`` gives, without inspect's generic walk."""

    __slots__ = ()

    @property
    def args(self) -> tuple:
        return self.arguments["args"]

    @property
    def kwargs(self) -> dict:
        return {}

    def apply_defaults(self) -> None:
        pass


class _PositionalSignature(inspect.Signature):
    """``(*args)``, bound in one step: ``Function.apply`` binds its arguments with ``inspect.signature(forward)``
    on every call of a Function with ``setup_context`` (which the torch.func transforms need), ~10 us through
    inspect's generic binding, more than a small tensor's whole kernel. dropkit passes every argument
    positionally and has no defaults, so the bound arguments are the arguments."""

    __slots__ = ()

    def bind(self, *args, **kwargs):
        if kwargs:
            return super().bind(*args, **kwargs)
        return _PositionalArguments(self, {"args": args})


def _signature_once(fn) -> None:
    fn.__signature__ = _PositionalSignature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])


_signature_once(Linear.forward)


def _no_graph_python(op, *args):
    """The op without a graph node, under the Python registration: below autograd, to the device kernel
    (the keys above it, vmap and autocast included, still see it)."""
    with _below_autograd():
        return op(*args)


def _no_graph_cpp(op, *args):
    """The op without a graph node, under the C++ registration: its C++ Autograd kernel goes below autograd."""
    return op(*args)


_no_graph = _no_graph_cpp if CPP_AUTOGRAD else _no_graph_python


def call_linear(op, x: torch.Tensor, key: torch.Tensor, *args) -> torch.Tensor:
    """An op of :data:`LINEAR`: :class:`Linear` where a gradient or a tangent is wanted, else the op without a
    graph node. The op's ``Autograd`` kernel under the Python registration."""
    try:
        wants = _wants_autograd(x)
    except RuntimeError:  # a vmapped tensor under forward AD (aten::_unpack_dual has no batching rule)
        return op(x, key, *args)  # the dispatcher: vmap's layer first, then the Autograd kernel
    if wants:
        return Linear.apply(x, key, op, *args)
    return _no_graph(op, x, key, *args)


def _dropout_inplace_kernel(x, key, *args):
    """In place with a graph node: the out-of-place op's node, copied in (``copy_`` records the in-place
    write for autograd and the torch.func transforms); without one, the device kernel writes ``x``."""
    try:
        wants = _wants_autograd(x)
    except RuntimeError:  # see call_linear
        return dropout_inplace_op(x, key, *args)
    if wants:
        x.copy_(call_linear(dropout_op, x, key, *args))
        return None
    return _no_graph(dropout_inplace_op, x, key, *args)


class Fused(torch.autograd.Function):
    """``residual + dropout(act(x + bias))``: backward through ``fused_bias_act_dropout_add_backward``.

    Tangent: ``t_residual + (t_x + t_bias) * f * act'(h)``, which is the op's own backward pass applied
    to ``t_x + t_bias``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, bias, residual, key, p, scale, activation, offset):  # type: ignore[override]
        return _fused_kernel(x, bias, residual, key, p, scale, activation, offset)  # grad is off here (eager)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bias, residual, key, *rest = inputs
        ctx.save_for_backward(x, bias)
        ctx.save_for_forward(x, bias)
        ctx.key, ctx.rest, ctx.has_bias = key, rest, bias is not None  # the key: 32 bytes, nothing per element

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        need_x, need_b, need_r = ctx.needs_input_grad[:3]
        grad_x = grad_b = None
        if need_x or (need_b and ctx.has_bias):
            grad_h = fused_backward_op(grad, x, bias, ctx.key, *ctx.rest)
            grad_x = grad_h if need_x else None
            if need_b and ctx.has_bias:
                grad_b = grad_h.reshape(-1, x.shape[-1]).sum(0)
        return grad_x, grad_b, grad if need_r else None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, t_x, t_bias, t_residual, *_):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        t_h = t_x if t_x is not None else torch.zeros_like(x)
        if t_bias is not None:
            t_h = t_h + t_bias
        out = fused_backward_op(t_h.expand_as(x).contiguous(), x, bias, ctx.key, *ctx.rest)
        return out + t_residual if t_residual is not None else out


_signature_once(Fused.forward)


def _fused_kernel(x, bias, residual, key, *args):
    try:
        wants = _wants_autograd(x) or _wants_autograd(bias) or _wants_autograd(residual)
    except RuntimeError:  # see call_linear
        return fused_op(x, bias, residual, key, *args)
    if wants:
        return Fused.apply(x, bias, residual, key, *args)
    return _no_graph(fused_op, x, bias, residual, key, *args)


if not CPP_AUTOGRAD:  # the Python registration (kernels/cpu/dk_torch.cpp registers these otherwise)
    for _name in LINEAR:
        LIB.impl(_name, functools.partial(call_linear, OPS[_name]), "Autograd")
    LIB.impl("dropout_", _dropout_inplace_kernel, "Autograd")
    LIB.impl("fused_bias_act_dropout_add", _fused_kernel, "Autograd")


# ---------------------------------------------------------------------------
# The functional API's entry points
# ---------------------------------------------------------------------------
# torch.func applies an autograd.Function through its custom_function_call, which works only outside an op's
# kernel (torch.library.register_autograd has the same limit): a caller that wants a graph node applies the
# op's Function itself, and the Function's forward calls the op. Without one, the op is called directly.
# (A Python Function also keeps compiled autograd working, which the C++ graph node does not support.)
def apply_linear(op, x: torch.Tensor, key: torch.Tensor, *args) -> torch.Tensor:
    """``op(x, key, *args)`` for an op of :data:`LINEAR`, differentiable under autograd, forward AD and torch.func."""
    if _is_compiling():
        return op(x, key, *args)
    return call_linear(op, x, key, *args)


def dropout_inplace(x: torch.Tensor, key: torch.Tensor, *args) -> torch.Tensor:
    """``dropkit::dropout_`` on ``x``; with a graph node wanted, the out-of-place op copied in. Returns ``x``."""
    if _is_compiling():
        if x.requires_grad:
            return x.copy_(dropout_op(x, key, *args))
        dropout_inplace_op(x, key, *args)
        return x
    _dropout_inplace_kernel(x, key, *args)
    return x


def apply_fused(x, bias, residual, key, *args) -> torch.Tensor:
    """``dropkit::fused_bias_act_dropout_add``, differentiable under autograd, forward AD and torch.func."""
    if _is_compiling():
        return fused_op(x, bias, residual, key, *args)
    return _fused_kernel(x, bias, residual, key, *args)


# ---------------------------------------------------------------------------
# vmap rules
# ---------------------------------------------------------------------------
def _per_key(info, key: torch.Tensor, key_dim: int, call: Callable) -> tuple[torch.Tensor, int]:
    """One key per row: ``call(i, key_i)`` stacked, which is what a loop over the rows with their keys returns."""
    keys = key.movedim(key_dim, 0)
    return torch.stack([call(i, keys[i]) for i in range(info.batch_size)]), 0


def _mapped(dims) -> bool:
    """Whether any of vmap's ``in_dims`` entries is batched (a list argument's entry is a list of them)."""
    return any(_mapped(d) if isinstance(d, (list, tuple)) else d is not None for d in dims)


def _row(t: torch.Tensor, dim: int | None, i: int) -> torch.Tensor:
    return t if dim is None else t.select(dim, i)


def _next_key_vmap(info, in_dims, state):
    """A batch of streams (an ensemble's stacked ``rng_state`` buffers): each row draws its own key and advances."""
    states = state.movedim(in_dims[0], 0)
    return torch.stack([OPS["next_key"](states[i]) for i in range(info.batch_size)]), 0


def _random_vmap(op) -> Callable:
    """keep_mask / uniform / normal: the key is their only tensor, so it is batched (one key per row)."""

    def rule(info, in_dims, key, *args):
        return _per_key(info, key, in_dims[0], lambda i, k: op(k, *args))

    return rule


def _factor_of(name, key, args, shape, device, dtype):
    """The factor ``f`` of an x-linear op for an input of ``shape``."""
    if name == "dropout":
        p, scale, noise_shape, offset = args
        return mask_factor(key, p, scale, noise_shape if noise_shape is not None else shape, offset, device, dtype)
    if name == "gaussian_dropout":
        sigma, offset = args
        return gaussian_factor(key, sigma, shape, offset, device, dtype)
    if name == "embedding_dropout":
        return embedding_factor(key, *args, device, dtype)
    gamma, block_size, seed_shape, dims, offset = args
    return drop_block_factor(key, gamma, block_size, seed_shape, dims, offset, device, dtype)


def _linear_vmap(name: str) -> Callable:
    op = OPS[name]

    def rule(info, in_dims, x, key, *args):
        if _mapped(in_dims[2:]):
            raise ValueError(f"vmap of dropkit::{name} maps over its input `x` and the key only (unbatched arguments)")
        if in_dims[1] is not None:  # one key per row: each row its own noise
            return _per_key(info, key, in_dims[1], lambda i, k: op(_row(x, in_dims[0], i), k, *args))
        if in_dims[0] is None:
            return op(x, key, *args), None
        x = x.movedim(in_dims[0], 0)
        cdt = rng.compute_dtype(x.dtype)
        f = _factor_of(name, key, args, x.shape[1:], x.device, cdt)
        return kernels.round_to(x.to(cdt) * f, x.dtype), 0

    return rule


def _dropout_inplace_vmap(info, in_dims, x, key, p, scale, noise_shape, offset):
    if in_dims[1] is not None:  # one key per row: each row of x in place with its own mask
        if in_dims[0] is None:
            raise ValueError(
                "vmap of dropkit::dropout_ with one key per row needs a batched `x` to write each row into"
            )
        xb, keys = x.movedim(in_dims[0], 0), key.movedim(in_dims[1], 0)
        for i in range(info.batch_size):
            dropout_inplace_op(xb[i], keys[i], p, scale, noise_shape, offset)
        return None, None
    if in_dims[0] is None:
        dropout_inplace_op(x, key, p, scale, noise_shape, offset)
        return None, None
    xb = x.movedim(in_dims[0], 0)
    cdt = rng.compute_dtype(x.dtype)
    xb.copy_(xb.to(cdt) * mask_factor(key, p, scale, noise_shape or xb.shape[1:], offset, x.device, cdt))
    return None, None


def _fused_vmap(info, in_dims, x, bias, residual, key, p, scale, activation, offset):
    """What a loop over the rows returns (every row gets the mask of one row)."""
    if in_dims[1] is not None:
        raise ValueError(
            "vmap of dropkit::fused_bias_act_dropout_add maps over `x`, `residual` and the key, not `bias`"
        )
    if in_dims[3] is not None:  # one key per row
        return _per_key(
            info, key, in_dims[3], lambda i, k: fused_op(_row(x, in_dims[0], i), bias, _row(residual, in_dims[2], i), k, p,
                                                         scale, activation, offset)
        )  # fmt: skip
    b = info.batch_size
    xs = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(b, *x.shape)
    rs = residual.movedim(in_dims[2], 0) if in_dims[2] is not None else residual.expand(b, *residual.shape)
    return torch.stack([fused_op(xs[i], bias, rs[i], key, p, scale, activation, offset) for i in range(b)]), 0


torch.library.register_vmap("dropkit::next_key", _next_key_vmap, lib=LIB)
for _name in ("keep_mask", "uniform", "normal"):
    torch.library.register_vmap(f"dropkit::{_name}", _random_vmap(OPS[_name]), lib=LIB)
for _name in LINEAR:
    torch.library.register_vmap(f"dropkit::{_name}", _linear_vmap(_name), lib=LIB)
torch.library.register_vmap("dropkit::dropout_", _dropout_inplace_vmap, lib=LIB)
torch.library.register_vmap("dropkit::fused_bias_act_dropout_add", _fused_vmap, lib=LIB)
