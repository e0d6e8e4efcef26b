"""locked_dropout / LockedDropout: one mask per sequence shared by every time step."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F
from variant_helpers import ALPHA, DTYPES, constant_over, positive, saved_bytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mask_shared_over_time_time_major(dtype):
    x = positive((9, 4, 6), dtype)
    y = F.locked_dropout(x, 0.5, seed=1)
    assert constant_over(y, x, (0,))
    assert (y == 0).any() and (y != 0).any()


def test_batch_first_and_feature_dims():
    x = positive((4, 9, 3, 2))  # (N, T, F1, F2)
    y = F.locked_dropout(x, 0.5, batch_first=True, seed=2)
    assert constant_over(y, x, (1,))
    assert torch.equal(y, F.dropout(x, 0.5, noise_shape=(4, 1, 3, 2), seed=2))


def test_unbatched_sequence_is_time_first():
    x = positive((9, 6))
    for bf in (False, True):  # as torch.nn.LSTM: unbatched input is (T, F) whatever batch_first
        assert constant_over(F.locked_dropout(x, 0.5, batch_first=bf, seed=3), x, (0,))


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_rate_binomial(p):
    y = F.locked_dropout(torch.ones(3, 512, 64), p, seed=4)
    kept = int((y[0] != 0).sum())
    assert binomtest(kept, 512 * 64, 1 - p).pvalue > ALPHA


def test_different_sequences_get_different_masks():
    y = F.locked_dropout(torch.ones(5, 64, 32), 0.5, seed=5)
    assert len({bytes((y[0, b] != 0).numpy().tobytes()) for b in range(64)}) == 64


def test_errors_edges_autograd():
    with pytest.raises(ValueError, match="at least 2 dimensions.*Received: a 1-D"):
        F.locked_dropout(torch.ones(5), 0.5)
    with pytest.raises(TypeError, match="batch_first"):
        F.locked_dropout(torch.ones(5, 2), 0.5, batch_first="yes")
    x = positive((5, 2, 3))
    assert F.locked_dropout(x, 0.5, training=False) is x
    assert (F.locked_dropout(x, 1.0) == 0).all()
    xr = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.locked_dropout(t, 0.5, seed=1), xr)
    assert saved_bytes(lambda t: F.locked_dropout(t, 0.5, seed=1).sum(), xr) == 0


def test_module():
    m = dropkit.nn.LockedDropout(0.3, batch_first=True)
    assert m.p == 0.3 and repr(m) == "LockedDropout(p=0.3, batch_first=True, inplace=False)"
    x = positive((2, 6, 4))
    assert constant_over(m(x), x, (1,))
    assert m.eval()(x) is x


@pytest.mark.parametrize("batch_first", [False, True])
def test_batch_shard_draws_the_global_batch_masks(batch_first):
    x = positive((8, 6, 5) if batch_first else (6, 8, 5))
    full = F.locked_dropout(x, 0.5, batch_first=batch_first, seed=3)
    shard = x[4:] if batch_first else x[:, 4:]
    with dropkit.rng.batch_shard(4):
        part = F.locked_dropout(shard, 0.5, batch_first=batch_first, seed=3)
    assert torch.equal(part, full[4:] if batch_first else full[:, 4:])
