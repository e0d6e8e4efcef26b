"""Graph decompositions: inside a compiled graph the CUDA ops become Triton launches, the CPU composites torch ops.

AOTAutograd traces a graph under ``FunctionalTensorMode``; there an op served by the Triton kernels becomes
its kernel launches (:mod:`dropkit.kernels.triton.graph`: ``torch.library.wrap_triton``, the key read on the
device), so Inductor compiles them into the graph's code; the composite ops (word dropout, DropBlock,
noise_shape dropout) become torch ops over those. On CPU tensors the composite ops become torch ops over the
registered ``keep_mask`` / ``uniform`` ops (Inductor fuses the rest with its neighbours); the element-wise ops
stay whole (the C kernel is their implementation). torch.export keeps every op whole, as it keeps
``torch.library.triton_op``s (``decompose_custom_triton_ops`` is off there); so does ``DROPKIT_TRITON_GRAPH=0``
on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# torch.library.register_torch_dispatch needs the FunctionalTensorMode class, and the rule must tell torch's
# own FakeTensor / FunctionalTensor from user subclasses: neither class has a public home.
from torch._subclasses import FakeTensor, functional_tensor  # no public API: see the comment above

from dropkit import kernels, rng
from dropkit.ops.kernels import drop_block_factor, embedding_factor, into_layout, mask_factor
from dropkit.ops.schemas import KEY_CHECK, LIB, OPS

FunctionalTensor, FunctionalTensorMode = functional_tensor.FunctionalTensor, functional_tensor.FunctionalTensorMode
#: torch.compiler.is_exporting (torch >= 2.5; before it there are no graph launches: torch.library.wrap_triton is 2.6)
_exporting = getattr(torch.compiler, "is_exporting", lambda: True)


def _decomposable(types) -> bool:
    """Whether a traced op may be decomposed: not under torch.export (which keeps the ops whole, as it keeps
    triton_op: decompose_custom_triton_ops is off there), and no tensor subclass (DTensor, ...) handles it itself."""
    return not _exporting() and all(issubclass(t, FakeTensor) or t in (torch.Tensor, FunctionalTensor) for t in types)


def _graph_launches(device: torch.device, types):
    return kernels.graph_kernels(device) if _decomposable(types) else None


def _offset(offset: int) -> int:
    """rng.check_elements' rule at trace time (the element count may be symbolic here; the kernels check it)."""
    return rng.check_elements(0, offset)[1]


def _graph_key(key: torch.Tensor) -> torch.Tensor:
    if key.dtype != torch.int64 or tuple(key.shape) != (4,) or key.device.type != "cpu":
        raise ValueError(f"{KEY_CHECK}; received {key.dtype} {tuple(key.shape)} on {key.device}")
    return key


def _keep_mask_graph(g, key, shape, p, offset, device):
    n = math.prod(shape)
    return g.keep_mask(_graph_key(key), n, float(p), _offset(offset), torch.device(device)).view(tuple(shape))


def _uniform_graph(g, key, shape, offset, dtype, device):
    n = math.prod(shape)
    return g.uniform(_graph_key(key), n, _offset(offset), torch.device(device), dtype).view(tuple(shape))


def _normal_graph(g, key, shape, offset, dtype, device):
    n = math.prod(shape)
    return g.normal(_graph_key(key), n, _offset(offset), torch.device(device), dtype).view(tuple(shape))


def _dropout_graph(g, x, key, p, scale, noise_shape, offset):
    offset = _offset(offset)
    if noise_shape is not None:  # the mask of noise_shape (keep_mask: decomposed in turn), broadcast
        cdt = rng.compute_dtype(x.dtype)
        return into_layout(x, x.to(cdt) * mask_factor(_graph_key(key), p, scale, noise_shape, offset, x.device, cdt))
    return into_layout(x, g.dropout_mul(x.contiguous(), _graph_key(key), p, scale, offset))


def _dropout_inplace_graph(g, x, key, p, scale, noise_shape, offset):
    x.copy_(_dropout_graph(g, x, key, p, scale, noise_shape, offset))


def _gaussian_graph(g, x, key, sigma, offset):
    return into_layout(x, g.gaussian_mul(x, _graph_key(key), sigma, _offset(offset)))


def _fused_graph(g, x, bias, residual, key, p, scale, activation, offset):
    bias = bias.contiguous() if bias is not None else None
    args = (_graph_key(key), activation, False, p, scale, _offset(offset))
    return g.fused_bias_act_dropout_add(residual.contiguous(), x.contiguous(), bias, *args)


def _fused_bw_graph(g, grad, x, bias, key, p, scale, activation, offset):
    bias = bias.contiguous() if bias is not None else None
    args = (_graph_key(key), activation, True, p, scale, _offset(offset))
    return g.fused_bias_act_dropout_add(grad.contiguous(), x.contiguous(), bias, *args)


def _embedding_graph(g, x, key, indices, num_embeddings, p, scale):
    cdt = rng.compute_dtype(x.dtype)  # whole-row mask: keep_mask decomposed in turn
    return into_layout(
        x, x.to(cdt) * embedding_factor(_graph_key(key), indices, num_embeddings, p, scale, x.device, cdt)
    )


def _drop_block_graph(g, x, key, gamma, block_size, seed_shape, dims, offset):
    cdt = rng.compute_dtype(x.dtype)  # torch ops over uniform (decomposed in turn)
    f = drop_block_factor(_graph_key(key), gamma, block_size, seed_shape, dims, _offset(offset), x.device, cdt)
    return into_layout(x, x.to(cdt) * f)


def _cpu_composite(func, device: torch.device, types, args) -> bool:
    """A composite op on CPU tensors in a compiled graph: its torch ops go to Inductor (which fuses them with their
    neighbours), its random draw (``keep_mask`` / ``uniform``) stays the registered op. Export keeps it whole."""
    if device.type != "cpu" or not _decomposable(types):
        return False
    if func in _COMPOSITE:
        return True
    return func in _MASKED and args[4] is not None  # dropout / dropout_ with a noise_shape


def _register_graph(op, decompose, device_of: Callable) -> None:
    def rule(mode, func, types, args, kwargs):
        device = torch.device(device_of(*args))
        g = _graph_launches(device, types)
        if g is None and not _cpu_composite(func, device, types, args):
            return mode.__torch_dispatch__(func, types, args, kwargs)
        with mode:
            return decompose(g, *args, **kwargs)

    torch.library.register_torch_dispatch(op, FunctionalTensorMode, rule, lib=LIB)


def _device_arg(*args):
    return args[-1]


def _first_device(x, *args):
    return x.device


_DECOMPOSITIONS = {
    "keep_mask": (_keep_mask_graph, _device_arg),
    "uniform": (_uniform_graph, _device_arg),
    "normal": (_normal_graph, _device_arg),
    "dropout": (_dropout_graph, _first_device),
    "dropout_": (_dropout_inplace_graph, _first_device),
    "gaussian_dropout": (_gaussian_graph, _first_device),
    "fused_bias_act_dropout_add": (_fused_graph, _first_device),
    "fused_bias_act_dropout_add_backward": (_fused_bw_graph, _first_device),
    "embedding_dropout": (_embedding_graph, _first_device),
    "drop_block": (_drop_block_graph, _first_device),
}
_COMPOSITE = (OPS["drop_block"], OPS["embedding_dropout"])
_MASKED = (OPS["dropout"], OPS["dropout_"])
for _name, (_decompose, _device_of) in _DECOMPOSITIONS.items():
    _register_graph(OPS[_name], _decompose, _device_of)
