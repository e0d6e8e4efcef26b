"""The compiled CPU kernel: the mask contract and ``dropout_mul`` in SIMD C.

``dropkit_cpu.c`` (plain C on raw pointers, no dependence on torch's C++ ABI) is
compiled once, at first use, with the system C compiler into a per-user cache
(``$DROPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dropkit``, else ``~/.cache/dropkit``)
under a name keyed by a hash of the source, the compiler and the Python build; the
shared library is written under a temporary name and moved into place atomically,
then loaded with :mod:`ctypes` (which releases the GIL during each call).

One build runs on any x86-64 or arm64 CPU: the library picks AVX-512, AVX2 or the
portable scalar path at run time (:func:`status` says which). The results are
bit-identical to :mod:`dropkit.kernels.reference` on every path and for every
thread count, because each element's mask depends only on its global index.

Environment:

* ``DROPKIT_NO_KERNEL=1``: do not build or load the kernel (the reference backend serves CPU).
* ``DROPKIT_CPU_ISA=scalar|avx2|avx512``: use at most this ISA level (for tests).
* ``CC``: the C compiler (default ``cc``, then ``gcc``, then ``clang``).
* ``DROPKIT_CPU_POOL=pthread``: use the kernel's own thread pool instead of torch's OpenMP team.
* ``DROPKIT_CPU_SPIN_US``: how long an idle worker thread spins before it sleeps (default 200).
* ``DROPKIT_CPU_CFLAGS``: extra compiler flags (e.g. ``-fsanitize=address``); part of the cache key.

If there is no compiler or the build fails, :func:`available` is ``False``, one
``RuntimeWarning`` says why, and :func:`status` keeps the reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from dropkit.rng import threshold

__all__ = [
    "available",
    "status",
    "keep_mask",
    "dropout_mul",
    "isa",
    "set_isa",
    "supported_isas",
    "ISAS",
    "parallel_threshold",
    "mask_fold",
    "uniform",
    "CAPABILITIES",
]

#: The primitives of :mod:`dropkit.kernels` this backend computes itself (the dispatcher sends
#: the others to :mod:`dropkit.kernels.reference`).
CAPABILITIES = frozenset({"keep_mask", "dropout_mul", "uniform", "mask_fold"})

#: ISA levels, lowest first (the index is the level the C library uses).
ISAS = ("scalar", "avx2", "avx512", "neon")
_SOURCES = ("dropkit_cpu.c", "mask_fold.c", "dk_target_base.c", "dk_target_avx2.c", "dk_target_avx512.c")
_HEADERS = ("dropkit_cpu.h", "dk_internal.h", "dk_body.h")
_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

#: Below this many elements a call stays on one thread. Measured on the 2-core AMD EPYC
#: (Zen 4) VM, fp32, 1 vs 2 threads: on torch's OpenMP team 2 threads win from 2^15
#: (1.07x at 2^15, 1.5x at 2^16, 2x from 2^17); on the kernel's own pool, with its worker
#: awake, from 2^14. (The own pool also stays on one thread below 2^19 elements while
#: its workers sleep: a wake-up costs ~50 us there.)
parallel_threshold = 1 << 15

_lock = threading.Lock()
_state: dict = {"loaded": False, "lib": None, "name": "reference", "reason": "not loaded yet", "isa": 0, "best": 0}


# ---------------------------------------------------------------------------
# Build and load
# ---------------------------------------------------------------------------
def _cache_dir() -> Path:
    d = os.environ.get("DROPKIT_CACHE_DIR")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dropkit"


def _find_compiler() -> list[str] | None:
    cc = os.environ.get("CC")
    if cc:
        parts = shlex.split(cc)
        return parts if parts and shutil.which(parts[0]) else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _build(src_dir: Path) -> Path:
    """Compile the kernel into the cache (if not there yet) and return the library's path."""
    cc = _find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    sources = [src_dir / s for s in _SOURCES]
    flags = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off"]
    flags += shlex.split(os.environ.get("DROPKIT_CPU_CFLAGS", ""))
    h = hashlib.sha256()
    for s in (*sources, *(src_dir / f for f in _HEADERS)):
        h.update(s.read_bytes())
    cc_real = os.path.realpath(shutil.which(cc[0]) or cc[0])
    st = os.stat(cc_real)
    h.update(repr((cc, cc_real, st.st_size, st.st_mtime_ns, flags, sys.version, platform.machine(),
                   sysconfig.get_config_var("SOABI"))).encode())
    name = f"dropkit_cpu-{h.hexdigest()[:20]}{'.dll' if os.name == 'nt' else '.so'}"
    cache = _cache_dir()
    for d in (cache, Path(tempfile.gettempdir()) / f"dropkit-{os.getuid() if hasattr(os, 'getuid') else 'user'}"):
        if (d / name).exists():
            return d / name
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise PermissionError(f"{cache} is not writable")
    except OSError:  # read-only home: a per-user folder in the temp dir
        cache = Path(tempfile.gettempdir()) / f"dropkit-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    lib = cache / name
    fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".tmp", dir=cache)
    os.close(fd)
    try:
        cmd = [*cc, *flags, *map(str, sources), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {' | '.join(msg[-5:])}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    lib.dk_cpu_features.restype = c.c_int
    lib.dk_cpu_features.argtypes = []
    lib.dk_effective_isa.restype = c.c_int
    lib.dk_effective_isa.argtypes = [c.c_int]
    lib.dk_keep_mask.restype = c.c_int
    lib.dk_keep_mask.argtypes = [c.c_void_p, c.c_int64, c.c_uint32, c.c_uint64, c.c_uint64, c.c_uint64,
                                 c.c_int, c.c_int]
    lib.dk_use_openmp.restype = c.c_int
    lib.dk_use_openmp.argtypes = [c.c_void_p, c.c_void_p]
    lib.dk_set_spin_us.restype = c.c_longlong
    lib.dk_set_spin_us.argtypes = [c.c_longlong]
    lib.dk_mask_fold_f32.restype = c.c_int
    lib.dk_mask_fold_f32.argtypes = [c.c_void_p, c.c_void_p, c.c_int64, c.c_void_p, c.c_int64, c.c_int64,
                                     c.c_void_p, c.c_int64, c.c_int64, *[c.c_int64] * 7, c.c_float, c.c_void_p,
                                     c.c_int, c.c_int, c.c_int]
    lib.dk_uniform.restype = c.c_int
    lib.dk_uniform.argtypes = [c.c_int, c.c_void_p, c.c_int64, c.c_uint64, c.c_uint64, c.c_uint64, c.c_int, c.c_int]
    lib.dk_dropout_mul.restype = c.c_int
    lib.dk_dropout_mul.argtypes = [c.c_int, c.c_void_p, c.c_void_p, c.c_int64, c.c_uint32, c.c_double,
                                   c.c_uint64, c.c_uint64, c.c_uint64, c.c_int, c.c_int]


def _load() -> None:
    with _lock:
        if _state["loaded"]:
            return
        try:
            _load_locked()
        finally:
            _state["loaded"] = True


def _load_locked() -> None:
    if os.environ.get("DROPKIT_NO_KERNEL", "").strip() not in ("", "0"):
        _state["reason"] = "disabled by DROPKIT_NO_KERNEL=1; using the reference backend"
        return
    try:
        path = _build(Path(__file__).resolve().parent)
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back, and say why
        reason = f"compiled CPU kernel unavailable ({type(exc).__name__}: {exc}); using the reference backend"
        _state["reason"] = reason
        warnings.warn(f"dropkit: {reason}", RuntimeWarning, stacklevel=4)
        return
    _state["threads"] = _borrow_openmp(lib)
    spin = os.environ.get("DROPKIT_CPU_SPIN_US")
    if spin:
        lib.dk_set_spin_us(int(spin))
    feats = lib.dk_cpu_features()
    best = max(i for i in range(len(ISAS)) if feats & (1 << i))
    _state.update(lib=lib, best=best, path=str(path))
    forced = os.environ.get("DROPKIT_CPU_ISA") or None
    if forced is not None and forced not in ISAS:
        warnings.warn(f"dropkit: DROPKIT_CPU_ISA must be one of {ISAS}; received {forced!r}; ignoring it",
                      RuntimeWarning, stacklevel=4)
        forced = None
    _apply_isa(forced)


def _borrow_openmp(lib: ctypes.CDLL) -> str:
    """Hand the C library the OpenMP runtime torch runs on, so that parallel calls use
    torch's own (already spinning) thread team instead of competing with it."""
    if os.environ.get("DROPKIT_CPU_POOL", "").strip().lower() == "pthread":
        return "own pthread pool (DROPKIT_CPU_POOL=pthread)"
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return "own pthread pool (torch's parallel backend is not OpenMP)"
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if line.rstrip().endswith((".so.1", ".so", ".dylib"))
                            and any(k in line.rsplit("/", 1)[-1] for k in ("gomp", "libomp", "iomp"))})
    except OSError:
        paths = []
    for path in paths:
        try:
            omp = ctypes.CDLL(path)
            par, tnum = omp.GOMP_parallel, omp.omp_get_thread_num
        except (OSError, AttributeError):
            continue
        if lib.dk_use_openmp(ctypes.cast(par, ctypes.c_void_p), ctypes.cast(tnum, ctypes.c_void_p)):
            return f"torch's OpenMP team ({path})"
    return "own pthread pool (torch's OpenMP runtime not found)"


def _apply_isa(name: str | None) -> None:
    best = _state["best"]
    if name is None:
        level, note = best, "best this CPU supports"
    else:
        if name not in ISAS:
            raise ValueError(f"ISA must be one of {ISAS}; received {name!r}")
        level = _state["lib"].dk_effective_isa(ISAS.index(name))
        note = f"capped by DROPKIT_CPU_ISA/set_isa({name!r})" if level == ISAS.index(name) else (
            f"{name!r} requested but this CPU supports at most {ISAS[best]!r}")
    _state["isa"] = level
    _state["name"] = f"cpu-{ISAS[level]}"
    _state["reason"] = (f"compiled kernel loaded from {_state['path']} ({ISAS[level]}: {note}; "
                        f"threads: {_state['threads']})")


# ---------------------------------------------------------------------------
# Public surface used by dropkit.kernels
# ---------------------------------------------------------------------------
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
    """The ISA level in use (``"scalar"``, ``"avx2"``, ``"avx512"``), or ``"none"`` without the kernel."""
    return ISAS[_state["isa"]] if available() else "none"


def supported_isas() -> tuple[str, ...]:
    """The ISA levels this CPU can run, lowest first (empty without the kernel)."""
    if not available():
        return ()
    feats = _state["lib"].dk_cpu_features()
    return tuple(name for i, name in enumerate(ISAS) if feats & (1 << i))


def set_isa(name: str | None = None) -> str:
    """Use at most ISA level ``name`` (``None``: the best the CPU has); returns the level in use.

    Meant for tests and benchmarks: every level returns identical bits.
    """
    if not available():
        raise RuntimeError(f"the compiled CPU kernel is not available: {_state['reason']}")
    _apply_isa(name)
    return ISAS[_state["isa"]]


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
    if not available():
        raise RuntimeError(f"the compiled CPU kernel is not available: {_state['reason']}")
    out = torch.empty(int(n), dtype=torch.bool)
    rc = _state["lib"].dk_keep_mask(out.data_ptr(), n, _thr(p), seed & _M64, stream & _M64, offset & _M64,
                                    _state["isa"], _threads(n))
    if rc:
        raise RuntimeError(f"dk_keep_mask failed with code {rc}")
    return out if torch.device(device).type == "cpu" else out.to(device)


def dropout_mul(x: torch.Tensor, p: float, scale: float, seed: int, stream: int, offset: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``out = x * (keep ? scale : 0)`` for a CPU tensor ``x``; bit-identical to the reference.

    The product is taken in float32 (float64 for float64 ``x``) and rounded once to
    ``x.dtype``. ``out`` may be ``x`` (in place). Inputs the kernel does not cover
    (other dtypes or devices) go to the reference backend; non-contiguous ``x`` is
    made contiguous first, and an ``out`` that is not contiguous or partly overlaps
    ``x`` receives the result by a copy.
    """
    lib = _state["lib"]
    code = _DTYPE_CODE.get(x.dtype)
    if code is None or not x.is_cpu or (lib is None and not available()) or (
            out is not None and (out.dtype != x.dtype or not out.is_cpu)):
        from dropkit.kernels import reference

        return reference.dropout_mul(x, p, scale, seed, stream, offset, out)
    lib = _state["lib"]
    src = x if x.is_contiguous() else x.contiguous()
    n = src.numel()
    if out is None:
        dst = torch.empty(x.shape, dtype=x.dtype)
    elif out.numel() != n:
        raise ValueError(f"`out` must have {n} elements like `x`; received {out.numel()}")
    elif not out.is_contiguous() or (out.data_ptr() != src.data_ptr() and _overlap(out, src)):
        dst = torch.empty(x.shape, dtype=x.dtype)
    else:
        dst = out
    if n:
        rc = lib.dk_dropout_mul(code, src.data_ptr(), dst.data_ptr(), n, _thr(p), scale, seed & _M64, stream & _M64,
                                offset & _M64, _state["isa"], _threads(n))
        if rc:
            raise RuntimeError(f"dk_dropout_mul failed with code {rc}")
    if out is not None and dst is not out:
        return out.copy_(dst.view(out.shape))
    return dst


def uniform(n: int, seed: int, stream: int, offset: int, device: torch.device,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1-D uniform samples ``(w + 0.5) * 2**-32`` (float64, then rounded to ``dtype``) of elements
    ``offset .. offset + n - 1``, computed on the CPU and moved to ``device``; bit-identical to
    :func:`dropkit.rng.uniform`. float32 and float64 come from the kernel directly, other
    dtypes are rounded from its float64 values by torch (as the reference does).
    """
    if not available():
        raise RuntimeError(f"the compiled CPU kernel is not available: {_state['reason']}")
    n = int(n)
    direct = dtype in (torch.float32, torch.float64)
    out = torch.empty(n, dtype=dtype if direct else torch.float64)
    if n:
        rc = _state["lib"].dk_uniform(_DTYPE_CODE[out.dtype], out.data_ptr(), n, seed & _M64, stream & _M64,
                                      offset & _M64, _state["isa"], _threads(n))
        if rc:
            raise RuntimeError(f"dk_uniform failed with code {rc}")
    if not direct:
        out = out.to(dtype)
    return out if torch.device(device).type == "cpu" else out.to(device)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def mask_fold(A: torch.Tensor, X: torch.Tensor, mask: torch.Tensor, scale: float, R: int, P: int,
              bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """:func:`dropkit.kernels.mask_fold` in ``mask_fold.c``, for float32 CPU tensors (``mask`` may
    have any strides on its first two dims). Raises ``ValueError`` when a mask value is neither
    0 nor ``scale``.
    """
    if not available():
        raise RuntimeError(f"the compiled CPU kernel is not available: {_state['reason']}")
    T, B, D = mask.shape
    _, K, O = A.shape
    if A.dtype != torch.float32 or X.dtype != torch.float32 or mask.dtype != torch.float32:
        raise TypeError("mask_fold takes float32 tensors")
    if bias is not None:
        bias = bias.detach().contiguous()
        if bias.shape != (O,) or bias.dtype != torch.float32:
            raise ValueError(f"mask_fold: `bias` must be a float32 tensor of shape ({O},); received "
                             f"{tuple(bias.shape)} {bias.dtype}")
    if A.shape[0] != D or X.shape[1:] != (D, K, R, P) or X.shape[0] not in (1, B):
        raise ValueError(f"mask_fold: inconsistent shapes A={tuple(A.shape)} X={tuple(X.shape)} "
                         f"mask={tuple(mask.shape)} R={R} P={P}")
    A, X = A.contiguous(), X.contiguous()
    if mask.stride(2) != 1:
        mask = mask.contiguous()
    out = torch.empty((T, B, P * O), dtype=torch.float32)
    sxb = 0 if X.shape[0] == 1 else X.stride(0)
    rc = _state["lib"].dk_mask_fold_f32(A.data_ptr(), X.data_ptr(), sxb, mask.data_ptr(), mask.stride(0),
                                        mask.stride(1), out.data_ptr(), out.stride(0), out.stride(1), T, B, D, O, K,
                                        R, P, float(scale), None if bias is None else bias.data_ptr(), int(relu),
                                        _state["isa"], torch.get_num_threads())
    if rc == -2:
        raise ValueError(f"mask_fold: every mask value must be 0 or scale={scale}")
    if rc:
        raise RuntimeError(f"dk_mask_fold_f32 failed with code {rc}")
    return out
