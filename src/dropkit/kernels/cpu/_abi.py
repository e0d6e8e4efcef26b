"""The CPU kernel's ABI: ctypes signatures of ``dropkit_cpu.h``, loading the library, and the checks before it.

:func:`_load` (run once, on the first call that needs the kernel) picks the library: the one
installed with the package, **after its SHA-256 matched the digest ``setup.py`` wrote next to
it** (``_dropkit_cpu.so.sha256``; a truncated or altered library is never opened, since
``dlopen`` of one can kill the process with SIGBUS or SIGSEGV: one warning, then the reference
backend), else a first-use build (:mod:`dropkit.kernels.cpu._build`). It then reads the ABI
constants, borrows torch's OpenMP team and selects the ISA. :data:`_state` holds the result.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import warnings
from pathlib import Path

import torch

from dropkit.kernels.cpu import _build
from dropkit.kernels.cpu._build import _HERE, _Unusable, _warn_at_user
from dropkit.kernels.cpu import _sources

#: The instruction sets the library has a body for (a CPU supports some of them; not an order).
ISAS = ("scalar", "avx2", "avx512", "neon")
#: The one :func:`set_isa` ``(None)`` picks: the first of these that the CPU supports.
_PREFERENCE = ("avx512", "avx2", "neon", "scalar")

_lock = threading.Lock()
_state: dict = {
    "loaded": False,
    "lib": None,
    "name": "reference",
    "reason": "not loaded yet",
    "isa": 0,
    "best": "scalar",
    "codes": {},
    "dtypes": {},
}


# ---------------------------------------------------------------------------
# Environment: read once, at import
# ---------------------------------------------------------------------------
def _env_warning(var: str, value: str, accepted: str, effect: str) -> None:
    warnings.warn(f"dropkit: {var}={value!r} is not valid ({accepted}); {effect}", RuntimeWarning, stacklevel=3)


def _env_flag(var: str, effect: str) -> bool | None:
    """A 1/0, true/false, yes/no, on/off variable; None when unset, or invalid (one warning naming ``effect``)."""
    raw = os.environ.get(var, "").strip()
    value = raw.lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        _env_warning(var, raw, "accepted: 1/0, true/false, yes/no, on/off", effect)
        value = ""
    return None if value == "" else value in ("1", "true", "yes", "on")


def _read_env() -> dict:
    env: dict = {}
    env["no_kernel"] = _env_flag("DROPKIT_NO_KERNEL", "the kernel stays enabled") is True
    env["cpp_kernels"] = _env_flag("DROPKIT_CPP_KERNELS", "the C++ registration stays enabled") is not False
    raw = os.environ.get("DROPKIT_CPU_ISA", "").strip()
    if raw and raw not in ISAS:
        _env_warning("DROPKIT_CPU_ISA", raw, f"accepted: {', '.join(ISAS)}", "the best ISA of this CPU is used")
        raw = ""
    env["isa"] = raw or None
    raw = os.environ.get("DROPKIT_CPU_SPIN_US", "").strip()
    env["spin_us"] = None
    if raw:
        try:
            env["spin_us"] = int(raw)
            if env["spin_us"] < 0:
                raise ValueError
        except ValueError:
            _env_warning("DROPKIT_CPU_SPIN_US", raw, "accepted: an int >= 0 (microseconds)", "the default 200 is used")
            env["spin_us"] = None
    raw = os.environ.get("DROPKIT_CPU_POOL", "").strip().lower()
    if raw not in ("", "openmp", "pthread"):
        _env_warning(
            "DROPKIT_CPU_POOL", raw, "accepted: openmp, pthread", "torch's OpenMP team is used when there is one"
        )
        raw = ""
    env["pool"] = raw or "openmp"
    return env


_ENV = _read_env()


# ---------------------------------------------------------------------------
# Opening a library
# ---------------------------------------------------------------------------
def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    lib.dk_source_hash.restype = c.c_char_p
    lib.dk_source_hash.argtypes = []
    lib.dk_abi_constant.restype = c.c_int64
    lib.dk_abi_constant.argtypes = [c.c_char_p]
    lib.dk_cpu_features.restype = c.c_int
    lib.dk_cpu_features.argtypes = []
    lib.dk_keep_mask.restype = c.c_int
    lib.dk_keep_mask.argtypes = [
        c.c_void_p,
        c.c_int64,
        c.c_uint32,
        c.c_uint64,
        c.c_uint64,
        c.c_uint64,
        c.c_int,
        c.c_int,
    ]
    lib.dk_use_openmp.restype = c.c_int
    lib.dk_use_openmp.argtypes = [c.c_void_p, c.c_void_p]
    lib.dk_set_spin_us.restype = c.c_longlong
    lib.dk_set_spin_us.argtypes = [c.c_longlong]
    lib.dk_mask_fold_f32.restype = c.c_int
    lib.dk_mask_fold_f32.argtypes = [
        c.c_void_p,
        c.c_void_p,
        c.c_int64,
        c.c_void_p,
        c.c_int64,
        c.c_int64,
        c.c_void_p,
        c.c_int64,
        c.c_int64,
        *[c.c_int64] * 7,
        c.c_float,
        c.c_void_p,
        c.c_int,
        c.c_int,
        c.c_int,
    ]
    lib.dk_uniform.restype = c.c_int
    lib.dk_uniform.argtypes = [c.c_int, c.c_void_p, c.c_int64, c.c_uint64, c.c_uint64, c.c_uint64, c.c_int, c.c_int]
    lib.dk_normal.restype = c.c_int
    lib.dk_normal.argtypes = [c.c_void_p, c.c_int64, c.c_uint64, c.c_uint64, c.c_uint64, c.c_int, c.c_int]
    lib.dk_gaussian_mul.restype = c.c_int
    lib.dk_gaussian_mul.argtypes = [
        c.c_int,
        c.c_void_p,
        c.c_int64,
        c.c_void_p,
        c.c_int64,
        c.c_double,
        c.c_uint64,
        c.c_uint64,
        c.c_uint64,
        c.c_int,
        c.c_int,
    ]
    lib.dk_dropout_mul.restype = c.c_int
    lib.dk_dropout_mul.argtypes = [
        c.c_int,
        c.c_void_p,
        c.c_void_p,
        c.c_int64,
        c.c_uint32,
        c.c_double,
        c.c_uint64,
        c.c_uint64,
        c.c_uint64,
        c.c_int,
        c.c_int,
    ]


def _open(path: Path, want_hash: str | None) -> ctypes.CDLL:
    """Load the library at ``path`` and check that it is the build of the current sources."""
    lib = ctypes.CDLL(str(path))
    try:
        _declare(lib)
    except AttributeError as exc:
        raise _Unusable(f"not a current dropkit kernel ({exc})") from None
    got = lib.dk_source_hash().decode()
    if want_hash is not None and got != want_hash:
        raise _Unusable(f"built from other sources (hash {got}, the sources here are {want_hash})")
    return lib


class _Damaged(Exception):
    """The packaged library does not match the SHA-256 recorded when it was built (or has no record)."""


def _verify_packaged(path: Path) -> None:
    """Raise :class:`_Damaged` unless ``path`` matches the SHA-256 in ``<path>.sha256`` (written by ``setup.py``)."""
    digest_path = Path(str(path) + _sources.DIGEST_SUFFIX)
    try:
        with open(digest_path, "rb") as f:
            want = f.read(256).decode("ascii", "replace").strip()
    except OSError as exc:
        raise _Damaged(
            f"{digest_path.name} cannot be read ({exc.strerror}), so the library cannot be verified"
        ) from None
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
        raise _Damaged(
            f"its SHA-256 {got[:16]}... does not match {want[:16]}... recorded in {digest_path.name} at build time "
            "(a truncated, damaged or replaced file)"
        )


def _packaged_library() -> Path | None:
    """The library built into the installed package (None in a source tree never built)."""
    path = _HERE / _sources.LIBRARY
    return path if path.is_file() else None


def _load() -> None:
    with _lock:
        if _state["loaded"]:
            return
        try:
            _load_locked()
        finally:
            _state["loaded"] = True


def _load_locked() -> None:
    if _ENV["no_kernel"]:
        _state["reason"] = "disabled by DROPKIT_NO_KERNEL=1; using the reference backend"
        return
    src_hash = _build._current_hash()
    lib = None
    packaged = _packaged_library()
    note = ""
    if packaged is not None and not _build._extra_cflags():
        try:
            _verify_packaged(packaged)  # before dlopen: a damaged library can kill the process there
        except (OSError, _Damaged) as exc:
            reason = f"the installed library {packaged} is not loaded: {exc}; using the reference backend"
            _state["reason"] = reason
            _warn_at_user(
                f"dropkit: {reason}, which is several times slower. Reinstall dropkit "
                "(pip install --force-reinstall dropkit, or rebuild a source tree with "
                "`python setup.py build_ext --inplace`) to restore the compiled kernel."
            )
            return
        try:
            lib, path, how = _open(packaged, src_hash), packaged, "installed with the package, SHA-256 verified"
        except (OSError, _Unusable) as exc:
            note = f"the installed library {packaged} is not usable ({exc}); "
    if lib is None:
        try:
            if src_hash is None:
                raise RuntimeError("the package has neither a built library nor the C sources")
            lib, path, how = _build._build_and_load(src_hash, _open)
            how = note + how
        except Exception as exc:  # noqa: BLE001 - any failure means: fall back, and say why
            reason = f"compiled CPU kernel unavailable ({note}{type(exc).__name__}: {exc}); using the reference backend"
            _state["reason"] = reason
            _warn_at_user(
                f"dropkit: {reason}, which is several times slower. For the fast path install a "
                "dropkit wheel built for this platform, or make a C compiler available (gcc or clang "
                "on PATH, or CC=...) and run again."
            )
            return
    codes = {name: int(lib.dk_abi_constant(f"DK_ISA_{name.upper()}".encode())) for name in ISAS}
    dtypes = {
        dt: int(lib.dk_abi_constant(f"DK_{tag}".encode()))
        for dt, tag in (
            (torch.float32, "F32"),
            (torch.float64, "F64"),
            (torch.float16, "F16"),
            (torch.bfloat16, "BF16"),
        )
    }
    if min(codes.values()) < 0 or min(dtypes.values()) < 0:
        _state["reason"] = f"the library {path} lacks ABI constants; using the reference backend"
        return
    _state["threads"] = _borrow_openmp(lib)
    if _ENV["spin_us"] is not None:
        lib.dk_set_spin_us(_ENV["spin_us"])
    feats = lib.dk_cpu_features()
    supported = tuple(name for name in ISAS if feats & (1 << codes[name]))
    _state.update(
        lib=lib,
        codes=codes,
        dtypes=dtypes,
        supported=supported,
        path=str(path),
        how=how,
        best=next(name for name in _PREFERENCE if name in supported),
    )
    forced = _ENV["isa"]
    if forced is not None and forced not in supported:
        _warn_at_user(
            f"dropkit: DROPKIT_CPU_ISA={forced!r} is not supported by this CPU (it supports "
            f"{', '.join(supported)}); using {_state['best']!r}"
        )
        forced = None
    _apply_isa(forced)


_OPENMP_RUNTIMES = ("libgomp.so.1", "libomp.so", "libomp.so.5", "libiomp5.so", "libomp.dylib", "libiomp5.dylib")


def _borrow_openmp(lib: ctypes.CDLL) -> str:
    """Hand the C library the OpenMP runtime torch runs on, so that parallel calls use
    torch's own (already spinning) thread team instead of competing with it. The runtime is
    found among the libraries already loaded (``RTLD_NOLOAD``: nothing new is loaded)."""
    if _ENV["pool"] == "pthread":
        return "own pthread pool (DROPKIT_CPU_POOL=pthread)"
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return "own pthread pool (torch's parallel backend is not OpenMP)"
    noload = getattr(os, "RTLD_NOLOAD", 0)
    if not noload:
        return "own pthread pool (this platform has no RTLD_NOLOAD)"
    for name in _OPENMP_RUNTIMES:
        try:
            omp = ctypes.CDLL(name, mode=noload | getattr(os, "RTLD_LOCAL", 0))
            par, tnum = omp.GOMP_parallel, omp.omp_get_thread_num
        except (OSError, AttributeError):
            continue
        if lib.dk_use_openmp(ctypes.cast(par, ctypes.c_void_p), ctypes.cast(tnum, ctypes.c_void_p)):
            return f"torch's OpenMP team ({name})"
    return "own pthread pool (torch's OpenMP runtime not found among the loaded libraries)"


def _apply_isa(name: str | None) -> None:
    if name is None:
        name, note = _state["best"], "best this CPU supports"
    else:
        note = "set by DROPKIT_CPU_ISA or set_isa"
    _state["isa"] = _state["codes"][name]
    _state["isa_name"] = name
    _state["name"] = f"cpu-{name}"
    _state["reason"] = (
        f"compiled kernel loaded from {_state['path']} ({_state['how']}; {name}: {note}; threads: {_state['threads']})"
    )
