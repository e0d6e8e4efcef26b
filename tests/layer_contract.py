"""The one layer contract every dropkit dropout module must satisfy.

Add a :class:`LayerCase` to ``LAYER_CASES`` for each new module; ``test_layer_contract.py``
runs every check on every case (shape and dtype kept, eval behaviour, p = 0, p = 1
without NaN, backward runs, same seed same output, other seed other output, repr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import dropkit.nn as dnn


@dataclass
class LayerCase:
    name: str
    #: make(p, seed) -> module in training mode
    make: Callable[[float, int | None], torch.nn.Module]
    shape: tuple[int, ...] = (4, 6, 5, 5)
    #: expected eval output for input x and rate p (default: identity)
    eval_fn: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    #: at p = 1 the output is all zeros (False: only "finite, no NaN" is checked)
    p1_zeros: bool = True
    #: rate used for the randomness checks
    p: float = 0.5
    #: p values the module accepts at the edges
    accepts_p0: bool = True
    accepts_p1: bool = True
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    repr_contains: tuple[str, ...] = field(default_factory=tuple)


LAYER_CASES: list[LayerCase] = [
    LayerCase("Dropout", lambda p, seed: dnn.Dropout(p, seed=seed), repr_contains=("Dropout(p=",)),
    LayerCase(
        "Dropout-classic",
        lambda p, seed: dnn.Dropout(p, scaling="classic", seed=seed),
        eval_fn=lambda x, p: x * (1 - p),
        repr_contains=("scaling='classic'",),
    ),
]
