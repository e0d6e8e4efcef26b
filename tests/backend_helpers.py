"""Running a test on one kernel backend and CPU instruction set (shared by the kernel tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dropkit import kernels
from dropkit.kernels import cpu

#: The instruction sets of the compiled CPU kernel this machine can run.
ISAS = [name for name in ("scalar", "avx2", "avx512", "neon") if name in cpu.supported_isas()]


@contextlib.contextmanager
def backend(name: str, isa: str | None = None) -> Iterator[None]:
    """Force ``kernels.set_backend(name)`` (and the CPU kernel's ``isa``) inside the block, then restore both."""
    kernels.set_backend(name)
    before = cpu.isa() if isa else None
    if isa:
        cpu.set_isa(isa)
    try:
        yield
    finally:
        kernels.set_backend("auto")
        if isa:
            cpu.set_isa(before)
