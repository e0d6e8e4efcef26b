"""DropBlock under torch.compile(fullgraph=True): no Dynamo warning (the eager cache is not traced), same result."""

from __future__ import annotations

import copy
import logging
import warnings

import torch

import dropkit
from dropkit.functional import drop_block as db


def test_drop_block_compiles_fullgraph_without_a_dynamo_warning(caplog):
    torch._dynamo.reset()
    db._SEED_RATES.clear()
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), dropkit.nn.DropBlock2d(0.3, block_size=3, seed=7))
    x = torch.randn(2, 2, 10, 10)
    eager = copy.deepcopy(model)  # a module with seed= draws a new mask per call: compare first calls
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            out = torch.compile(model, fullgraph=True)(x)
    finally:
        torch._dynamo.reset()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "lru_cache" in m or "Dynamo" in m or "dynamo" in m], messages
    assert torch.equal(out, eager(x))
    assert len(db._SEED_RATES) == 1  # the eager call cached it; the traced one did not


def test_block_seed_rate_is_the_same_traced_and_cached():
    assert db.block_seed_rate(0.25, (9, 7), 4) == db._solve_seed_rate(0.25, (9, 7), 4)
