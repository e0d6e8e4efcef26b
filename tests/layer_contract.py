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
    # -- variants (issue #5); LSTM/GRU/EmbeddingDropout take other inputs: tests/test_rnn.py, test_embedding.py
    LayerCase("Dropout1d", lambda p, seed: dnn.Dropout1d(p, seed=seed), shape=(4, 6, 10)),
    LayerCase("Dropout1d-unbatched", lambda p, seed: dnn.Dropout1d(p, seed=seed), shape=(12, 10)),
    LayerCase("Dropout2d", lambda p, seed: dnn.Dropout2d(p, seed=seed)),
    LayerCase("Dropout2d-unbatched", lambda p, seed: dnn.Dropout2d(p, seed=seed), shape=(16, 5, 5)),
    LayerCase("Dropout3d", lambda p, seed: dnn.Dropout3d(p, seed=seed), shape=(2, 8, 3, 4, 5)),
    LayerCase("AlphaDropout", lambda p, seed: dnn.AlphaDropout(p, seed=seed)),
    LayerCase("FeatureAlphaDropout", lambda p, seed: dnn.FeatureAlphaDropout(p, seed=seed)),
    LayerCase("GaussianDropout", lambda p, seed: dnn.GaussianDropout(p, seed=seed), accepts_p1=False),
    LayerCase(
        "GaussianNoise", lambda std, seed: dnn.GaussianNoise(std, seed=seed), p1_zeros=False, repr_contains=("std=",)
    ),
    LayerCase(
        "DropBlock2d", lambda p, seed: dnn.DropBlock2d(p, 3, seed=seed), shape=(4, 6, 8, 8), repr_contains=("block_size=3",)
    ),
    LayerCase("DropBlock2d-even-shared", lambda p, seed: dnn.DropBlock2d(p, 2, share_channels=True, seed=seed)),
    LayerCase("DropBlock3d", lambda p, seed: dnn.DropBlock3d(p, 2, seed=seed), shape=(2, 6, 4, 5, 6)),
    LayerCase("DropPath", lambda p, seed: dnn.DropPath(p, seed=seed), shape=(32, 3, 4)),
    LayerCase("DropPath-noscale", lambda p, seed: dnn.DropPath(p, scale_by_keep=False, seed=seed), shape=(32, 3, 4)),
    LayerCase("LockedDropout", lambda p, seed: dnn.LockedDropout(p, seed=seed), shape=(7, 4, 6)),
    LayerCase("LockedDropout-batch-first", lambda p, seed: dnn.LockedDropout(p, batch_first=True, seed=seed), shape=(4, 7, 6)),
    LayerCase("DropConnect", lambda p, seed: dnn.DropConnect(p, seed=seed), shape=(16, 12)),
    LayerCase(
        "ConcreteDropout", lambda p, seed: dnn.ConcreteDropout(p, seed=seed), accepts_p0=False, accepts_p1=False
    ),
    LayerCase(
        "ConcreteDropout-spatial",
        lambda p, seed: dnn.ConcreteDropout(p, spatial=True, seed=seed),
        accepts_p0=False,
        accepts_p1=False,
        repr_contains=("spatial=True",),
    ),
]
