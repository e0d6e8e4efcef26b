"""Checks shared by the variants whose noise is not a plain keep mask (Gaussian, alpha, DropBlock, word dropout)."""

from __future__ import annotations

import torch

from dropkit import ops
from dropkit._validation import check_bool, check_float_tensor, check_p
from dropkit.functional.dropout import zeros_like_input
from dropkit.seed import check_seed_arg

__all__ = ["check_common", "zeros_like_input", "write_inplace"]


def check_common(
    input: object,
    p: object,
    training: object,
    seed: object,
    generator: object,
    *,
    allow_one: bool = True,
    p_name: str = "p",
) -> float:
    """The checks every variant runs first (in eval too): tensor, rate, flags, key arguments.

    Returns ``p`` as a ``float``.
    """
    check_float_tensor(input)
    p = check_p(p, p_name, allow_one=allow_one)
    check_bool(training, "training")
    check_seed_arg(seed, generator)
    return p


def write_inplace(input: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``input.copy_(y)`` for the variants' ``inplace=True`` (torch's in-place checks run before any write)."""
    ops.check_inplace(input)
    return input.copy_(y)
