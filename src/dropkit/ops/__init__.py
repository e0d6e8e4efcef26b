"""dropkit's registered PyTorch ops: the ``torch.ops.dropkit`` namespace.

Every random primitive of dropkit is a ``torch.library`` op, so torch.compile, torch.export,
``torch.func``, activation checkpointing, dispatch modes and tensor subclasses see it as one op
with a schema, on every call (eager included: nothing calls an implementation around the dispatcher):

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

The package, by concern (adding an op: a row in ``schemas``, its implementation in ``kernels``):

* :mod:`dropkit.ops.schemas`: the schemas and the fake (meta / FakeTensor) kernels;
* :mod:`dropkit.ops.kernels`: the implementations over a :class:`dropkit.kernels.Backend` and one
  registration per device (CPU: the C kernel, CUDA: Triton, others: the reference), :func:`backend_info`;
* :mod:`dropkit.ops.autograd`: one ``Autograd`` kernel per differentiable op (backward and forward-mode AD
  regenerate the noise from the key) and the vmap rules;
* :mod:`dropkit.ops.graph`: the decompositions inside compiled graphs (CUDA: Triton launches; CPU: composites).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit.ops import graph  # noqa: F401 - registers the graph decompositions
from dropkit.ops.autograd import apply_fused, apply_linear, dropout_inplace
from dropkit.ops.kernels import backend_info, refuse_inference_write
from dropkit.ops.schemas import OPS

__all__ = [
    "OPS",
    "backend_info",
    "apply_linear",
    "apply_fused",
    "dropout",
    "dropout_",
    "check_inplace",
    "refuse_shape_trace",
    "next_key_op",
    "keep_mask_op",
    "uniform_op",
    "normal_op",
    "dropout_op",
    "dropout_inplace_op",
    "gaussian_dropout_op",
    "drop_block_op",
    "embedding_dropout_op",
    "fused_op",
    "fused_backward_op",
]

next_key_op = OPS["next_key"]
keep_mask_op = OPS["keep_mask"]
uniform_op = OPS["uniform"]
normal_op = OPS["normal"]
dropout_op = OPS["dropout"]
dropout_inplace_op = OPS["dropout_"]
gaussian_dropout_op = OPS["gaussian_dropout"]
drop_block_op = OPS["drop_block"]
embedding_dropout_op = OPS["embedding_dropout"]
fused_op = OPS["fused_bias_act_dropout_add"]
fused_backward_op = OPS["fused_bias_act_dropout_add_backward"]


def dropout(
    x: torch.Tensor,
    key: torch.Tensor,
    p: float,
    scale: float,
    noise_shape: Sequence[int] | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` through ``dropkit::dropout`` (validated arguments expected)."""
    return apply_linear(dropout_op, x, key, p, scale, None if noise_shape is None else list(noise_shape), offset)


def dropout_(
    x: torch.Tensor,
    key: torch.Tensor,
    p: float,
    scale: float,
    noise_shape: Sequence[int] | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """In-place :func:`dropout` through ``dropkit::dropout_``; returns ``x``."""
    check_inplace(x)
    return dropout_inplace(x, key, p, scale, None if noise_shape is None else list(noise_shape), offset)


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
    if torch.compiler.is_compiling():  # Dynamo cannot trace is_inference(); the compiled op's kernel checks it
        return
    refuse_inference_write(x)
    if not torch.is_grad_enabled():
        return
    base = x._base if x._is_view() and x._base is not None else x
    if base.is_leaf and base.requires_grad:
        what = "a view of a leaf Variable" if x._is_view() else "a leaf Variable"
        raise RuntimeError(
            f"{what} that requires grad is being used in an in-place operation (dropkit checked this "
            "before writing; pass inplace=False)"
        )
