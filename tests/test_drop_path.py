"""drop_path / DropPath (stochastic depth) and the linear depth rule drop_path_rates."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F
from variant_helpers import ALPHA, DTYPES, constant_over, positive, saved_bytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_per_sample(dtype):
    x = positive((16, 3, 5), dtype)
    y = F.drop_path(x, 0.5, seed=1)
    assert constant_over(y, x, (1, 2))
    dropped = (y == 0).flatten(1).all(1)
    assert dropped.any() and (~dropped).any()


def test_scale_by_keep():
    x = positive((64, 4))
    y = F.drop_path(x, 0.25, seed=2)
    kept = (y != 0).all(1)
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y2 = F.drop_path(x, 0.25, scale_by_keep=False, seed=2)
    assert torch.equal(y2[kept], x[kept]) and (y2[~kept] == 0).all()


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_eval_is_identity_and_training_default(scale_by_keep):
    x = positive((8, 3))
    assert F.drop_path(x, 0.5, training=False, scale_by_keep=scale_by_keep) is x
    assert not torch.equal(F.drop_path(x, 0.5, scale_by_keep=scale_by_keep), x)  # unlike timm, a bare call drops


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_rate_binomial(p):
    n = 20000
    y = F.drop_path(torch.ones(n, 2), p, seed=3)
    assert binomtest(int((y[:, 0] != 0).sum()), n, 1 - p).pvalue > ALPHA


def test_errors_and_autograd():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        F.drop_path(torch.tensor(1.0), 0.5)
    with pytest.raises(TypeError, match="scale_by_keep"):
        F.drop_path(torch.ones(2), 0.5, scale_by_keep=None)
    with pytest.raises(ValueError, match=r"`p`.*Received: p=-0.1"):
        F.drop_path(torch.ones(2), -0.1)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.drop_path(t, 0.5, seed=1), x)
    assert saved_bytes(lambda t: F.drop_path(t, 0.5, seed=1).sum(), x) == 0


def test_drop_path_rates():
    assert F.drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert F.drop_path_rates(0.2, 1) == [0.0]
    r = F.drop_path_rates(0.1, 12)
    assert r[0] == 0.0 and r[-1] == 0.1 and all(b > a for a, b in zip(r, r[1:]))
    torch.testing.assert_close(torch.tensor(r, dtype=torch.float64), torch.linspace(0, 0.1, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="depth"):
        F.drop_path_rates(0.1, 0)
    with pytest.raises(ValueError, match="p_max"):
        F.drop_path_rates(1.5, 3)


def test_module():
    m = dropkit.nn.DropPath(0.2)
    assert m.p == m.drop_prob == 0.2 and repr(m) == "DropPath(p=0.2, scale_by_keep=True)"
    x = positive((8, 4))
    assert m.eval()(x) is x


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), p=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_hypothesis_one_value_per_sample(shape, p, seed):
    x = positive(tuple(shape))
    y = F.drop_path(x, p, seed=seed)
    zero = (y == 0).reshape(shape[0], -1)
    assert bool((zero.all(1) | (~zero).all(1)).all())
