"""The compiled CPU kernel: the mask contract, ``dropout_mul``, ``uniform``, ``normal`` and ``gaussian_mul`` in SIMD C.

The C sources in this folder (plain C on raw pointers, no dependence on torch's C++ ABI;
``dropkit_cpu.h`` holds the ABI) are built into ``_dropkit_cpu.so`` when the package is
installed (``pip install``, ``pip wheel``, ``pip install -e``: see ``setup.py``) and loaded
from the installed package with :mod:`ctypes` (which releases the GIL during each call).

Only a source tree without a built library (or with one older than its sources) compiles
the kernel at first use, with the system C compiler, into a private folder of the user's
cache (``$DROPKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dropkit``, else ``~/.cache/dropkit``;
subfolder ``cpu-kernel``), created with mode 0700 and verified before every use: owned by
the user and not writable by group or others, the library file too. A folder that fails
the check is never used (the build then goes to a fresh private temporary folder for this
process), and a cached library that does not load or is not the current build is rebuilt.

One build runs on any x86-64 or arm64 CPU: the library has a body per instruction set and
runs the best one this CPU supports (:func:`status` says which). The results are
bit-identical to :mod:`dropkit.kernels.reference` on every ISA and for every thread count,
because each element's mask depends only on its global index.

Parallel calls run on torch's own OpenMP thread team when torch uses OpenMP (found with
``dlopen(RTLD_NOLOAD)``: already loaded, never loaded by us), else on the kernel's own
pthread pool.

Environment (read and validated once, at import; a bad value is reported by one warning
naming the variable and ignored):

* ``DROPKIT_NO_KERNEL=1``: do not build or load the kernel (the reference backend serves CPU).
* ``DROPKIT_CPU_ISA=scalar|avx2|avx512|neon``: run this ISA (for tests; the best one if the CPU lacks it).
* ``CC``: the C compiler of a first-use build (default ``cc``, then ``gcc``, then ``clang``).
* ``DROPKIT_CPU_POOL=pthread``: use the kernel's own thread pool instead of torch's OpenMP team.
* ``DROPKIT_CPU_SPIN_US``: how long an idle worker of the own pool spins before it sleeps (default 200).
* ``DROPKIT_CPU_CFLAGS``: extra flags of a first-use build (e.g. ``-fsanitize=address``; also makes
  the loader skip the installed library).

Without the library and without a working compiler, :func:`available` is ``False``, one
``RuntimeWarning`` (pointing at the user's call) says why and how to get the fast path,
and :func:`status` keeps the reason.
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
import types
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from dropkit._cache import cache_root, check_private_file, private_dir
from dropkit.kernels.cpu import _sources
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
    "normal",
    "gaussian_mul",
    "CAPABILITIES",
]

#: The primitives of :mod:`dropkit.kernels` this backend computes itself (the dispatcher sends
#: the others to :mod:`dropkit.kernels.reference`).
CAPABILITIES = frozenset({"keep_mask", "dropout_mul", "uniform", "normal", "gaussian_mul", "mask_fold"})

#: The instruction sets the library has a body for (a CPU supports some of them; not an order).
ISAS = ("scalar", "avx2", "avx512", "neon")
#: The one :func:`set_isa` ``(None)`` picks: the first of these that the CPU supports.
_PREFERENCE = ("avx512", "avx2", "neon", "scalar")
_SOURCES = _sources.SOURCES
_HERE = Path(__file__).resolve().parent
_PKG_DIR = str(_HERE.parents[1]) + os.sep  # .../dropkit/

#: Below this many elements a call stays on one thread. Measured on the 2-core AMD EPYC
#: (Zen 4) VM, fp32, 1 vs 2 threads: on torch's OpenMP team 2 threads win from 2^15
#: (1.07x at 2^15, 1.5x at 2^16, 2x from 2^17); on the kernel's own pool, with its worker
#: awake, from 2^14. (The own pool also stays on one thread below 2^19 elements while
#: its workers sleep: a wake-up costs ~50 us there.)
parallel_threshold = 1 << 15

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


def _read_env() -> dict:
    env: dict = {}
    raw = os.environ.get("DROPKIT_NO_KERNEL", "").strip()
    if raw.lower() not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        _env_warning("DROPKIT_NO_KERNEL", raw, "accepted: 1/0, true/false, yes/no, on/off", "the kernel stays enabled")
        raw = ""
    env["no_kernel"] = raw.lower() in ("1", "true", "yes", "on")
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
# Build and load
# ---------------------------------------------------------------------------
class _Unusable(Exception):
    """A library file that loads but is not the current build (or not a dropkit kernel)."""


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


def _extra_cflags() -> list[str]:
    return shlex.split(os.environ.get("DROPKIT_CPU_CFLAGS", ""))


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


def _current_hash() -> str | None:
    """The hash of the sources next to this file (None in an install without them)."""
    try:
        return _sources.source_hash(_HERE)
    except OSError:
        return None


def _library_name(cc: list[str], flags: list[str], src_hash: str) -> str:
    """File name of a first-use build: keyed by the sources, the compiler, the flags and the machine."""
    h = hashlib.sha256()
    cc_real = os.path.realpath(shutil.which(cc[0]) or cc[0])
    st = os.stat(cc_real)
    h.update(repr((src_hash, cc, cc_real, st.st_size, st.st_mtime_ns, flags, platform.machine())).encode())
    return f"dropkit_cpu-{h.hexdigest()[:20]}{'.dll' if os.name == 'nt' else '.so'}"


def _compile(cc: list[str], flags: list[str], src_hash: str, folder: Path) -> Path:
    """Compile the sources into a new file in ``folder`` (mode 0700); returns its path."""
    fd, tmp = tempfile.mkstemp(prefix="dropkit_cpu.", suffix=".tmp.so", dir=folder)
    os.close(fd)
    cmd = [*cc, *flags, f'-DDK_SOURCE_HASH="{src_hash}"', f"-I{_HERE}", *(str(_HERE / s) for s in _SOURCES), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {' | '.join(msg[-5:])}")
        os.chmod(tmp, 0o700)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _build_and_load(src_hash: str) -> tuple[ctypes.CDLL, Path, str]:
    """First-use build: load the cached library of the current sources, else compile it.

    Returns the library, its path and how it got there.
    """
    cc = _find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    flags = [*_sources.CFLAGS, "-shared", *_extra_cflags()]
    name = _library_name(cc, flags, src_hash)
    try:
        folder: Path | None = private_dir(cache_root() / "cpu-kernel")
        note = ""
    except OSError as exc:
        folder, note = None, f"cache folder refused ({exc}); "
        _warn_at_user(
            f"dropkit: the kernel cache folder is refused ({exc}); the CPU kernel is compiled in a private "
            f"temporary folder instead, once per process. Fix the folder's owner and mode, or set "
            f"DROPKIT_CACHE_DIR to a folder of your own."
        )
    if folder is not None:
        lib_path = folder / name
        digest_path = folder / (name + ".sha256")
        if os.path.lexists(lib_path):
            try:
                _check_cached(lib_path, digest_path)
                return _open(lib_path, src_hash), lib_path, "cached first-use build"
            except (OSError, _Unusable) as exc:  # corrupt, stale or not ours: rebuild it
                note = f"rebuilt the cached library ({type(exc).__name__}: {exc}); "
        try:
            tmp = _compile(cc, flags, src_hash, folder)
        except RuntimeError as exc:
            raise RuntimeError(f"{note}{exc}") from None
        try:
            lib = _open(tmp, src_hash)  # loaded from its unique name, so no stale handle is reused
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
            os.replace(tmp, lib_path)
            fd, tmp_digest = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(digest + "\n")
            os.replace(tmp_digest, digest_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return lib, lib_path, f"{note}compiled at first use"
    # No usable cache folder: a fresh private folder for this process only (mkdtemp creates it 0700).
    tmpdir = tempfile.mkdtemp(prefix="dropkit-kernel-")
    try:
        path = _compile(cc, flags, src_hash, Path(tmpdir))
        lib = _open(path, src_hash)
    except RuntimeError as exc:
        raise RuntimeError(f"{note}{exc}") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return lib, path, f"{note}compiled at first use in a private temporary folder, removed after loading"


def _check_cached(lib_path: Path, digest_path: Path) -> None:
    """Before a cached library is loaded: it and its SHA-256 file are ours and private, and the
    digest matches (a truncated library can crash dlopen with SIGBUS, so it is never opened)."""
    check_private_file(lib_path)
    check_private_file(digest_path)
    want = digest_path.read_text().strip()
    got = hashlib.sha256(lib_path.read_bytes()).hexdigest()
    if got != want:
        raise _Unusable(f"{lib_path} does not match its SHA-256 in {digest_path.name}")


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
    src_hash = _current_hash()
    lib = None
    packaged = _packaged_library()
    note = ""
    if packaged is not None and not _extra_cflags():
        try:
            lib, path, how = _open(packaged, src_hash), packaged, "installed with the package"
        except (OSError, _Unusable) as exc:
            note = f"the installed library {packaged} is not usable ({exc}); "
    if lib is None:
        try:
            if src_hash is None:
                raise RuntimeError("the package has neither a built library nor the C sources")
            lib, path, how = _build_and_load(src_hash)
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


def _warn_at_user(msg: str) -> None:
    """One ``RuntimeWarning`` attributed to the first caller outside dropkit and torch."""
    internal = (_PKG_DIR, os.path.dirname(torch.__file__) + os.sep, "<frozen ")
    f: types.FrameType | None = sys._getframe(1)
    level = 2
    while f is not None and f.f_code.co_filename.startswith(internal):
        # warnings.warn does not count importlib's frames (a warning raised during `import dropkit`)
        level += not ("importlib" in f.f_code.co_filename and "_bootstrap" in f.f_code.co_filename)
        f = f.f_back
    warnings.warn(msg, RuntimeWarning, stacklevel=level)


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
        args = (code, src.const_data_ptr(), dst.data_ptr(), n, _thr(p), scale)  # type: ignore[attr-defined]  # const: a COW input stays lazy
        _run(lib.dk_dropout_mul, n, args, seed, stream, offset)
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
    if t.numel() and t.const_data_ptr() == 0:  # type: ignore[attr-defined]  # (not in the stubs)
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
        args = (code, src.const_data_ptr(), 0 if broadcast else 1, dst.data_ptr(), n, float(sigma))  # type: ignore[attr-defined]
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
    if not out.is_contiguous() or ((broadcast or out.data_ptr() != src.data_ptr()) and _overlap(out, src)):
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    return out


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
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
        A.data_ptr(),
        X.data_ptr(),
        sxb,
        mask.data_ptr(),
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
        None if bias is None else bias.data_ptr(),
        int(relu),
        _state["isa"],
        torch.get_num_threads(),
    )
    if rc == -2:
        raise ValueError(f"mask_fold: every mask value must be 0 or scale={scale}")
    if rc:
        raise RuntimeError(f"dk_mask_fold_f32 failed with code {rc}")
    return out
