"""First-use builds of the CPU kernel: compile the sources into the user's private cache, and reuse them.

Only a source tree without a usable installed library (or ``DROPKIT_CPU_CFLAGS`` set) builds
at first use: the system C compiler (``CC``, else ``cc``, ``gcc``, ``clang``) compiles the
sources next to this file into ``<cache>/cpu-kernel/`` (:func:`dropkit._cache.private_dir`:
mode 0700, verified along the whole path), under a name keyed by the sources, compiler, flags
and machine, with its SHA-256 beside it; a cached library is opened only after its owner,
mode and digest checked out. A cache folder that fails the checks is not used: the kernel is
compiled into a fresh ``mkdtemp`` folder, removed after loading.
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
import tempfile
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from dropkit._cache import cache_root, check_private_file, private_dir
from dropkit.kernels.cpu import _sources

_SOURCES = _sources.SOURCES


_HERE = Path(__file__).resolve().parent
_PKG_DIR = str(_HERE.parents[1]) + os.sep  # .../dropkit/


class _Unusable(Exception):
    """A library file that loads but is not the current build (or not a dropkit kernel)."""


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


def _find_compiler(var: str = "CC", names: tuple[str, ...] = ("cc", "gcc", "clang")) -> list[str] | None:
    """The compiler in ``$var`` (None when it names none that exists), else the first of ``names`` on PATH."""
    cc = os.environ.get(var)
    if cc:
        parts = shlex.split(cc)
        return parts if parts and shutil.which(parts[0]) else None
    for name in names:
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _extra_cflags() -> list[str]:
    return shlex.split(os.environ.get("DROPKIT_CPU_CFLAGS", ""))


def _current_hash() -> str | None:
    """The hash of the sources next to this file (None in an install without them)."""
    try:
        return _sources.source_hash(_HERE)
    except OSError:
        return None


def _library_name(cc: list[str], flags: list[str], src_hash: str) -> str:
    """File name of a first-use build: keyed by the sources, the compiler, the flags and the machine."""
    return library_name("dropkit_cpu", cc, src_hash, flags)


def library_name(prefix: str, cc: list[str], *key: object) -> str:
    """``<prefix>-<hash>.so``, the hash over ``key``, the compiler (its path, size and mtime) and the machine."""
    h = hashlib.sha256()
    cc_real = os.path.realpath(shutil.which(cc[0]) or cc[0])
    st = os.stat(cc_real)
    h.update(repr((key, cc, cc_real, st.st_size, st.st_mtime_ns, platform.machine())).encode())
    return f"{prefix}-{h.hexdigest()[:20]}{'.dll' if os.name == 'nt' else '.so'}"


def _compile(cc: list[str], flags: list[str], src_hash: str, folder: Path) -> Path:
    """Compile the sources into a new file in ``folder`` (mode 0700); returns its path."""
    args = [*flags, f'-DDK_SOURCE_HASH="{src_hash}"', f"-I{_HERE}", *(str(_HERE / s) for s in _SOURCES)]
    return compile_library([*cc, *args], "dropkit_cpu.", folder)


def compile_library(cmd: list[str], prefix: str, folder: Path) -> Path:
    """Run ``cmd -o <new file in folder>`` (a compiler linking a shared library); returns the file (mode 0700).
    A failed compiler run raises ``RuntimeError`` with the end of its output."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp.so", dir=folder)
    os.close(fd)
    cmd = [*cmd, "-o", tmp]
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


def _build_and_load(src_hash: str, _open: Callable[[Path, str], ctypes.CDLL]) -> tuple[ctypes.CDLL, Path, str]:
    """First-use build: load the cached library of the current sources, else compile it.

    Returns the library, its path and how it got there.
    """
    cc = _find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    flags = [*_sources.CFLAGS, "-shared", *_extra_cflags()]
    return cached_build(
        "cpu-kernel",
        _library_name(cc, flags, src_hash),
        lambda folder: _compile(cc, flags, src_hash, folder),
        lambda path: _open(path, src_hash),
        "the CPU kernel",
    )


def cached_build(
    subfolder: str,
    name: str,
    compile_into: Callable[[Path], Path],
    open_library: Callable[[Path], ctypes.CDLL],
    what: str,
) -> tuple[ctypes.CDLL, Path, str]:
    """The library ``name`` from ``<cache>/<subfolder>``, verified, else compiled there by ``compile_into(folder)``
    (which returns a new file in ``folder``) and recorded with its SHA-256; ``open_library`` loads and checks it.

    Returns the library, its path and how it got there. Without a usable cache folder the library is compiled
    into a private temporary folder, removed after loading (``what`` names it in the warning).
    """
    try:
        folder: Path | None = private_dir(cache_root() / subfolder)
        note = ""
    except OSError as exc:
        folder, note = None, f"cache folder refused ({exc}); "
        _warn_at_user(
            f"dropkit: the kernel cache folder is refused ({exc}); {what} is compiled in a private "
            f"temporary folder instead, once per process. Fix the folder's owner and mode, or set "
            f"DROPKIT_CACHE_DIR to a folder of your own."
        )
    if folder is not None:
        lib_path = folder / name
        digest_path = folder / (name + _sources.DIGEST_SUFFIX)
        if os.path.lexists(lib_path):
            try:
                _check_cached(lib_path, digest_path)
                return open_library(lib_path), lib_path, "cached first-use build"
            except (OSError, _Unusable) as exc:  # corrupt, stale or not ours: rebuild it
                note = f"rebuilt the cached library ({type(exc).__name__}: {exc}); "
        try:
            tmp = compile_into(folder)
        except RuntimeError as exc:
            raise RuntimeError(f"{note}{exc}") from None
        try:
            lib = open_library(tmp)  # loaded from its unique name, so no stale handle is reused
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
        path = compile_into(Path(tmpdir))
        lib = open_library(path)
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
