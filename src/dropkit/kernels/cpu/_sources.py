"""The CPU kernel's source files, compiler flags and source hash.

Shared by ``setup.py`` (which builds the library into the wheel) and the loader in
``__init__.py`` (which builds it at first use when a source tree has no built library).
Imports nothing from dropkit or torch, so ``setup.py`` can load it by path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: C translation units, linked into one shared library.
SOURCES = ("dropkit_cpu.c", "mask_fold.c", "dk_target_base.c", "dk_target_avx2.c", "dk_target_avx512.c")
#: Headers they include (part of the source hash).
HEADERS = ("dropkit_cpu.h", "dk_internal.h", "dk_body.h")
#: Compiler flags of every build (the per-target files carry their own ``#pragma GCC target``).
CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off")
#: The library's file name inside the installed package (no Python ABI tag: it is plain C loaded with ctypes).
LIBRARY = "_dropkit_cpu.so"
#: Suffix of the file holding a library's SHA-256 (hex), written next to it by ``setup.py`` and by first-use builds.
DIGEST_SUFFIX = ".sha256"


def source_hash(src_dir: str | Path) -> str:
    """SHA-256 (first 20 hex digits) of the sources and headers in ``src_dir``; compiled into the
    library as ``dk_source_hash()`` so that the loader can tell a stale build from a current one."""
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode() + b"\0" + (Path(src_dir) / name).read_bytes() + b"\0")
    return h.hexdigest()[:20]
