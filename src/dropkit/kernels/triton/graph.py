"""Graph launches of the Triton kernels: what dropkit's CUDA ops become inside a compiled graph.

When AOTAutograd traces a graph (``torch.compile``), each CUDA op of ``torch.ops.dropkit`` with a Triton
kernel decomposes into the functions here (:mod:`dropkit.ops` registers the rule for
``FunctionalTensorMode``, as ``torch.library.triton_op`` does for its ops). They launch the kernels through
``torch.library.wrap_triton``, so each launch is a ``triton_kernel_wrapper_functional`` node of the graph
that Inductor compiles into the graph's code beside its own kernels, instead of an opaque call.

In a graph the key is a tensor computed by the graph (a seeded stream's ``next_key`` or torch's generator),
whose values are unknown while tracing: these launches copy the int64 key ``(4,)`` to the kernel's device
and the kernels read it there (``KEY_IN_MEMORY``). Masks and values are the eager launches' bits: the same
kernels, and no result depends on the compile options (``_kernels._mad``).

``torch.export`` keeps the ops whole (as it keeps ``triton_op``s, :mod:`dropkit.ops.graph`): an exported
program names ``dropkit::dropout``, not a Triton kernel. Set ``DROPKIT_TRITON_GRAPH=0`` to keep the ops whole in compiled graphs too (each is then an opaque
call into the eager launch).
"""

from __future__ import annotations

import os

import torch

from dropkit.kernels import triton as tk

__all__ = [
    "enabled",
    "keep_mask",
    "dropout_mul",
    "fused_bias_act_dropout_add",
    "uniform",
    "normal",
    "gaussian_mul",
]


def enabled() -> bool:
    """Graph launches are on unless ``DROPKIT_TRITON_GRAPH`` is ``0`` / ``false`` / ``off`` / ``no``, or this
    torch predates them (``torch.library.wrap_triton``: torch 2.6)."""
    if not hasattr(torch.library, "wrap_triton"):
        return False
    return os.environ.get("DROPKIT_TRITON_GRAPH", "1").strip().lower() not in ("0", "false", "off", "no")


def _on_device(key: torch.Tensor, device: torch.device) -> torch.Tensor:
    return key.to(device)


def keep_mask(key: torch.Tensor, n, p: float, offset: int, device: torch.device) -> torch.Tensor:
    """1-D ``bool`` keep mask of ``n`` elements on ``device`` (:func:`dropkit.kernels.keep_mask`), key a tensor."""
    return tk._keep_mask(n, p, _on_device(key, device), offset, device)


def dropout_mul(x: torch.Tensor, key: torch.Tensor, p: float, scale: float, offset: int) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` for contiguous ``x`` (:func:`dropkit.kernels.dropout_mul`), key a tensor."""
    return tk._dropout_mul(x, p, scale, _on_device(key, x.device), offset)


def fused_bias_act_dropout_add(
    a: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    key: torch.Tensor,
    activation: str,
    backward: bool,
    p: float,
    scale: float,
    offset: int,
) -> torch.Tensor:
    """One pass of the fused op over contiguous tensors (:func:`dropkit.kernels.fused_bias_act_dropout_add`)."""
    return tk._fused(a, x, bias, activation, backward, p, scale, _on_device(key, x.device), offset)


def uniform(key: torch.Tensor, n, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1-D uniforms (:func:`dropkit.kernels.uniform`), key a tensor."""
    return tk._uniform(n, _on_device(key, device), offset, device, dtype)


def normal(key: torch.Tensor, n, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1-D normals (:func:`dropkit.kernels.normal`), key a tensor."""
    return tk._normal(n, _on_device(key, device), offset, device, dtype)


def gaussian_mul(x: torch.Tensor, key: torch.Tensor, sigma: float, offset: int) -> torch.Tensor:
    """``x * (1 + sigma * z)`` (:func:`dropkit.kernels.gaussian_mul`), key a tensor; contiguous result."""
    return tk._gaussian_mul(x, sigma, _on_device(key, x.device), offset)
