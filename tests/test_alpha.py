"""alpha_dropout / feature_alpha_dropout and their modules: SELU statistics kept, structure, autograd."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F
from dropkit.functional.alpha import SELU_ALPHA_PRIME, alpha_coefficients
from variant_helpers import ALPHA, DTYPES, mean_bound, saved_bytes


def _standard_normal(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("feature", [False, True])
def test_mean_zero_variance_one(p, feature):
    n = 1 << 20
    x = _standard_normal(n).view(256, 64, 64)
    op = F.feature_alpha_dropout if feature else F.alpha_dropout
    y = op(x, p, seed=11).reshape(-1)
    # bounds from n: the mean's standard error is 1/sqrt(n_eff); the variance's is sqrt((m4 - 1) / n_eff);
    # with channel masks the n_eff independent units are the (sample, channel) pairs
    n_eff = 256 * 64 if feature else n
    m4 = float((y**4).mean())
    assert abs(float(y.mean())) < mean_bound(1.0, n_eff)
    assert abs(float(y.var()) - 1.0) < mean_bound(math.sqrt(m4 - 1.0), n_eff)


def test_coefficients_match_the_paper():
    for p in (0.1, 0.5, 0.9):
        a, b = alpha_coefficients(p)
        q = 1 - p
        # mean and variance of a * (x m + alpha'(1 - m)) + b for x ~ N(0, 1), m ~ Bernoulli(q)
        assert a * (1 - q) * SELU_ALPHA_PRIME + b == pytest.approx(0.0, abs=1e-12)
        assert a**2 * (q + (1 - q) * q * SELU_ALPHA_PRIME**2) == pytest.approx(1.0)


def test_matches_torch_given_the_same_mask():
    # torch's alpha_dropout with the same p: its dropped value and its affine map on kept values equal ours
    x = _standard_normal(4096)
    p = 0.3
    yt = torch.nn.functional.alpha_dropout(x, p, training=True)
    values, counts = torch.unique(yt, return_counts=True)
    dropped_value = values[counts.argmax()]
    a, b = alpha_coefficients(p)
    assert float(dropped_value) == pytest.approx(a * SELU_ALPHA_PRIME + b, rel=1e-6)
    kept = yt != dropped_value
    torch.testing.assert_close(yt[kept], a * x[kept] + b)
    y = F.alpha_dropout(x, p, seed=1)
    ours_kept = y != torch.tensor(a * SELU_ALPHA_PRIME + b, dtype=torch.float64)
    torch.testing.assert_close(y[ours_kept], a * x[ours_kept] + b)


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_drop_rate_binomial(p):
    n = 1 << 16
    y = F.alpha_dropout(torch.ones(n, dtype=torch.float64), p, seed=2)
    a, b = alpha_coefficients(p)
    dropped = int((y == a * SELU_ALPHA_PRIME + b).sum())
    assert binomtest(dropped, n, p).pvalue > ALPHA


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_feature_mask_per_sample_and_channel(dtype):
    x = torch.ones(8, 16, 3, 3, dtype=dtype)
    y = F.feature_alpha_dropout(x, 0.5, seed=3)
    assert y.dtype == dtype
    assert (y.flatten(2) == y.flatten(2)[:, :, :1]).all()  # x constant: y constant inside each channel
    assert len(torch.unique(y.float())) == 2


def test_edges_errors_autograd():
    x = _standard_normal(64)
    assert F.alpha_dropout(x, 0.5, training=False) is x
    assert F.alpha_dropout(x, 0.0) is x
    assert (F.alpha_dropout(x * 1e30, 1.0) == 0).all()
    assert not torch.equal(F.alpha_dropout(x, 0.5), x)  # training=True by default, unlike torch
    with pytest.raises(ValueError, match="2-D"):
        F.feature_alpha_dropout(torch.ones(5), 0.5)
    with pytest.raises(ValueError, match="`p`"):
        F.alpha_dropout(x, 2.0)
    xr = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    for op in (F.alpha_dropout, F.feature_alpha_dropout):
        assert torch.autograd.gradcheck(lambda t: op(t, 0.3, seed=5), xr)
        assert saved_bytes(lambda t: op(t, 0.3, seed=5).sum(), xr) == 0


def test_inplace():
    x = _standard_normal(100)
    expected = F.alpha_dropout(x, 0.4, seed=6)
    assert F.alpha_dropout(x, 0.4, inplace=True, seed=6) is x and torch.equal(x, expected)


def test_modules():
    m = dropkit.nn.AlphaDropout(0.1)
    assert isinstance(m, torch.nn.AlphaDropout) and m.p == 0.1
    f = dropkit.nn.FeatureAlphaDropout(0.2, seed=1)
    assert isinstance(f, torch.nn.FeatureAlphaDropout) and "seed=1" in repr(f)
