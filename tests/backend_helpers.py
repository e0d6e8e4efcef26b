"""Shared by the kernel tests: running a test on one backend and CPU instruction set, inputs with special
values, bit-for-bit comparison under the 16-bit NaN rule, and the CUDA marker."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import torch

from dropkit import kernels
from dropkit.kernels import cpu

#: The instruction sets of the compiled CPU kernel this machine can run.
ISAS = [name for name in ("scalar", "avx2", "avx512", "neon") if name in cpu.supported_isas()]


@contextlib.contextmanager
def backend(name: str, isa: str | None = None) -> Iterator[kernels.Backend]:
    """The backend ``name`` (``kernels.backend(name)``) with the CPU kernel's ``isa`` set inside the block."""
    be = kernels.backend(name)
    before = cpu.isa() if isa else None
    if isa:
        cpu.set_isa(isa)
    try:
        yield be
    finally:
        if isa:
            cpu.set_isa(before)


#: Integer views for comparing float bits.
INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}


def special_input(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random values plus inf, -inf, NaN, -0.0, tiny and huge values."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 3).to(dtype)
    specials = [math.inf, -math.inf, math.nan, -0.0, 0.0, torch.finfo(dtype).tiny / 4, torch.finfo(dtype).max, -1.0]
    k = min(n, len(specials))
    x[:k] = torch.tensor(specials[:k], dtype=torch.float64).to(dtype)
    return x


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, context: object = "") -> None:
    """Bit-identical. 16-bit dtypes: NaN included (the 16-bit NaN rule of docs/rng.md: 0x7E00 / 0x7FC0);
    32/64-bit dtypes: any NaN equals any NaN (their payloads are the hardware's, not part of the contract)."""
    assert a.dtype == b.dtype and a.shape == b.shape, context
    a, b = a.reshape(-1), b.reshape(-1)
    both_nan = torch.isnan(a) & torch.isnan(b)
    if a.dtype in (torch.float16, torch.bfloat16):
        both_nan = torch.zeros_like(both_nan)
    bad = (a.view(INT_VIEW[a.dtype]) != b.view(INT_VIEW[b.dtype])) & ~both_nan
    assert not bad.any(), (
        f"{int(bad.sum())} of {a.numel()} elements differ, first at {bad.nonzero()[0].tolist()} {context}".rstrip()
    )


def requires_cuda(fn):
    """Mark ``fn`` as a CUDA test and skip it without a device."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(fn))
