"""The ops' implementations, written once over a :class:`dropkit.kernels.Backend`, and one registration per device.

At import every op gets, through ``torch.library``:

* ``CPU``: the compiled C kernel (:mod:`dropkit.kernels.cpu`), or the reference where its library is not
  available (decided once, here; :func:`backend_info` says which and why);
* ``CUDA``: the Triton kernels where Triton is installed, else the reference;
* ``CompositeExplicitAutograd``: the portable reference, for every other device (a backend key wins
  over it, and the fake kernel of :mod:`dropkit.ops.schemas` serves ``Meta``).

The dispatcher then chooses: it resolves negative and conjugate bits before a kernel sees its input,
sends meta tensors and FakeTensors to the fake kernel, and lets modes and subclasses see every call.
``keep_mask``, ``uniform`` and ``normal`` take no input on the device (their one tensor is the CPU key):
the dispatcher sees CPU, and their ``device`` argument picks that device's registered backend, as torch's
``BackendSelect`` does for its factory functions.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as tnf

from dropkit import kernels, rng
from dropkit._validation import FLOAT_DTYPES
from dropkit.kernels import Backend
from dropkit.ops.schemas import LIB, OPS, key_ints
from dropkit.seed import next_key_impl

__all__ = ["IMPLS", "REGISTERED", "backend_info", "into_layout", "mask_factor", "gaussian_factor",
           "drop_block_factor", "embedding_factor", "window_max"]  # fmt: skip

keep_mask_op, uniform_op, normal_op = OPS["keep_mask"], OPS["uniform"], OPS["normal"]


# ---------------------------------------------------------------------------
# Shared pieces (also used by the vmap rules and the graph decompositions)
# ---------------------------------------------------------------------------
def into_layout(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` (values for ``x``'s shape, any dtype) rounded to ``x.dtype`` under the 16-bit NaN rule
    (:func:`dropkit.kernels.round_to`) and laid out in ``x``'s memory format, as ``torch.empty_like(x)``."""
    if y.dtype != x.dtype:
        y = kernels.round_to(y, x.dtype)
    if y.is_contiguous() and x.is_contiguous():
        return y
    if y.stride() == torch.empty_like(x).stride():
        return y
    return torch.empty_like(x).copy_(y)


def mask_factor(key, p, scale, shape, offset, device, dtype):
    """``keep ? scale : 0`` in ``dtype``, shaped ``shape`` (exact: 0 or scale rounded to dtype)."""
    keep = keep_mask_op(key, list(shape), p, offset, device)
    return keep.to(dtype) * scale


def gaussian_factor(key, sigma, shape, offset, device, dtype):
    """``1 + sigma * z`` in ``dtype`` (float32: sigma rounded to float32 once), the factor of gaussian_dropout."""
    return normal_op(key, list(shape), offset, dtype, device).mul_(sigma).add_(1.0)


def window_max(t: torch.Tensor, b: int, dim: int) -> torch.Tensor:
    """``out[j] = max(t[j : j + b])`` along ``dim`` (length ``L - b + 1``): windows doubled by shifted maxima,
    ``ceil(log2 b)`` element-wise passes (a b-wide max pool costs b comparisons per output on CPU)."""
    w = 1
    while w < b:
        step = min(w, b - w)  # windows of w at j and j + step cover j .. j + step + w - 1
        n = t.shape[dim] - step
        t = torch.maximum(t.narrow(dim, 0, n), t.narrow(dim, step, n))
        w += step
    return t


def drop_block_factor(key, gamma, block_size, seed_shape, dims, offset, device, dtype):
    """Blocks grown from Bernoulli(gamma) starts on the valid grid; survivors rescaled per sample."""
    u = uniform_op(key, list(seed_shape), offset, torch.float64, device)
    starts = (u < gamma).to(dtype)
    b = block_size
    covered = tnf.pad(starts, [b - 1] * (2 * dims))  # a start at s covers s .. s + b - 1
    for d in range(-dims, 0):  # max_pool(kernel b, stride 1), separably: the same values, far fewer operations
        covered = window_max(covered, b, d)
    keep = 1.0 - covered
    batched = keep.dim() == dims + 2
    sum_dims = tuple(range(1, keep.dim())) if batched else tuple(range(keep.dim()))
    kept = keep.sum(dim=sum_dims, keepdim=True)
    per_sample = math.prod(keep.shape[1:]) if batched else keep.numel()
    scale = torch.where(kept > 0, per_sample / kept.clamp(min=1.0), torch.zeros_like(kept))
    return keep * scale


def embedding_factor(key, indices, num_embeddings, p, scale, device, dtype):
    return mask_factor(key, p, scale, [num_embeddings], 0, device, dtype)[indices].unsqueeze(-1)


# ---------------------------------------------------------------------------
# The implementations, once over a backend ``be``
# ---------------------------------------------------------------------------
def _factory_backend(be: Backend, device) -> Backend | None:
    """The backend of a factory op's ``device`` (None: a meta device, whose result is the fake one)."""
    device = torch.device(device)
    if device.type == "meta":
        return None
    return be if device.type == "cpu" else kernels.for_device(device)


def _keep_mask(be: Backend, key, shape, p, offset, device):
    seed, stream = key_ints(key)
    target = _factory_backend(be, device)
    if target is None:
        return torch.empty(tuple(shape), dtype=torch.bool, device=device)
    n = math.prod(shape)
    return target.keep_mask(n, float(p), seed, stream, offset, torch.device(device)).view(tuple(shape))


def _uniform(be: Backend, key, shape, offset, dtype, device):
    seed, stream = key_ints(key)
    target = _factory_backend(be, device)
    if target is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    n = math.prod(shape)
    return target.uniform(n, seed, stream, offset, torch.device(device), dtype).view(tuple(shape))


def _normal(be: Backend, key, shape, offset, dtype, device):
    seed, stream = key_ints(key)
    target = _factory_backend(be, device)
    if target is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    n = math.prod(shape)
    return target.normal(n, seed, stream, offset, torch.device(device), dtype).view(tuple(shape))


def _check_floating(x: torch.Tensor, op: str) -> None:
    """The element-wise ops take floating tensors (the C++ registration checks the same, with the same words)."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"dropkit::{op} takes a floating tensor (float16, bfloat16, float32, float64); received {x.dtype}"
        )


def _dropout(be: Backend, x, key, p, scale, noise_shape, offset):
    _check_floating(x, "dropout")
    seed, stream = key_ints(key)
    if noise_shape is None:
        if x.is_contiguous():  # the common case: the kernel's output already has x's layout
            return be.dropout_mul(x, p, scale, seed, stream, offset)
        return into_layout(x, be.dropout_mul(x.contiguous(), p, scale, seed, stream, offset))
    cdt = rng.compute_dtype(x.dtype)
    return into_layout(x, x.to(cdt) * mask_factor(key, p, scale, noise_shape, offset, x.device, cdt))


def refuse_inference_write(x: torch.Tensor) -> None:
    """torch's version-counter error for an in-place write to an inference tensor outside inference mode, raised
    before anything is written (dk_torch.cpp checks the same, with the same words)."""
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Inplace update to inference tensor outside InferenceMode is not allowed. You can make a clone to get a "
            "normal tensor before doing inplace update."
        )


def _dropout_inplace(be: Backend, x, key, p, scale, noise_shape, offset):
    _check_floating(x, "dropout")
    refuse_inference_write(x)
    if noise_shape is None and x.is_contiguous():
        seed, stream = key_ints(key)
        be.dropout_mul(x, p, scale, seed, stream, offset, out=x)
        torch.autograd.graph.increment_version(x)  # the kernel wrote through the data pointer
    else:
        x.copy_(_dropout(be, x, key, p, scale, noise_shape, offset))


def _gaussian_dropout(be: Backend, x, key, sigma, offset):
    _check_floating(x, "gaussian_dropout")
    # one pass over the whole tensor; the same bits as x * gaussian_factor(...)
    seed, stream = key_ints(key)
    return into_layout(x, be.gaussian_mul(x, sigma, seed, stream, offset))


def _drop_block(be: Backend, x, key, gamma, block_size, seed_shape, dims, offset):
    cdt = rng.compute_dtype(x.dtype)
    f = drop_block_factor(key, gamma, block_size, seed_shape, dims, offset, x.device, cdt)
    return into_layout(x, x.to(cdt) * f)


def _embedding_dropout(be: Backend, x, key, indices, num_embeddings, p, scale):
    cdt = rng.compute_dtype(x.dtype)
    return into_layout(x, x.to(cdt) * embedding_factor(key, indices, num_embeddings, p, scale, x.device, cdt))


def _fused_run(be: Backend, a, x, bias, key, p, scale, activation, offset, backward):
    """Forward (``a`` = residual): ``a + act(h) * f``; backward (``a`` = grad): ``a * f * act'(h)``; ``h = x + bias``."""
    seed, stream = key_ints(key)
    bias = bias.contiguous() if bias is not None else None
    return be.fused_bias_act_dropout_add(
        a.contiguous(), x.contiguous(), bias, activation, backward, p, scale, seed, stream, offset
    )


def _fused(be: Backend, x, bias, residual, key, p, scale, activation, offset):
    return _fused_run(be, residual, x, bias, key, p, scale, activation, offset, False)


def _fused_backward(be: Backend, grad, x, bias, key, p, scale, activation, offset):
    return _fused_run(be, grad, x, bias, key, p, scale, activation, offset, True)


#: op name -> its implementation over a backend (``next_key`` has one implementation for every device).
IMPLS = {
    "keep_mask": _keep_mask,
    "uniform": _uniform,
    "normal": _normal,
    "dropout": _dropout,
    "dropout_": _dropout_inplace,
    "gaussian_dropout": _gaussian_dropout,
    "drop_block": _drop_block,
    "embedding_dropout": _embedding_dropout,
    "fused_bias_act_dropout_add": _fused,
    "fused_bias_act_dropout_add_backward": _fused_backward,
}


# ---------------------------------------------------------------------------
# One registration per device
# ---------------------------------------------------------------------------
def _bind(impl, be: Backend):
    return functools.partial(impl, be)  # a C-level call: one Python frame less than a closure per call


#: dispatch key -> the backend registered there (read by :func:`backend_info`).
REGISTERED: dict[str, Backend] = {
    "CPU": kernels.for_device("cpu"),
    "CUDA": kernels.for_device("cuda"),
    "CompositeExplicitAutograd": kernels.backend("reference"),
}


def _cpp_registered() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(CPU ops, Autograd ops)`` the C++ registration serves (:mod:`dropkit.kernels.cpu._torch`): where the
    compiled C kernel is the CPU backend and the C++ library builds and loads; else none (Python kernels serve)."""
    if REGISTERED["CPU"].module is kernels.reference:
        return (), ()
    from dropkit.kernels.cpu import _torch, parallel_threshold

    ops = _torch.register(parallel_threshold)
    return ops, (_torch.AUTOGRAD_OPS if ops else ())


#: CPP_REGISTERED: the ops whose CPU kernel is registered from C++ (the same bits as their Python kernel, without
#: its trip). CPP_AUTOGRAD: the ops whose ``Autograd`` kernel (every device) is registered from C++ with them; where
#: empty, :mod:`dropkit.ops.autograd` registers its Python kernels.
CPP_REGISTERED, CPP_AUTOGRAD = _cpp_registered()

for _key, _be in REGISTERED.items():
    for _name, _impl in IMPLS.items():
        if not (_key == "CPU" and _name in CPP_REGISTERED):
            LIB.impl(_name, _bind(_impl, _be), _key)
LIB.impl("next_key", next_key_impl, "CompositeExplicitAutograd")


def _dropout_inplace_negative(x, key, *args):
    """``dropout_`` on a tensor whose negative bit is set: the out-of-place op on its resolved values, copied
    back (``copy_`` honours the bit). The dispatcher's Negative fallback cannot serve an in-place op that
    returns nothing (it hands back the op's return value); every other op takes the fallback."""
    x.copy_(OPS["dropout"](x.resolve_neg(), key, *args))


LIB.impl("dropout_", _dropout_inplace_negative, "Negative")

_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}


_PYTHON_REGISTRATION = "Python: torch.library kernels"


def backend_info(device: torch.device | str = "cpu") -> dict[str, str]:
    """Which backend the ``dropkit::`` ops have registered for ``device``, how, and why:
    ``{"backend": ..., "reason": ..., "registration": ...}``.

    ``backend`` is ``"cpu-<isa>"`` (the compiled kernel), ``"triton"``, or ``"reference"``; ``reason`` says why
    (for the reference on CPU: why the compiled library is not available). ``registration`` says how the
    kernels reach the dispatcher: from C++ for ``dropout``, ``dropout_`` and ``gaussian_dropout`` on CPU and for
    the ``Autograd`` kernels of :data:`CPP_AUTOGRAD` where :mod:`dropkit.kernels.cpu._torch` built and loaded
    (else why not), from Python for everything else.

    Example:
        >>> dropkit.backend_info("cpu")["registration"]
        'C++ for dropout, dropout_, gaussian_dropout on CPU and the Autograd kernels of dropout, ... (C++ registration from ...); Python for the other kernels'
    """
    device = torch.device(device)
    be = REGISTERED[_DISPATCH_KEY.get(device.type, "CompositeExplicitAutograd")]
    registration = _PYTHON_REGISTRATION
    if device.type == "cpu" and be.module is not kernels.reference:
        from dropkit.kernels import cpu
        from dropkit.kernels.cpu import _torch

        name, reason = cpu.status()  # the ISA in use now (dropkit.kernels.cpu.set_isa may change it)
        ops, how = _torch.status()
        if ops:
            registration = (
                f"C++ for {', '.join(ops)} on CPU and the Autograd kernels of {', '.join(CPP_AUTOGRAD)} ({how}); "
                "Python for the other kernels"
            )
        else:
            registration = f"{_PYTHON_REGISTRATION} (C++ registration not in use: {how})"
    elif be.module is kernels.reference and device.type not in _DISPATCH_KEY:
        name, reason = "reference", f"no fast backend for device type {device.type!r}; torch integer ops"
    elif be.name == "triton":
        from dropkit.kernels import triton as tk

        name, reason = "triton", tk.status()[1]
    else:
        name, reason = be.name, be.reason
    return {"backend": name, "reason": reason, "registration": registration}
