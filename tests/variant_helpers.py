"""Helpers shared by the variant tests (tests/test_spatial.py ... test_concrete.py)."""

from __future__ import annotations

import math

import torch

from dropkit.memory import saved_bytes  # noqa: F401 (the one implementation, used by the variant tests)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ALPHA = 1e-3  # significance of each binomial test (fixed seeds: deterministic, can still fail)


def positive(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Values in [0.5, 1.5): never zero, so zeros in an output are drops."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)


def constant_over(y: torch.Tensor, x: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """``y / x`` takes one value along ``dims`` (the factor is shared there)."""
    r = (y.double() / x.double())
    ref = r.amax(dim=dims, keepdim=True)
    return bool(torch.allclose(r, ref.expand_as(r), rtol=1e-2, atol=0))


def mean_bound(std: float, n: int, sigmas: float = 5.0) -> float:
    """``sigmas`` standard errors of a mean of ``n`` samples of standard deviation ``std``."""
    return sigmas * std / math.sqrt(n)
