"""dropkit's registered PyTorch ops: the ``torch.ops.dropkit`` namespace.

Every random primitive of dropkit is a ``torch.library`` op, so torch.compile, torch.export,
``torch.func``, activation checkpointing and dispatch modes see it as one op with a schema:

=====================================  ==========================================================
op                                     what it computes
=====================================  ==========================================================
``next_key(state!)``                   the key of a seeded stream's next call; advances ``state``
``keep_mask(key, shape, p, offset)``   the contract's keep mask (``bool``), :mod:`dropkit.rng`
``uniform(key, shape, offset)``        uniforms in (0, 1) of the contract's 32-bit lanes
``normal(key, shape, offset)``         standard normals (contract v2: float32 Box-Muller, docs/rng.md)
``dropout(x, key, p, scale, ns, off)``  ``x * (keep ? scale : 0)``, mask shaped ``ns`` (broadcast)
``dropout_(x!, ...)``                  the same, in place
``gaussian_dropout(x, key, sigma)``    ``x * (1 + sigma * z)``
``drop_block(x, key, gamma, ...)``     ``x * M * numel / sum(M)`` per sample, ``M`` grown blocks
``embedding_dropout(x, key, ids, ...)`` ``x * keep[ids] * scale``: whole vocabulary rows
``fused_bias_act_dropout_add(...)``    ``residual + dropout(act(x + bias))``
=====================================  ==========================================================

The key is an int64 tensor ``(4,)`` on the CPU (:func:`dropkit.rng.key_tensor`), never a Python
int, so no traced path calls ``.item()``. Each op has a fake (meta) implementation, autograd that
regenerates the noise from the key in backward (no per-element tensor saved), and a vmap rule:
with one key the op is a pure function of its input, so ``vmap`` over a batch returns what a
loop over the rows returns (every row gets the mask of one row). In eager mode the functional
API wraps the x-linear ops (dropout, gaussian_dropout, drop_block) in an ``autograd.Function``
that adds forward-mode AD (the tangent goes through the same op: dropout is linear in ``x``) and
the ``torch.func`` transforms; under torch.compile it calls the op directly.

Implementations call :mod:`dropkit.kernels`, the single dispatch point (compiled C on CPU, Triton
on CUDA, torch ops elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as tnf

from dropkit import kernels, rng
from dropkit.seed import next_key_impl, plain_eager

__all__ = ["OPS", "dropout", "dropout_", "apply_linear", "has_functorch_or_fwd_ad", "refuse_shape_trace"]

_LIB = torch.library.Library("dropkit", "DEF")  # noqa: TOR901 - the namespace is ours

_KEY_CHECK = "a dropkit key is an int64 tensor of shape (4,) on the CPU (dropkit.rng.key_tensor)"


def _define(schema: str, impl, fake, *, tags: tuple = ()) -> torch._ops.OpOverload:
    name = schema.split("(", 1)[0]
    _LIB.define(schema, tags=tags)
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"dropkit::{name}", fake, lib=_LIB)
    return getattr(torch.ops.dropkit, name).default


def _key(key: torch.Tensor) -> tuple[int, int]:
    known = getattr(key, "_dropkit_ints", None)  # a key made by rng.key_tensor: valid by construction
    if known is not None:
        return known
    if key.dtype != torch.int64 or key.shape != (4,) or key.device.type != "cpu":
        raise ValueError(f"{_KEY_CHECK}; received {key.dtype} {tuple(key.shape)} on {key.device}")
    return rng.key_ints(key)


def _check_offset(offset: int) -> int:
    if not 0 <= offset < 1 << 63:
        raise ValueError(f"`offset` of a dropkit op must be in [0, 2**63); received {offset}")
    return offset


# ---------------------------------------------------------------------------
# next_key: a seeded stream's draw (mutates its state)
# ---------------------------------------------------------------------------
def _next_key_fake(state):
    return torch.empty(4, dtype=torch.int64)


next_key_op = _define(
    "next_key(Tensor(a!) state) -> Tensor", next_key_impl, _next_key_fake, tags=(torch.Tag.nondeterministic_seeded,)
)


def _next_key_vmap(info, in_dims, state):
    """A batch of streams (an ensemble's stacked ``rng_state`` buffers): each row draws its own key and advances."""
    states = state.movedim(in_dims[0], 0)
    return torch.stack([next_key_op(states[i]) for i in range(info.batch_size)]), 0


torch.library.register_vmap("dropkit::next_key", _next_key_vmap, lib=_LIB)


def _per_key(info, key: torch.Tensor, key_dim: int, call: Callable) -> tuple[torch.Tensor, int]:
    """A vmap with one key per row (``vmap(randomness="different")`` drawing unseeded keys, or an ensemble's
    seeded streams): ``call(i, key_i)`` stacked, which is what a loop over the rows with their keys returns."""
    keys = key.movedim(key_dim, 0)
    return torch.stack([call(i, keys[i]) for i in range(info.batch_size)]), 0


def _mapped(dims) -> bool:
    """Whether any of vmap's ``in_dims`` entries is batched (a list argument's entry is a list of them)."""
    return any(_mapped(d) if isinstance(d, (list, tuple)) else d is not None for d in dims)


def _row(t: torch.Tensor, dim: int | None, i: int) -> torch.Tensor:
    return t if dim is None else t.select(dim, i)


# ---------------------------------------------------------------------------
# Random tensors: keep mask, uniform, normal
# ---------------------------------------------------------------------------
def _keep_mask_impl(key, shape, p, offset, device):
    seed, stream = _key(key)
    n = math.prod(shape)
    return kernels.keep_mask(n, float(p), seed, stream, _check_offset(offset), torch.device(device)).view(tuple(shape))


def _keep_mask_fake(key, shape, p, offset, device):
    return torch.empty(tuple(shape), dtype=torch.bool, device=device)


keep_mask_op = _define(
    "keep_mask(Tensor key, SymInt[] shape, float p, int offset, Device device) -> Tensor",
    _keep_mask_impl,
    _keep_mask_fake,
)


def _uniform_impl(key, shape, offset, dtype, device):
    seed, stream = _key(key)
    n = math.prod(shape)
    return kernels.uniform(n, seed, stream, _check_offset(offset), torch.device(device), dtype=dtype).view(tuple(shape))


def _normal_impl(key, shape, offset, dtype, device):
    seed, stream = _key(key)
    n = math.prod(shape)
    return kernels.normal(n, seed, stream, _check_offset(offset), torch.device(device), dtype=dtype).view(tuple(shape))


def _random_fake(key, shape, offset, dtype, device):
    return torch.empty(tuple(shape), dtype=dtype, device=device)


_RANDOM_SCHEMA = "(Tensor key, SymInt[] shape, int offset, ScalarType dtype, Device device) -> Tensor"
uniform_op = _define("uniform" + _RANDOM_SCHEMA, _uniform_impl, _random_fake)
normal_op = _define("normal" + _RANDOM_SCHEMA, _normal_impl, _random_fake)


def _register_random_vmap(op) -> None:
    """keep_mask / uniform / normal under vmap: the key is their only tensor, so it is batched (one key per row)."""
    name = f"dropkit::{op._schema.name.split('::')[1]}"

    def rule(info, in_dims, key, *args):
        return _per_key(info, key, in_dims[0], lambda i, k: op(k, *args))

    torch.library.register_vmap(name, rule, lib=_LIB)


for _op in (keep_mask_op, uniform_op, normal_op):
    _register_random_vmap(_op)


# ---------------------------------------------------------------------------
# The x-linear noise ops: y = x * f(key)   (backward: g * f, the same op on g)
# ---------------------------------------------------------------------------
def _into_layout(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` (values for ``x``'s shape, any dtype) rounded to ``x.dtype`` under the 16-bit NaN rule
    (:func:`dropkit.kernels.round_to`) and laid out in ``x``'s memory format, as ``torch.empty_like(x)``."""
    if y.dtype != x.dtype:
        y = kernels.round_to(y, x.dtype)
    if y.is_contiguous() and x.is_contiguous():
        return y
    if y.stride() == torch.empty_like(x).stride():
        return y
    return torch.empty_like(x).copy_(y)


def _mask_factor(key, p, scale, shape, offset, device, dtype):
    keep = keep_mask_op(key, list(shape), p, offset, device)
    return keep.to(dtype) * scale  # exact: 0 or scale rounded to dtype


def _dropout_impl(x, key, p, scale, noise_shape, offset):
    seed, stream = _key(key)
    offset = _check_offset(offset)
    if noise_shape is None:
        if x.is_contiguous():  # the common case: the kernel's output already has x's layout
            return kernels.dropout_mul(x, p, scale, seed, stream, offset)
        return _into_layout(x, kernels.dropout_mul(x.contiguous(), p, scale, seed, stream, offset))
    cdt = rng.compute_dtype(x.dtype)
    return _into_layout(x, x.to(cdt) * _mask_factor(key, p, scale, noise_shape, offset, x.device, cdt))


def _dropout_inplace_impl(x, key, p, scale, noise_shape, offset):
    seed, stream = _key(key)
    offset = _check_offset(offset)
    if noise_shape is None and x.is_contiguous():
        kernels.dropout_mul(x, p, scale, seed, stream, offset, out=x)
        torch.autograd.graph.increment_version(x)  # the kernel wrote through the data pointer
    else:
        x.copy_(_dropout_impl(x, key, p, scale, noise_shape, offset))


def _like_fake(x, *args):
    return torch.empty_like(x)


def _inplace_fake(x, *args):
    return None


_DROPOUT_ARGS = "Tensor key, float p, float scale, SymInt[]? noise_shape, int offset"
dropout_op = _define(f"dropout(Tensor x, {_DROPOUT_ARGS}) -> Tensor", _dropout_impl, _like_fake)
dropout_inplace_op = _define(f"dropout_(Tensor(a!) x, {_DROPOUT_ARGS}) -> ()", _dropout_inplace_impl, _inplace_fake)


def _gaussian_factor(key, sigma, shape, offset, device, dtype):
    """``1 + sigma * z`` in ``dtype`` (float32: sigma rounded to float32 once), the factor of :func:`_gaussian_impl`."""
    return normal_op(key, list(shape), offset, dtype, device).mul_(sigma).add_(1.0)


def _gaussian_impl(x, key, sigma, offset):
    # one pass over the whole tensor (kernels.gaussian_mul); the same bits as x * _gaussian_factor(...)
    seed, stream = _key(key)
    return _into_layout(x, kernels.gaussian_mul(x, sigma, seed, stream, _check_offset(offset)))


gaussian_dropout_op = _define(
    "gaussian_dropout(Tensor x, Tensor key, float sigma, int offset) -> Tensor", _gaussian_impl, _like_fake
)


def _window_max(t: torch.Tensor, b: int, dim: int) -> torch.Tensor:
    """``out[j] = max(t[j : j + b])`` along ``dim`` (length ``L - b + 1``): windows doubled by shifted maxima,
    ``ceil(log2 b)`` element-wise passes (a b-wide max pool costs b comparisons per output on CPU)."""
    w = 1
    while w < b:
        step = min(w, b - w)  # windows of w at j and j + step cover j .. j + step + w - 1
        n = t.shape[dim] - step
        t = torch.maximum(t.narrow(dim, 0, n), t.narrow(dim, step, n))
        w += step
    return t


def _drop_block_factor(key, gamma, block_size, seed_shape, dims, offset, device, dtype):
    """Blocks grown from Bernoulli(gamma) starts on the valid grid; survivors rescaled per sample."""
    u = uniform_op(key, list(seed_shape), offset, torch.float64, device)
    starts = (u < gamma).to(dtype)
    b = block_size
    covered = tnf.pad(starts, [b - 1] * (2 * dims))  # a start at s covers s .. s + b - 1
    for d in range(-dims, 0):  # max_pool(kernel b, stride 1), separably: the same values, far fewer operations
        covered = _window_max(covered, b, d)
    keep = 1.0 - covered
    batched = keep.dim() == dims + 2
    sum_dims = tuple(range(1, keep.dim())) if batched else tuple(range(keep.dim()))
    kept = keep.sum(dim=sum_dims, keepdim=True)
    per_sample = math.prod(keep.shape[1:]) if batched else keep.numel()
    scale = torch.where(kept > 0, per_sample / kept.clamp(min=1.0), torch.zeros_like(kept))
    return keep * scale


def _drop_block_impl(x, key, gamma, block_size, seed_shape, dims, offset):
    cdt = rng.compute_dtype(x.dtype)
    f = _drop_block_factor(key, gamma, block_size, seed_shape, dims, _check_offset(offset), x.device, cdt)
    return _into_layout(x, x.to(cdt) * f)


drop_block_op = _define(
    "drop_block(Tensor x, Tensor key, float gamma, int block_size, SymInt[] seed_shape, int dims, int offset) -> Tensor",
    _drop_block_impl,
    _like_fake,
)


def _embedding_factor(key, indices, num_embeddings, p, scale, device, dtype):
    return _mask_factor(key, p, scale, [num_embeddings], 0, device, dtype)[indices].unsqueeze(-1)


def _embedding_impl(x, key, indices, num_embeddings, p, scale):
    cdt = rng.compute_dtype(x.dtype)
    return _into_layout(x, x.to(cdt) * _embedding_factor(key, indices, num_embeddings, p, scale, x.device, cdt))


embedding_dropout_op = _define(
    "embedding_dropout(Tensor x, Tensor key, Tensor indices, int num_embeddings, float p, float scale) -> Tensor",
    _embedding_impl,
    _like_fake,
)


def _factor_of(op, key, args, shape, device, dtype):
    """The factor ``f`` of an x-linear op for an input of ``shape`` (used by the vmap rules)."""
    if op is dropout_op:
        p, scale, noise_shape, offset = args
        return _mask_factor(key, p, scale, noise_shape if noise_shape is not None else shape, offset, device, dtype)
    if op is gaussian_dropout_op:
        sigma, offset = args
        return _gaussian_factor(key, sigma, shape, offset, device, dtype)
    if op is embedding_dropout_op:
        return _embedding_factor(key, *args, device, dtype)
    gamma, block_size, seed_shape, dims, offset = args
    return _drop_block_factor(key, gamma, block_size, seed_shape, dims, offset, device, dtype)


def _register_linear(op, n_args: int) -> None:
    """Autograd (g -> op(g)) and the vmap rule (one row's noise, broadcast over the batch) of an x-linear op."""
    qualname = f"dropkit::{op._schema.name.split('::')[1]}"

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.args = inputs[2:]

    def backward(ctx, grad):
        (key,) = ctx.saved_tensors
        return (op(grad, key, *ctx.args), None) + (None,) * n_args

    torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=_LIB)

    def vmap_rule(info, in_dims, x, key, *args):
        if _mapped(in_dims[2:]):
            raise ValueError(f"vmap of {qualname} maps over its input `x` and the key only (unbatched arguments)")
        if in_dims[1] is not None:  # one key per row: each row its own noise
            return _per_key(info, key, in_dims[1], lambda i, k: op(_row(x, in_dims[0], i), k, *args))
        if in_dims[0] is None:
            return op(x, key, *args), None
        x = x.movedim(in_dims[0], 0)
        cdt = rng.compute_dtype(x.dtype)
        f = _factor_of(op, key, args, x.shape[1:], x.device, cdt)
        return kernels.round_to(x.to(cdt) * f, x.dtype), 0

    torch.library.register_vmap(qualname, vmap_rule, lib=_LIB)


_register_linear(dropout_op, 4)
_register_linear(gaussian_dropout_op, 2)
_register_linear(drop_block_op, 5)
_register_linear(embedding_dropout_op, 4)


def _dropout_inplace_vmap(info, in_dims, x, key, p, scale, noise_shape, offset):
    if in_dims[1] is not None:  # one key per row: each row of x in place with its own mask
        if in_dims[0] is None:
            raise ValueError(
                "vmap of dropkit::dropout_ with one key per row needs a batched `x` to write each row into"
            )
        xb, keys = x.movedim(in_dims[0], 0), key.movedim(in_dims[1], 0)
        for i in range(info.batch_size):
            dropout_inplace_op(xb[i], keys[i], p, scale, noise_shape, offset)
        return None
    if in_dims[0] is None:
        dropout_inplace_op(x, key, p, scale, noise_shape, offset)
        return None
    xb = x.movedim(in_dims[0], 0)
    cdt = rng.compute_dtype(x.dtype)
    xb.copy_(xb.to(cdt) * _mask_factor(key, p, scale, noise_shape or xb.shape[1:], offset, x.device, cdt))
    return None


torch.library.register_vmap("dropkit::dropout_", _dropout_inplace_vmap, lib=_LIB)


# ---------------------------------------------------------------------------
# The fused bias-activation-dropout-add
# ---------------------------------------------------------------------------
def _fused_run(a, x, bias, key, p, scale, activation, offset, backward):
    """Forward (``a`` = residual): ``a + act(h) * f``; backward (``a`` = grad): ``a * f * act'(h)``; ``h = x + bias``."""
    seed, stream = _key(key)
    bias = bias.contiguous() if bias is not None else None
    return kernels.fused_bias_act_dropout_add(
        a.contiguous(), x.contiguous(), bias, activation, backward, p, scale, seed, stream, _check_offset(offset)
    )


def _fused_impl(x, bias, residual, key, p, scale, activation, offset):
    return _fused_run(residual, x, bias, key, p, scale, activation, offset, False)


def _fused_bw_impl(grad, x, bias, key, p, scale, activation, offset):
    return _fused_run(grad, x, bias, key, p, scale, activation, offset, True)


def _fused_fake(x, bias, residual, key, p, scale, activation, offset):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_FUSED_TAIL = "Tensor key, float p, float scale, str activation, int offset"
fused_op = _define(
    f"fused_bias_act_dropout_add(Tensor x, Tensor? bias, Tensor residual, {_FUSED_TAIL}) -> Tensor",
    _fused_impl,
    _fused_fake,
)
fused_backward_op = _define(
    f"fused_bias_act_dropout_add_backward(Tensor grad, Tensor x, Tensor? bias, {_FUSED_TAIL}) -> Tensor",
    _fused_bw_impl,
    _fused_fake,
)


def _fused_setup(ctx, inputs, output):
    x, bias, residual, key, p, scale, activation, offset = inputs
    ctx.save_for_backward(x, bias)
    ctx.key = key  # 32 bytes, not saved per element
    ctx.rest = (p, scale, activation, offset)
    ctx.has_bias = bias is not None


def _fused_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    key = ctx.key
    need_x, need_b, need_r = ctx.needs_input_grad[:3]
    grad_x = grad_b = grad_r = None
    if need_x or (need_b and ctx.has_bias):
        grad_h = fused_backward_op(grad, x, bias, key, *ctx.rest)
        grad_x = grad_h if need_x else None
        if need_b and ctx.has_bias:
            grad_b = grad_h.reshape(-1, x.shape[-1]).sum(0)
    if need_r:
        grad_r = grad
    return grad_x, grad_b, grad_r, None, None, None, None, None


torch.library.register_autograd(
    "dropkit::fused_bias_act_dropout_add", _fused_backward, setup_context=_fused_setup, lib=_LIB
)


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


torch.library.register_vmap("dropkit::fused_bias_act_dropout_add", _fused_vmap, lib=_LIB)

#: Every registered op (``torch.ops.dropkit.*`` overloads), for opcheck and for tools that classify ops.
OPS = {
    "next_key": next_key_op,
    "keep_mask": keep_mask_op,
    "uniform": uniform_op,
    "normal": normal_op,
    "dropout": dropout_op,
    "dropout_": dropout_inplace_op,
    "gaussian_dropout": gaussian_dropout_op,
    "drop_block": drop_block_op,
    "embedding_dropout": embedding_dropout_op,
    "fused_bias_act_dropout_add": fused_op,
    "fused_bias_act_dropout_add_backward": fused_backward_op,
}


# ---------------------------------------------------------------------------
# Eager entry points: forward AD and torch.func through an autograd.Function
# ---------------------------------------------------------------------------
def has_functorch_or_fwd_ad(x: torch.Tensor) -> bool:
    """Whether ``x`` is inside a torch.func transform or a forward-AD level is active."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x) or torch.autograd.forward_ad._current_level >= 0


_IMPLS: dict[torch._ops.OpOverload, Callable[..., torch.Tensor | None]] = {
    dropout_op: _dropout_impl,
    dropout_inplace_op: _dropout_inplace_impl,
    gaussian_dropout_op: _gaussian_impl,
    drop_block_op: _drop_block_impl,
    embedding_dropout_op: _embedding_impl,
}


#: No dispatch mode, tracer or transform is watching: nothing can tell the op from its implementation.
_plain_eager = plain_eager


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
# bound once: apply_linear runs on every eager call, where attribute lookups are a measurable share of a small call
_is_compiling = torch.compiler.is_compiling
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_functorch_active = torch._C._are_functorch_transforms_active
_grad_enabled = torch.is_grad_enabled
_forward_ad = torch.autograd.forward_ad  # its _current_level is >= 0 inside a dual level


def _has_memory(x: torch.Tensor) -> bool:
    """A plain tensor with storage: not a subclass (DTensor, FakeTensor: their dispatch must see the op) and not
    a batched / wrapped tensor (``is_grads_batched`` hands backward one without storage)."""
    return type(x) in _PLAIN_TYPES and torch._C._has_storage(x)


def _direct(op, *args):
    """``op(*args)`` when no autograd node is wanted (the caller records its own, or none).

    In plain eager mode (:func:`_plain_eager`) the implementation is called straight away (the
    dispatcher's trip into a Python kernel costs more than a small call's work); otherwise the op
    runs below the autograd key (skipping ``register_autograd``'s Python kernel), so dispatch modes
    (``dropkit.guard``, selective checkpointing, FakeTensor) and tracers see it.
    """
    if _plain_eager() and _has_memory(args[0]):
        return _IMPLS[op](*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _linear_backward(ctx, grad):
    """The gradient of an x-linear op is the op on ``grad`` (with its own node when double backward wants one)."""
    return (apply_linear(ctx.op, grad, ctx.key, *ctx.args), None, None) + (None,) * len(ctx.args)


class _Linear(torch.autograd.Function):
    """``y = op(x, key, *args)`` with ``op`` linear in ``x``: backward and the tangent are ``op`` again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, op, key, *args):  # type: ignore[override]
        if has_functorch_or_fwd_ad(x):
            return op(x, key, *args)
        return _direct(op, x, key, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op, ctx.key, ctx.args = inputs[1], inputs[2], inputs[3:]  # a key of 32 bytes, nothing per element

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _linear_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, tangent, *_):  # type: ignore[override]
        return _Linear.apply(tangent, ctx.op, ctx.key, *ctx.args)


class _LinearEager(torch.autograd.Function):
    """:class:`_Linear` for eager autograd and forward AD outside torch.func: a ``ctx``-style Function.

    ``autograd.Function.apply`` binds the arguments with ``inspect.signature`` on every call of a
    Function that defines ``setup_context`` (needed only by the torch.func transforms): ~10 us,
    more than a small call's whole work, so eager calls take this class.
    """

    @staticmethod
    def forward(ctx, x, op, key, *args):  # type: ignore[override]
        ctx.op, ctx.key, ctx.args = op, key, args  # a key of 32 bytes, nothing per element
        if torch.autograd.forward_ad._current_level >= 0:
            return op(x, key, *args)
        return _direct(op, x, key, *args)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _linear_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, tangent, *_):  # type: ignore[override]
        return _LinearEager.apply(tangent, ctx.op, ctx.key, *ctx.args)


class _DropoutInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, key, *args):  # type: ignore[override]
        _direct(dropout_inplace_op, x, key, *args)
        ctx.mark_dirty(x)
        ctx.key, ctx.args = key, args
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return (apply_linear(dropout_op, grad, ctx.key, *ctx.args), None) + (None,) * len(ctx.args)

    @staticmethod
    def jvp(ctx, tangent, *_):  # type: ignore[override]
        dropout_inplace_op(tangent, ctx.key, *ctx.args)
        return tangent


def apply_linear(op, x: torch.Tensor, key: torch.Tensor, *args) -> torch.Tensor:
    """Call an x-linear op (dropout, gaussian_dropout, drop_block) the way the current mode needs."""
    if _is_compiling():
        return op(x, key, *args)
    if _functorch_wrapped(x) or _functorch_active():
        return _Linear.apply(x, op, key, *args)
    if (x.requires_grad and _grad_enabled()) or _forward_ad._current_level >= 0:
        return _LinearEager.apply(x, op, key, *args)
    if _plain_eager() and _has_memory(x):  # _direct's first branch, one call less (small calls)
        return _IMPLS[op](x, key, *args)  # type: ignore[return-value]  # the x-linear ops return a tensor
    return _direct(op, x, key, *args)


def dropout(
    x: torch.Tensor,
    key: torch.Tensor,
    p: float,
    scale: float,
    noise_shape: Sequence[int] | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` through ``dropkit::dropout`` (validated arguments expected)."""
    ns = None if noise_shape is None else list(noise_shape)
    return apply_linear(dropout_op, x, key, p, scale, ns, offset)


def refuse_shape_trace(what: str) -> None:
    """Refuse a training-mode ``torch.jit.trace`` of a variant whose noise is shaped by the input.

    A trace records an input's sizes as constants, so the traced noise would keep the traced shape and, at
    another batch size, broadcast against the input (a wrong result, or a wrong output shape) instead of
    failing. Element-wise dropout and Gaussian dropout take their shape from ``x`` inside the op and trace
    correctly; eval mode traces every variant (nothing is drawn)."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            f"torch.jit.trace (and the TorchScript-based torch.onnx.export) cannot record {what} in training mode: "
            "its noise is shaped by the input, which a "
            "trace records as constants (another batch size would reuse the traced shape). Use torch.compile or "
            "torch.export (a fresh mask per call, at any shape), or trace in eval mode / after "
            "dropkit.guard.freeze(model)"
        )


def check_inplace(x: torch.Tensor) -> None:
    """Raise torch's in-place error before any data is written (not after, as a failed ``mark_dirty`` would)."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return
    base = x._base if x._is_view() and x._base is not None else x
    if base.is_leaf and base.requires_grad:
        what = "a view of a leaf Variable" if x._is_view() else "a leaf Variable"
        raise RuntimeError(
            f"{what} that requires grad is being used in an in-place operation (dropkit checked this "
            "before writing; pass inplace=False)"
        )


def dropout_(
    x: torch.Tensor,
    key: torch.Tensor,
    p: float,
    scale: float,
    noise_shape: Sequence[int] | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """In-place :func:`dropout`; returns ``x``."""
    ns = None if noise_shape is None else list(noise_shape)
    check_inplace(x)
    if torch.compiler.is_compiling():
        if x.requires_grad:
            return x.copy_(dropout_op(x, key, p, scale, ns, offset))
        dropout_inplace_op(x, key, p, scale, ns, offset)
        return x
    if _functorch_active() or _functorch_wrapped(x):  # torch.func: the out-of-place op (its transforms), copied in
        return x.copy_(apply_linear(dropout_op, x, key, p, scale, ns, offset))
    if (torch.is_grad_enabled() and x.requires_grad) or has_functorch_or_fwd_ad(x):
        return _DropoutInplace.apply(x, key, p, scale, ns, offset)
    _direct(dropout_inplace_op, x, key, p, scale, ns, offset)
    return x


# ---------------------------------------------------------------------------
# Inductor: on CUDA the ops decompose into their Triton kernels inside compiled graphs
# ---------------------------------------------------------------------------
# AOTAutograd traces a graph under FunctionalTensorMode; there an op served by the Triton kernels becomes
# its kernel launches (dropkit.kernels.triton.graph: ``torch.library.wrap_triton``, the key read on the
# device), so Inductor compiles them into the graph's code; the composite ops (word dropout, DropBlock,
# noise_shape dropout) become torch ops over those. torch.export keeps the ops whole, as it keeps
# ``torch.library.triton_op``s (decompose_custom_triton_ops is off there); so do CPU tensors (the C kernel
# is the op's implementation) and ``DROPKIT_TRITON_GRAPH=0``.
def _graph_launches(device: torch.device, types):
    if not getattr(torch._functorch.config, "decompose_custom_triton_ops", False):  # off under torch.export
        return None
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    if any(not issubclass(t, FakeTensor) and t not in (torch.Tensor, FunctionalTensor) for t in types):
        return None  # a tensor subclass (DTensor, ...) handles the op itself
    return kernels.graph_kernels(device)


def _graph_key(key: torch.Tensor) -> torch.Tensor:
    if key.dtype != torch.int64 or tuple(key.shape) != (4,) or key.device.type != "cpu":
        raise ValueError(f"{_KEY_CHECK}; received {key.dtype} {tuple(key.shape)} on {key.device}")
    return key


def _keep_mask_graph(g, key, shape, p, offset, device):
    n = math.prod(shape)
    return g.keep_mask(_graph_key(key), n, float(p), _check_offset(offset), torch.device(device)).view(tuple(shape))


def _uniform_graph(g, key, shape, offset, dtype, device):
    n = math.prod(shape)
    return g.uniform(_graph_key(key), n, _check_offset(offset), torch.device(device), dtype).view(tuple(shape))


def _normal_graph(g, key, shape, offset, dtype, device):
    n = math.prod(shape)
    return g.normal(_graph_key(key), n, _check_offset(offset), torch.device(device), dtype).view(tuple(shape))


def _dropout_graph(g, x, key, p, scale, noise_shape, offset):
    offset = _check_offset(offset)
    if noise_shape is not None:  # the mask of noise_shape (keep_mask: decomposed in turn), broadcast
        cdt = rng.compute_dtype(x.dtype)
        return _into_layout(x, x.to(cdt) * _mask_factor(_graph_key(key), p, scale, noise_shape, offset, x.device, cdt))
    return _into_layout(x, g.dropout_mul(x.contiguous(), _graph_key(key), p, scale, offset))


def _dropout_inplace_graph(g, x, key, p, scale, noise_shape, offset):
    x.copy_(_dropout_graph(g, x, key, p, scale, noise_shape, offset))


def _gaussian_graph(g, x, key, sigma, offset):
    return _into_layout(x, g.gaussian_mul(x, _graph_key(key), sigma, _check_offset(offset)))


def _fused_graph(g, x, bias, residual, key, p, scale, activation, offset):
    bias = bias.contiguous() if bias is not None else None
    args = (_graph_key(key), activation, False, p, scale, _check_offset(offset))
    return g.fused_bias_act_dropout_add(residual.contiguous(), x.contiguous(), bias, *args)


def _fused_bw_graph(g, grad, x, bias, key, p, scale, activation, offset):
    bias = bias.contiguous() if bias is not None else None
    args = (_graph_key(key), activation, True, p, scale, _check_offset(offset))
    return g.fused_bias_act_dropout_add(grad.contiguous(), x.contiguous(), bias, *args)


def _embedding_graph(g, x, key, indices, num_embeddings, p, scale):
    cdt = rng.compute_dtype(x.dtype)  # whole-row mask: keep_mask decomposed in turn
    return _into_layout(
        x, x.to(cdt) * _embedding_factor(_graph_key(key), indices, num_embeddings, p, scale, x.device, cdt)
    )


def _drop_block_graph(g, x, key, gamma, block_size, seed_shape, dims, offset):
    return _drop_block_impl(x, _graph_key(key), gamma, block_size, seed_shape, dims, offset)  # torch ops over uniform


def _register_graph(op, decompose, device_of: Callable) -> None:
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def rule(mode, func, types, args, kwargs):
        g = _graph_launches(torch.device(device_of(*args)), types)
        if g is None:
            return mode.__torch_dispatch__(func, types, args, kwargs)
        with mode:
            return decompose(g, *args, **kwargs)

    torch.library.register_torch_dispatch(op, FunctionalTensorMode, rule, lib=_LIB)


def _device_arg(*args):
    return args[-1]


def _first_device(x, *args):
    return x.device


_register_graph(keep_mask_op, _keep_mask_graph, _device_arg)
_register_graph(uniform_op, _uniform_graph, _device_arg)
_register_graph(normal_op, _normal_graph, _device_arg)
_register_graph(dropout_op, _dropout_graph, _first_device)
_register_graph(dropout_inplace_op, _dropout_inplace_graph, _first_device)
_register_graph(gaussian_dropout_op, _gaussian_graph, _first_device)
_register_graph(fused_op, _fused_graph, _first_device)
_register_graph(fused_backward_op, _fused_bw_graph, _first_device)
_register_graph(embedding_dropout_op, _embedding_graph, _first_device)
_register_graph(drop_block_op, _drop_block_graph, _first_device)
