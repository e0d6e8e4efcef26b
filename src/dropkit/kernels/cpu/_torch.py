"""The C++ registration of the CPU kernels: ``dk_torch.cpp`` built against the torch in use, then registered.

``dropkit::dropout``, ``dropkit::dropout_`` and ``dropkit::gaussian_dropout`` carry every eager dropout call.
Registered from Python, each call on a CPU tensor crosses from the dispatcher into a Python kernel and from
there through ctypes into the C library: about 10 us, more than the whole kernel on a small tensor. Registered
from C++ (the registration ``TORCH_LIBRARY_IMPL`` makes), the dispatcher calls the C library directly.

torch's C++ ABI changes between versions, so the library is built at first use against the torch in use
(``CXX``, else ``c++``, ``g++``, ``clang++``; about 8 s on 2 cores, once per torch version) into the kernel
cache (``<cache>/cpu-torch``, see :mod:`dropkit.kernels.cpu._build`), keyed by its source, the torch
version and install, and the compiler; it is opened only after its SHA-256 matched, like the C library.
Where it cannot be built or loaded (no C++ compiler, no torch headers, ``DROPKIT_CPP_KERNELS=0``), the
Python registration serves the same ops with the same bits: :func:`status` and
:func:`dropkit.backend_info` say which registration is in use and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from pathlib import Path

import torch

from dropkit.kernels.cpu import _build
from dropkit.kernels.cpu._abi import _ENV
from dropkit.kernels.cpu._abi import _state as _c_state
from dropkit.kernels.cpu._build import _HERE, _Unusable

#: The ops whose CPU kernel ``dk_torch.cpp`` registers (the others keep their Python registration).
OPS = ("dropout", "dropout_", "gaussian_dropout")
#: The ops whose ``Autograd`` kernel (every device) ``dk_torch.cpp`` registers with them: the ops linear in ``x``
#: (:data:`dropkit.ops.autograd.LINEAR`), ``dropout_`` and the fused op.
AUTOGRAD_OPS = (
    "dropout",
    "dropout_",
    "gaussian_dropout",
    "drop_block",
    "embedding_dropout",
    "fused_bias_act_dropout_add",
)
SOURCE = "dk_torch.cpp"
#: Compiler flags of the build (the include, define and link arguments are added per torch).
CXXFLAGS = ("-O2", "-std=c++20", "-fPIC", "-shared", "-w")

_lock = threading.Lock()
_state: dict = {"ops": (), "reason": "not registered yet", "lib": None, "path": None}


def source_hash() -> str:
    """SHA-256 (first 20 hex digits) of ``dk_torch.cpp``, compiled into the library as ``dk_torch_source_hash()``."""
    return hashlib.sha256((_HERE / SOURCE).read_bytes()).hexdigest()[:20]


def _torch_paths() -> tuple[Path, list[Path]]:
    """torch's library folder and include folders (what ``torch.utils.cpp_extension`` computes, without its import)."""
    root = Path(torch.__file__).resolve().parent
    include = root / "include"
    if not (include / "torch" / "library.h").is_file():
        raise RuntimeError(f"torch's C++ headers are not installed ({include / 'torch' / 'library.h'} is missing)")
    return root / "lib", [include, include / "torch" / "csrc" / "api" / "include"]


def _torch_build_id() -> tuple:
    """Which build of torch is installed: size and mtime of its C++ libraries (a reinstall of the same version
    string from another wheel, e.g. a CPU and a CUDA build, gets a library of its own)."""
    lib_dir = _torch_paths()[0]
    ids: list[tuple[str, int | None, int | None]] = []
    for name in ("libc10.so", "libtorch_cpu.so"):
        try:
            st = os.stat(lib_dir / name)
            ids.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            ids.append((name, None, None))
    return tuple(ids)


def _compile_args(src_hash: str) -> list[str]:
    lib_dir, includes = _torch_paths()
    abi = int(torch.compiled_with_cxx11_abi())
    return [
        *CXXFLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f'-DDK_TORCH_SOURCE_HASH="{src_hash}"',
        *(f"-I{p}" for p in includes),
        str(_HERE / SOURCE),
        f"-L{lib_dir}",
        f"-Wl,-rpath,{lib_dir}",  # libc10 / libtorch_cpu: the copies torch has already loaded
        "-lc10",
        "-ltorch_cpu",
    ]


def _open(path: Path, want_hash: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    try:
        lib.dk_torch_source_hash.restype = ctypes.c_char_p
        lib.dk_torch_register.restype = ctypes.c_int
        lib.dk_torch_register.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_char_p,
            ctypes.c_int64,
        ]
        lib.dk_torch_set_isa.restype = None
        lib.dk_torch_set_isa.argtypes = [ctypes.c_int]
    except AttributeError as exc:
        raise _Unusable(f"not a current dropkit C++ registration ({exc})") from None
    got = lib.dk_torch_source_hash().decode()
    if got != want_hash:
        raise _Unusable(f"built from other sources (hash {got}, the source here is {want_hash})")
    return lib


def _build_and_load() -> tuple[ctypes.CDLL, Path, str]:
    cxx = _build._find_compiler("CXX", ("c++", "g++", "clang++"))
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    src_hash = source_hash()
    args = _compile_args(src_hash)
    name = _build.library_name("dk_torch", cxx, src_hash, torch.__version__, _torch_build_id(), args)
    return _build.cached_build(
        "cpu-torch",
        name,
        lambda folder: _build.compile_library([*cxx, *args], "dk_torch.", folder),
        lambda path: _open(path, src_hash),
        "the C++ registration",
    )


def register(parallel_threshold: int) -> tuple[str, ...]:
    """Build (or reuse) and load ``dk_torch.cpp`` and register its CPU kernels of :data:`OPS`; returns the ops
    registered (empty where it could not be: :func:`status` says why). Needs the C library loaded."""
    with _lock:
        if _state["lib"] is not None:
            return _state["ops"]
        if _c_state["lib"] is None:
            _state["reason"] = "the compiled C kernel is not loaded"
            return ()
        if not _ENV["cpp_kernels"]:
            _state["reason"] = "disabled by DROPKIT_CPP_KERNELS=0"
            return ()
        try:
            lib, path, how = _build_and_load()
        except Exception as exc:  # noqa: BLE001 - any failure means: the Python registration serves, and why
            _state["reason"] = f"C++ registration unavailable ({type(exc).__name__}: {exc}); Python registration"
            return ()
        c = _c_state["lib"]
        fns = (ctypes.c_void_p * 3)(
            *(
                ctypes.cast(getattr(c, f), ctypes.c_void_p).value
                for f in ("dk_keep_mask", "dk_dropout_mul", "dk_gaussian_mul")
            )
        )
        dtypes = _c_state["dtypes"]
        codes = (ctypes.c_int * 4)(
            *(dtypes[dt] for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16))
        )
        err = ctypes.create_string_buffer(1024)
        rc = lib.dk_torch_register(fns, codes, _c_state["isa"], int(parallel_threshold), err, len(err))
        if rc < 0:
            _state["reason"] = f"C++ registration failed ({err.value.decode(errors='replace')}); Python registration"
            return ()
        _state.update(lib=lib, path=str(path), ops=OPS, reason=f"C++ registration from {path} ({how})")
        return OPS


def set_isa(code: int) -> None:
    """Make the registered C++ kernels run ISA ``code`` (called by :func:`dropkit.kernels.cpu.set_isa`)."""
    if _state["lib"] is not None:
        _state["lib"].dk_torch_set_isa(code)


def status() -> tuple[tuple[str, ...], str]:
    """``(ops registered from C++, reason)``."""
    return _state["ops"], _state["reason"]
