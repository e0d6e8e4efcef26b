"""gaussian_dropout / gaussian_noise and their modules: moments, eval, p = 1, autograd regenerating the noise."""

from __future__ import annotations

import math

import pytest
import torch

import dropkit
from dropkit import functional as F
from variant_helpers import DTYPES, mean_bound, saved_bytes


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_gaussian_dropout_factor_moments(p):
    n = 1 << 18
    f = F.gaussian_dropout(torch.ones(n, dtype=torch.float64), p, seed=1)
    var = p / (1 - p)
    assert abs(float(f.mean()) - 1.0) < mean_bound(math.sqrt(var), n)
    # the sample variance of a normal has standard error var * sqrt(2 / n)
    assert abs(float(f.var()) - var) < 5 * var * math.sqrt(2 / n)


def test_gaussian_noise_moments_and_shift():
    n = 1 << 18
    x = torch.full((n,), 3.0, dtype=torch.float64)
    y = F.gaussian_noise(x, 0.5, seed=2)
    assert abs(float(y.mean()) - 3.0) < mean_bound(0.5, n)
    assert abs(float(y.std()) - 0.5) < 5 * 0.5 / math.sqrt(2 * n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_and_seed(dtype):
    x = torch.ones(32, 8, dtype=dtype)
    for op, arg in ((F.gaussian_dropout, 0.3), (F.gaussian_noise, 0.3)):
        a, b, c = op(x, arg, seed=3), op(x, arg, seed=3), op(x, arg, seed=4)
        assert a.dtype == dtype and torch.equal(a, b) and not torch.equal(a, c)


def test_noise_is_the_contract_normal():
    z = dropkit.rng.normal((4, 5), seed=9, dtype=torch.float64)
    torch.testing.assert_close(F.gaussian_noise(torch.zeros(4, 5, dtype=torch.float64), 2.0, seed=9), 2 * z)
    torch.testing.assert_close(F.gaussian_dropout(torch.ones(4, 5, dtype=torch.float64), 0.5, seed=9), 1 + z)


def test_eval_and_zero_rate_are_identity():
    x = torch.randn(10)
    assert F.gaussian_dropout(x, 0.5, training=False) is x and F.gaussian_dropout(x, 0.0) is x
    assert F.gaussian_noise(x, 0.5, training=False) is x and F.gaussian_noise(x, 0.0) is x
    assert not torch.equal(F.gaussian_dropout(x, 0.5), x) and not torch.equal(F.gaussian_noise(x, 0.1), x)


def test_errors():
    x = torch.ones(3)
    with pytest.raises(ValueError, match=r"\[0, 1\).*infinite at p = 1.*Received: p=1"):
        F.gaussian_dropout(x, 1.0)
    with pytest.raises(ValueError, match="infinite"):
        dropkit.nn.GaussianDropout(1)
    with pytest.raises(ValueError, match=r"`std`.*\[0, inf\).*Received: std=-0.1"):
        F.gaussian_noise(x, -0.1)
    with pytest.raises(ValueError, match="std"):
        dropkit.nn.GaussianNoise(float("inf"))
    with pytest.raises(TypeError, match="std"):
        F.gaussian_noise(x, "0.1")


def test_autograd_regenerates_the_noise():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.gaussian_dropout(t, 0.4, seed=1), x)
    assert torch.autograd.gradgradcheck(lambda t: F.gaussian_dropout(t, 0.4, seed=1), x)
    assert torch.autograd.gradcheck(lambda t: F.gaussian_noise(t, 0.4, seed=1), x)
    assert saved_bytes(lambda t: F.gaussian_dropout(t, 0.4, seed=1).sum(), x) == 0
    assert saved_bytes(lambda t: F.gaussian_noise(t, 0.4, seed=1).sum(), x) == 0
    y = F.gaussian_dropout(x, 0.4, seed=1)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, y / x)  # the gradient is the same noise as the forward


def test_modules():
    m = dropkit.nn.GaussianDropout(0.25, seed=3)
    assert m.p == 0.25 and repr(m) == "GaussianDropout(p=0.25, seed=3)"
    n = dropkit.nn.GaussianNoise(0.1)
    assert n.p == 0.0 and n.std == 0.1 and repr(n) == "GaussianNoise(std=0.1)"
    x = torch.randn(5)
    assert m.eval()(x) is x and n.eval()(x) is x


@pytest.mark.parametrize("n,offset,stream", [(1, 0, 0), (7, 3, 5), (1000, 12345, 2**40 + 3), (0, 5, 0)])
def test_cpu_uniform_words_equal_the_portable_torch_path(n, offset, stream):
    a = dropkit.rng.uniform_words_numpy(n, 2**63 + 9, stream, offset)
    b = dropkit.rng.uniform_words_torch(n, 2**63 + 9, stream, offset)
    assert torch.equal(a, b)
