"""Triton backend: the mask contract of :mod:`dropkit.rng` as GPU kernels.

Philox4x32-10 is written out in Triton (ten rounds, ``tl.umulhi`` for the high halves of
the 32x32-bit products), so a CUDA tensor gets exactly the mask bits of the CPU and
NumPy implementations for the same ``(seed, stream, offset)``: keep iff the 16-bit lane
``u >= threshold(p)``, i.e. the keep probability is exact to ``2**-16`` (no 8-bit
thresholds). Each Philox call feeds eight mask elements.

The module imports without Triton; the kernels (``_kernels.py``) load on first use:

* CUDA tensors run the compiled kernels;
* with ``TRITON_INTERPRET=1`` in the environment the kernels run under Triton's
  interpreter, which also accepts CPU tensors. That is how CI checks the kernels
  bit for bit against :mod:`dropkit.kernels.reference` without a GPU (the tests register the
  ops' implementations over this backend for CPU tensors in a scoped ``torch.library`` registration).

:mod:`dropkit.ops` registers this backend as the ``CUDA`` kernel of every ``dropkit::`` op when Triton is
installed (decided once, at import); :func:`dropkit.backend_info` reports it.

Besides the two primitives every backend provides (:func:`keep_mask`,
:func:`dropout_mul`) it offers the fused bias + activation + dropout + residual kernels
behind :func:`dropkit.functional.fused_bias_act_dropout_add`, the uniforms (:func:`uniform`) and the
normal samples of the normal contract v2 (:func:`normal`, :func:`gaussian_mul`): Box-Muller in exactly
rounded float32 operations, so a CUDA tensor gets the bits of the CPU kernel and of NumPy.

Inside a compiled graph the same kernels are launched through ``torch.library.wrap_triton`` with the
key on the device (:mod:`dropkit.kernels.triton.graph`), so Inductor compiles them into the graph.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import struct
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from dropkit.rng import threshold

__all__ = [
    "available",
    "status",
    "keep_mask",
    "dropout_mul",
    "fused_bias_act_dropout_add",
    "uniform",
    "normal",
    "gaussian_mul",
    "interpreter_enabled",
    "ACTIVATIONS",
]


#: Activation names of the fused kernels and their kernel codes.
ACTIVATIONS = {"identity": 0, "relu": 1, "gelu": 2, "silu": 3}
#: Philox blocks (of 8 elements) per program: 1024 elements per program.
BLOCK_B = 128
#: Philox blocks (of 4 normals) per program of the normal kernels: 1024 elements per program.
NORMAL_BLOCK_B = 256
_NUM_WARPS = 4
_M32 = 0xFFFFFFFF
_lock = threading.Lock()
_loaded: dict[bool, ModuleType] = {}


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value (Triton's own reading of it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def available() -> bool:
    """Triton imports and there is something to run it on: a CUDA device or the interpreter."""
    if _triton_version() is None:
        return False
    return interpreter_enabled() or torch.cuda.is_available()


def status() -> tuple[str, str]:
    """``(backend name, reason)`` for :func:`dropkit.kernels.backend_info`."""
    version = _triton_version()
    if version is None:
        return "reference", "Triton is not installed (pip install 'dropkit[triton]')"
    if interpreter_enabled():
        return "triton-interpreter", f"Triton {version} interpreter (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return "triton", f"Triton {version} kernels on {torch.cuda.get_device_name()}"
    return "reference", f"Triton {version} is installed but there is no CUDA device"


def _kernels(device: torch.device) -> ModuleType:
    """The kernel module for tensors on ``device``: interpreted under TRITON_INTERPRET=1, else compiled (CUDA)."""
    interpret = interpreter_enabled()
    if device.type != "cuda" and not interpret:
        raise ValueError(
            "the Triton backend runs CPU tensors only under Triton's interpreter (TRITON_INTERPRET=1); "
            f"received a tensor on {device}"
        )
    return _module(interpret)


@contextlib.contextmanager
def _interpret_mode(interpret: bool):
    """Triton's interpret switch (read by ``triton.jit`` when it decorates) for the duration of the
    block, never through ``os.environ``: the process environment (and every subprocess) is left
    alone. The knob's value is put in the knob object's ``__dict__``, which ``triton.knobs`` reads
    before the environment; its setter would also write ``os.environ``, so it is bypassed."""
    from triton import knobs

    rt = knobs.runtime.__dict__
    saved = rt.get("interpret", _UNSET)
    rt["interpret"] = interpret
    try:
        yield
    finally:
        if saved is _UNSET:
            rt.pop("interpret", None)
        else:
            rt["interpret"] = saved


_UNSET = object()


def _module(interpret: bool) -> ModuleType:
    """``_kernels.py`` decorated for the interpreter or for compilation, loaded once per mode."""
    mod = _loaded.get(interpret)
    if mod is not None:
        return mod
    with _lock:
        mod = _loaded.get(interpret)
        if mod is None:
            # triton.jit reads TRITON_INTERPRET when a kernel is decorated, so the file is loaded
            # under a mode-specific module name with the variable set for that mode.
            name = f"{__name__}._kernels_{'interpreted' if interpret else 'compiled'}"
            spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_kernels.py"))
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            try:
                with _interpret_mode(interpret):
                    sys.modules[name] = mod
                    spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            _loaded[interpret] = mod
    return mod


def _i32(v: int) -> int:
    """A 32-bit word as a signed int32 Python int (how the kernels receive 64-bit values, in halves)."""
    v &= _M32
    return v - (1 << 32) if v >= 1 << 31 else v


def _launch_args(
    n, lanes: int, block_b: int, thr: int | None, scale: float, seed: int, stream: int, offset: int, f64: bool
):
    """Grid, the shared scalar arguments and the constexprs of a kernel with ``lanes`` elements per Philox block:
    8 for the 16-bit mask lanes (with the threshold ``thr``), 4 for the 32-bit words of uniform / normal (``thr``
    None). See ``_kernels.py``."""
    if offset < 0:
        raise ValueError(f"`offset` must be >= 0; received offset={offset}")
    b_first, start = divmod(offset, lanes)
    grid = (-(-(start + n) // (lanes * block_b)),)
    # the scale travels as the bits of the compute dtype's value (float32: rounded to nearest)
    bits = struct.unpack("<Q", struct.pack("<d", scale))[0] if f64 else struct.unpack("<I", struct.pack("<f", scale))[0]
    args = [n, _i32(b_first), _i32(b_first >> 32), _i32(seed), _i32(seed >> 32), _i32(stream), _i32(stream >> 32)]
    args += ([] if thr is None else [thr]) + [_i32(bits), _i32(bits >> 32)]
    return grid, args, {"START": start, "BLOCK_B": block_b}


def _launch_kw(device: torch.device) -> dict:
    # Triton's default compile options (FP fusion on), as Inductor compiles a graph's user kernels: the
    # kernels give the same bits either way (no result depends on contraction, see _kernels._mad)
    return {} if interpreter_enabled() else {"num_warps": _NUM_WARPS}


def _bf16(out: torch.Tensor) -> bool:
    return out.dtype == torch.bfloat16


def _arg(t: torch.Tensor) -> torch.Tensor:
    """bfloat16 tensors go to the kernels as int16 views: the kernels widen and round bfloat16
    themselves, identically under the interpreter and on the GPU."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _on(device: torch.device):
    """Make ``device`` current while launching (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _run(kernel: str, grid, ptrs, key, args, constexprs) -> None:
    """Launch ``kernel``. ``key`` is ``(seed, stream)`` or the int64 key tensor ``(4,)`` of
    :func:`dropkit.rng.key_tensor` on the kernel's device: eagerly with the key as scalars, or through ``torch.library.wrap_triton`` with the
    key in memory, so that make_fx / AOTAutograd record the launch (a ``triton_kernel_wrapper`` node that
    Inductor compiles into the graph's code)."""
    device = ptrs[0].device
    fn = getattr(_kernels(device), kernel)
    if isinstance(key, torch.Tensor):
        torch.library.wrap_triton(fn)[grid](*ptrs, key, *args, **constexprs, KEY_IN_MEMORY=True, **_launch_kw(device))
        return
    with _on(device):  # the key pointer is never read: any tensor of the launch will do
        fn[grid](*ptrs, ptrs[-1], *args, **constexprs, KEY_IN_MEMORY=False, **_launch_kw(device))


def _key_scalars(key) -> tuple[int, int]:
    return (0, 0) if isinstance(key, torch.Tensor) else key


def _launch(kernel: str, ptrs, n, p, scale, key, offset, f64, extra=(), **constexprs) -> None:
    """Launch ``kernel`` over ``n`` elements: pointers, the key, the shared scalars, ``extra`` scalars, constexprs."""
    if n == 0:
        return
    grid, args, meta = _launch_args(n, 8, BLOCK_B, threshold(p), scale, *_key_scalars(key), offset, f64)
    _run(kernel, grid, ptrs, key, [*args, *extra], {**constexprs, **meta})


# Each primitive is written once over a ``key`` (``(seed, stream)`` or the key tensor on the device, see
# ``_run``): the public functions below pass ``(seed, stream)``, the graph launches of
# ``dropkit.kernels.triton.graph`` the key tensor.
def _keep_mask(n, p, key, offset, device):
    out = torch.empty(n, dtype=torch.uint8, device=device)
    _launch("keep_mask_kernel", (out,), n, p, 1.0, key, offset, False)
    return out.view(torch.bool)


def _dropout_mul(x, p, scale, key, offset, out=None):
    direct = out is not None and out.is_contiguous() and out.dtype == x.dtype and out.shape == x.shape
    y = out if direct and out is not None else torch.empty_like(x, memory_format=torch.contiguous_format)
    f64 = x.dtype == torch.float64
    _launch("dropout_mul_kernel", (_arg(x), _arg(y)), x.numel(), p, scale, key, offset, f64, F64=f64, BF16=_bf16(y))
    if out is not None and not direct:
        return out.copy_(y)
    return y


def _fused(a, x, bias, activation, backward, p, scale, key, offset):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    f64 = x.dtype == torch.float64
    ptrs = (_arg(a), _arg(x), _arg(bias if bias is not None else x), _arg(out))
    meta = {"ACT": ACTIVATIONS[activation], "HAS_BIAS": bias is not None, "BACKWARD": backward}
    _launch(
        "fused_kernel", ptrs, x.numel(), p, scale, key, offset, f64, (x.shape[-1],), **meta, F64=f64, BF16=_bf16(out)
    )
    return out


def _launch4(kernel: str, ptrs, n: int, sigma: float, key, offset: int, f64: bool, **constexprs):
    """Launch a kernel of the 32-bit lane layout (4 elements per Philox block: uniform, normal) over ``n`` elements;
    ``sigma`` rounded to float32 once unless ``f64``."""
    if n == 0:
        return
    grid, args, meta = _launch_args(n, 4, NORMAL_BLOCK_B, None, sigma, *_key_scalars(key), offset, f64)
    _run(kernel, grid, ptrs, key, args, {**constexprs, **meta})


def _uniform(n, key, offset, device, dtype):
    out = torch.empty(n, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float64, device=device)
    _launch4("uniform_kernel", (out,), n, 0.0, key, offset, False)
    return out if out.dtype == dtype else out.to(dtype)


def _normal(n, key, offset, device, dtype):
    out = torch.empty(n, dtype=torch.float32, device=device)
    _launch4("normal_kernel", (out,), n, 0.0, key, offset, False)
    return out if dtype == torch.float32 else out.to(dtype)


def _gaussian_mul(x, sigma, key, offset, out=None):
    src = x if x.is_contiguous() else x.contiguous()
    direct = out is not None and out.is_contiguous() and out.dtype == x.dtype and out.shape == x.shape
    y = out if direct and out is not None else torch.empty_like(src, memory_format=torch.contiguous_format)
    f64 = x.dtype == torch.float64
    _launch4("gaussian_mul_kernel", (_arg(src), _arg(y)), src.numel(), sigma, key, offset, f64, F64=f64, BF16=_bf16(y))
    if out is not None and not direct:
        return out.copy_(y)
    return y


def keep_mask(n: int, p: float, seed: int, stream: int, offset: int, device: torch.device) -> torch.Tensor:
    """1-D ``bool`` keep mask of ``n`` elements (``True`` = kept), computed on ``device``."""
    return _keep_mask(n, p, (seed, stream), offset, device)


def dropout_mul(
    x: torch.Tensor, p: float, scale: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` over contiguous ``x``, in float32 (float64), rounded once to x.dtype."""
    if not x.is_contiguous():
        raise ValueError("dropout_mul expects a contiguous `x`; call x.contiguous() first")
    return _dropout_mul(x, p, scale, (seed, stream), offset, out)


def fused_bias_act_dropout_add(
    a: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    backward: bool,
    p: float,
    scale: float,
    seed: int,
    stream: int,
    offset: int,
) -> torch.Tensor:
    """One pass of the fused op over contiguous tensors of one dtype, with ``h = x + bias``.

    Forward (``a`` = residual): ``residual + act(h) * (keep ? scale : 0)``. Backward (``a`` =
    the output's gradient): ``grad * (keep ? scale : 0) * act'(h)``, the gradient of ``x``.
    """
    return _fused(a, x, bias, activation, backward, p, scale, (seed, stream), offset)


def uniform(
    n: int, seed: int, stream: int, offset: int, device: torch.device, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """1-D uniforms ``(w + 0.5) * 2**-32`` of elements ``offset .. offset + n - 1`` (float64, then ``dtype``)."""
    return _uniform(n, (seed, stream), offset, device, dtype)


def normal(
    n: int, seed: int, stream: int, offset: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """1-D normals of elements ``offset .. offset + n - 1`` (normal contract v2: float32, then ``dtype``)."""
    return _normal(n, (seed, stream), offset, device, dtype)


def gaussian_mul(
    x: torch.Tensor, sigma: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * (1 + sigma * z)`` in float32 (float64 for float64 ``x``), rounded once to ``x.dtype``."""
    return _gaussian_mul(x, sigma, (seed, stream), offset, out)
