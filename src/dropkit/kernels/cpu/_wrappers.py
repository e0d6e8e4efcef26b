"""The Python side of the CPU kernel: the primitives :mod:`dropkit.kernels` dispatches to, on raw pointers.

Each wrapper checks its tensors, picks the destination and calls the library through
:func:`_run` (the key and run arguments every entry point ends with). Inputs the kernel only
reads are passed with ``Tensor.const_data_ptr()`` (:func:`_read_ptr`: it does not materialise a lazily
copied tensor), outputs with ``data_ptr()``.
"""

from __future__ import annotations

import torch

from dropkit.kernels.cpu import _torch
from dropkit.kernels.cpu._abi import ISAS, _apply_isa, _load, _state
from dropkit.rng import threshold

#: Below this many elements a call stays on one thread. Measured on the 2-core AMD EPYC
#: (Zen 4) VM, fp32, 1 vs 2 threads: on torch's OpenMP team 2 threads win from 2^15
#: (1.07x at 2^15, 1.5x at 2^16, 2x from 2^17); on the kernel's own pool, with its worker
#: awake, from 2^14. (The own pool also stays on one thread below 2^19 elements while
#: its workers sleep: a wake-up costs ~50 us there.)
parallel_threshold = 1 << 15


_HAS_CONST_PTR = hasattr(torch.Tensor, "const_data_ptr")


def _read_ptr(t: torch.Tensor) -> int:
    """The address of an input the kernel only reads: ``const_data_ptr()``, which, unlike ``data_ptr()``, does
    not materialise a copy-on-write tensor (torch's stubs do not list it yet)."""
    if _HAS_CONST_PTR:
        return t.const_data_ptr()  # type: ignore[attr-defined]
    return t.data_ptr()  # an older torch without Tensor.const_data_ptr: a copy-on-write input is materialised


def available() -> bool:
    """Whether the compiled kernel is built and loaded (builds it on the first call)."""
    if not _state["loaded"]:
        _load()
    return _state["lib"] is not None


def status() -> tuple[str, str]:
    """``(backend name, reason)``, e.g. ``("cpu-avx512", "compiled kernel loaded from ...")``."""
    available()
    return (_state["name"] if _state["lib"] is not None else "reference"), _state["reason"]


def isa() -> str:
    """The ISA in use (``"scalar"``, ``"avx2"``, ``"avx512"``, ``"neon"``), or ``"none"`` without the kernel."""
    return _state["isa_name"] if available() else "none"


def supported_isas() -> tuple[str, ...]:
    """The ISAs this CPU can run, in the order of :data:`ISAS` (empty without the kernel)."""
    return _state["supported"] if available() else ()


def set_isa(name: str | None = None) -> str:
    """Run ISA ``name`` (``None``: the best the CPU supports); returns the ISA in use.

    Meant for tests and benchmarks: every ISA returns identical bits. Raises ``ValueError``
    for a name not in :data:`ISAS` or an ISA this CPU does not support.
    """
    if name is not None and name not in ISAS:
        raise ValueError(f"ISA must be one of {ISAS} or None; received {name!r}")
    _require()
    if name is not None and name not in _state["supported"]:
        raise ValueError(f"ISA {name!r} is not supported by this CPU; it supports {_state['supported']}")
    _apply_isa(name)
    _torch.set_isa(_state["isa"])
    return _state["isa_name"]


def _require() -> None:
    if not available():
        raise RuntimeError(f"the compiled CPU kernel is not available: {_state['reason']}")


def _run(fn, n: int, args: tuple, seed: int, stream: int, offset: int) -> None:
    """``fn(*args, seed, stream, offset, isa, threads)``: the key and run arguments every element-wise entry
    point ends with (``dk_job_init`` on the C side); a non-zero return is an error naming the entry point."""
    rc = fn(*args, seed & _M64, stream & _M64, offset & _M64, _state["isa"], _threads(n))
    if rc:
        raise RuntimeError(f"{fn.__name__} failed with code {rc}")


def _to_device(out: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A result computed on the CPU, moved to ``device``."""
    return out if torch.device(device).type == "cpu" else out.to(device)


def _threads(n: int) -> int:
    return 1 if n < parallel_threshold else torch.get_num_threads()


_M64 = (1 << 64) - 1
_thresholds: dict[float, int] = {}


def _thr(p: float) -> int:
    t = _thresholds.get(p)
    if t is None:
        if len(_thresholds) > 1024:
            _thresholds.clear()
        t = _thresholds[p] = threshold(p)
    return t


def keep_mask(n: int, p: float, seed: int, stream: int, offset: int, device: torch.device) -> torch.Tensor:
    """1-D ``bool`` keep mask of ``n`` elements, ``True`` = kept (computed on the CPU, moved to ``device``)."""
    _require()
    out = torch.empty(int(n), dtype=torch.bool)
    _run(_state["lib"].dk_keep_mask, n, (out.data_ptr(), n, _thr(p)), seed, stream, offset)
    return _to_device(out, device)


def dropout_mul(
    x: torch.Tensor, p: float, scale: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``out = x * (keep ? scale : 0)`` for a CPU tensor ``x``; bit-identical to the reference.

    The product is taken in float32 (float64 for float64 ``x``) and rounded once to
    ``x.dtype``. ``out`` may be ``x`` (in place). Inputs the kernel does not cover
    (other dtypes or devices) go to the reference backend; non-contiguous ``x`` is
    made contiguous first, and an ``out`` that is not contiguous or partly overlaps
    ``x`` receives the result by a copy.
    """
    code = _code_for(x, out)
    if code is None:
        from dropkit.kernels import reference

        return reference.dropout_mul(x, p, scale, seed, stream, offset, out)
    lib = _state["lib"]
    src = x if x.is_contiguous() else x.contiguous()
    n = src.numel()
    dst = _destination(x, src, out, broadcast=False)
    if n:
        out_ptr = dst.data_ptr()  # first: when dst is src (in place), this is what makes its memory its own
        _run(lib.dk_dropout_mul, n, (code, _read_ptr(src), out_ptr, n, _thr(p), scale), seed, stream, offset)
    return _delivered(dst, out)


def uniform(
    n: int, seed: int, stream: int, offset: int, device: torch.device, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """1-D uniform samples ``(w + 0.5) * 2**-32`` (float64, then rounded to ``dtype``) of elements
    ``offset .. offset + n - 1``, computed on the CPU and moved to ``device``; bit-identical to
    :func:`dropkit.rng.uniform`. float32 and float64 come from the kernel directly, other
    dtypes are rounded from its float64 values by torch (as the reference does).
    """
    _require()
    n = int(n)
    direct = dtype in (torch.float32, torch.float64)
    out = torch.empty(n, dtype=dtype if direct else torch.float64)
    if n:
        _run(_state["lib"].dk_uniform, n, (_state["dtypes"][out.dtype], out.data_ptr(), n), seed, stream, offset)
    return _to_device(out if direct else out.to(dtype), device)


def _check_memory(t: torch.Tensor, name: str) -> None:
    """The kernel reads and writes raw pointers: refuse a tensor without memory of its own (a wrapper
    subclass such as DTensor reports data_ptr 0), which would crash the process instead of raising."""
    if t.numel() and _read_ptr(t) == 0:
        raise TypeError(
            f"dropkit's CPU kernel needs `{name}` to be a plain tensor with its own memory; received a "
            f"{type(t).__name__} without one (data_ptr 0). Tensor subclasses go through the registered op "
            "(torch.ops.dropkit.*), whose dispatch the subclass handles"
        )


def normal(
    n: int, seed: int, stream: int, offset: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """1-D standard normals of elements ``offset .. offset + n - 1`` (normal contract v2: float32, then
    converted to ``dtype``), computed on the CPU and moved to ``device``; bit-identical to
    :func:`dropkit.rng.normal`.
    """
    _require()
    n = int(n)
    out = torch.empty(n, dtype=torch.float32)
    if n:
        _run(_state["lib"].dk_normal, n, (out.data_ptr(), n), seed, stream, offset)
    return _to_device(out if dtype == torch.float32 else out.to(dtype), device)


def gaussian_mul(
    x: torch.Tensor, sigma: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * (1 + sigma * z)`` for a CPU tensor ``x`` in one pass (``z`` = :func:`normal`); bit-identical
    to :func:`dropkit.kernels.reference.gaussian_mul`. The same input handling as :func:`dropout_mul`,
    except that an ``x`` holding one value broadcast (every stride 0, e.g. the gradient of a sum) is
    read as that value, not copied.
    """
    code = _code_for(x, out)
    if code is None:
        from dropkit.kernels import reference

        return reference.gaussian_mul(x, sigma, seed, stream, offset, out)
    lib = _state["lib"]
    n = x.numel()
    broadcast = n > 1 and all(st == 0 or sz == 1 for st, sz in zip(x.stride(), x.shape))
    src = x if broadcast or x.is_contiguous() else x.contiguous()
    dst = _destination(x, src, out, broadcast=broadcast)
    if n:
        out_ptr = dst.data_ptr()  # first: when dst is src (in place), this is what makes its memory its own
        args = (code, _read_ptr(src), 0 if broadcast else 1, out_ptr, n, float(sigma))
        _run(lib.dk_gaussian_mul, n, args, seed, stream, offset)
    return _delivered(dst, out)


def _code_for(x: torch.Tensor, out: torch.Tensor | None) -> int | None:
    """The kernel's dtype code for an element-wise call on ``x`` (into ``out``), or None when the kernel does not
    serve it (no library, another dtype or device, an ``out`` of another dtype or device): the reference does."""
    code = _state["dtypes"].get(x.dtype) if _state["lib"] is not None or available() else None
    if code is None or not x.is_cpu or (out is not None and (out.dtype != x.dtype or not out.is_cpu)):
        return None
    return code


def _delivered(dst: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The call's result: ``dst``, copied into ``out`` when the kernel could not write there directly."""
    if out is not None and dst is not out:
        return out.copy_(dst.view(out.shape))
    return dst


def _destination(x: torch.Tensor, src: torch.Tensor, out: torch.Tensor | None, *, broadcast: bool) -> torch.Tensor:
    """Where an element-wise kernel writes: ``out`` itself when it is contiguous and equals or does not
    overlap ``src`` (a broadcast ``src``, one value, must not overlap it at all), else a new contiguous
    tensor (the caller copies it into ``out``). Checks ``src`` has memory of its own and ``out``'s size."""
    _check_memory(src, "x")
    n = x.numel()
    if out is None:
        return torch.empty_like(x, memory_format=torch.contiguous_format)  # 2 us less than torch.empty(shape)
    if out.numel() != n:
        raise ValueError(f"`out` must have {n} elements like `x`; received {out.numel()}")
    if not out.is_contiguous() or ((broadcast or out.data_ptr() != _read_ptr(src)) and _overlap(out, src)):
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return out


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), _read_ptr(b)  # a: the output, b: the input (read only)
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def mask_fold(
    A: torch.Tensor,
    X: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    R: int,
    P: int,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """:func:`dropkit.kernels.mask_fold` in ``mask_fold.c``, for float32 CPU tensors (``mask`` may
    have any strides on its first two dims). Raises ``ValueError`` when a mask value is neither
    0 nor ``scale``.
    """
    _require()
    T, B, D = mask.shape
    _, K, O = A.shape
    if A.dtype != torch.float32 or X.dtype != torch.float32 or mask.dtype != torch.float32:
        raise TypeError("mask_fold takes float32 tensors")
    if bias is not None:
        bias = bias.detach().contiguous()
        if bias.shape != (O,) or bias.dtype != torch.float32:
            raise ValueError(
                f"mask_fold: `bias` must be a float32 tensor of shape ({O},); received {tuple(bias.shape)} {bias.dtype}"
            )
    if A.shape[0] != D or X.shape[1:] != (D, K, R, P) or X.shape[0] not in (1, B):
        raise ValueError(
            f"mask_fold: inconsistent shapes A={tuple(A.shape)} X={tuple(X.shape)} mask={tuple(mask.shape)} R={R} P={P}"
        )
    A, X = A.contiguous(), X.contiguous()
    if mask.stride(2) != 1:
        mask = mask.contiguous()
    out = torch.empty((T, B, P * O), dtype=torch.float32)
    sxb = 0 if X.shape[0] == 1 else X.stride(0)
    rc = _state["lib"].dk_mask_fold_f32(
        _read_ptr(A),
        _read_ptr(X),
        sxb,
        _read_ptr(mask),
        mask.stride(0),
        mask.stride(1),
        out.data_ptr(),
        out.stride(0),
        out.stride(1),
        T,
        B,
        D,
        O,
        K,
        R,
        P,
        float(scale),
        None if bias is None else _read_ptr(bias),
        int(relu),
        _state["isa"],
        torch.get_num_threads(),
    )
    if rc == -2:
        raise ValueError(f"mask_fold: every mask value must be 0 or scale={scale}")
    if rc:
        raise RuntimeError(f"dk_mask_fold_f32 failed with code {rc}")
    return out
