"""ConcreteDropout: learned rate, relaxed mask, regulariser weighting (dense vs spatial), p as a float."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F
from variant_helpers import ALPHA


def test_p_is_a_float_and_learned():
    m = dropkit.nn.ConcreteDropout(0.2, seed=0)
    assert isinstance(m.p, float) and m.p == pytest.approx(0.2)
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    x = torch.randn(64, 16)
    loss = m(x).square().mean()  # the data term alone prefers less noise
    loss.backward()
    assert m.p_logit.grad is not None and m.p_logit.grad != 0
    opt.step()
    assert m.p != pytest.approx(0.2)


@pytest.mark.parametrize("spatial", [False, True])
def test_low_temperature_approaches_bernoulli(spatial):
    p = 0.3
    logit = torch.tensor(math.log(p / (1 - p)))
    x = torch.ones(512, 32, 2, 2)
    y = F.concrete_dropout(x, logit, temperature=1e-4, spatial=spatial, seed=1)
    f = (y * (1 - p)).reshape(-1)
    assert ((f < 1e-3) | (f > 1 - 1e-3)).float().mean() > 0.999  # nearly binary
    units = y[:, :, 0, 0] if spatial else y
    if spatial:
        assert torch.allclose(y, y[:, :, :1, :1].expand_as(y))
    kept = int((units > 0.5).sum())
    assert binomtest(kept, units.numel(), 1 - p).pvalue > ALPHA


def test_mean_is_kept_in_expectation():
    logit = torch.tensor(0.0)  # p = 0.5
    n = 1 << 18
    y = F.concrete_dropout(torch.ones(n), logit, temperature=0.1, seed=2)
    assert abs(float(y.mean()) - 1.0) < 5 * float(y.std()) / math.sqrt(n)


def test_regularizer_weighting():
    dense = dropkit.nn.ConcreteDropout(0.25, dropout_regularizer=1.0, weight_regularizer=0.0)
    dense(torch.randn(4, 10))
    p = 0.25
    neg_entropy = p * math.log(p) + (1 - p) * math.log(1 - p)
    assert dense.units == 10 and float(dense.regularizer().detach()) == pytest.approx(10 * neg_entropy, rel=1e-5)
    spatial = dropkit.nn.ConcreteDropout(0.25, spatial=True, dropout_regularizer=1.0)
    spatial(torch.randn(4, 6, 8, 8))
    assert spatial.units == 6  # channels, not C*H*W: one mask value per channel
    assert float(spatial.regularizer().detach()) == pytest.approx(6 * neg_entropy, rel=1e-5)
    conv = torch.nn.Conv2d(6, 3, 3)
    squares = sum(float(w.detach().pow(2).sum()) for w in conv.parameters())
    full = dropkit.nn.ConcreteDropout(0.25, spatial=True, weight_regularizer=0.5, dropout_regularizer=1.0)
    reg = full.regularizer(conv, units=6)
    assert float(reg.detach()) == pytest.approx(0.5 * squares / 0.75 + 6 * neg_entropy, rel=1e-5)
    reg.backward()
    assert full.p_logit.grad is not None and conv.weight.grad is not None


def test_eval_identity_and_errors():
    m = dropkit.nn.ConcreteDropout(0.1)
    x = torch.randn(3, 4)
    assert m.eval()(x) is x
    with pytest.raises(ValueError, match=r"`p`.*\(0, 1\)"):
        dropkit.nn.ConcreteDropout(0.0)
    with pytest.raises(ValueError, match="temperature"):
        dropkit.nn.ConcreteDropout(0.1, temperature=0)
    with pytest.raises(RuntimeError, match="units"):
        dropkit.nn.ConcreteDropout(0.1).regularizer()
    with pytest.raises(ValueError, match="2-D"):
        dropkit.nn.ConcreteDropout(0.1, spatial=True)(torch.ones(5))
    with pytest.raises(TypeError, match="p_logit"):
        F.concrete_dropout(x, 0.5)


def test_gradcheck_in_input_and_logit():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    logit = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: F.concrete_dropout(a, b, seed=3), (x, logit))


@pytest.mark.parametrize("logit", [100.0, -100.0, 1e30])
def test_extreme_logits_keep_output_and_regularizer_finite(logit):
    cd = dropkit.nn.ConcreteDropout(0.5, seed=1)
    with torch.no_grad():
        cd.p_logit.fill_(logit)
    x = torch.randn(64, 16)
    y = cd(x)
    reg = cd.regularizer(torch.nn.Linear(16, 4))
    assert torch.isfinite(y).all() and torch.isfinite(reg)
    assert 0.0 < cd.p < 1.0
    y2 = dropkit.functional.concrete_dropout(x, torch.tensor(logit), seed=1)
    assert torch.isfinite(y2).all()


@pytest.mark.parametrize("spatial", [False, True])
def test_autograd_keeps_the_input_and_the_logit_only(spatial):
    """The uniforms and the relaxed mask are regenerated from the key in backward: the saved bytes are the input's
    and the logit's (torch ops would keep the mask, its ratio and the sigmoid: 3x the input)."""
    from variant_helpers import saved_bytes

    x = torch.randn(8, 6, 5, 5)
    logit = torch.tensor(-1.0, requires_grad=True)
    got = saved_bytes(lambda t: F.concrete_dropout(t, logit, spatial=spatial, seed=2), x)
    # the input, the clamped logit (this function) and the raw logit (clamp's own backward): two scalars
    assert got == x.numel() * x.element_size() + 2 * logit.element_size()


def test_gradients_forward_ad_and_double_backward_of_the_regenerating_function():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    logit = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)

    def fn(x, logit):
        return F.concrete_dropout(x, logit, temperature=0.5, seed=3)

    assert torch.autograd.gradcheck(fn, (x, logit), check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)  # fmt: skip
    assert torch.autograd.gradgradcheck(fn, (x, logit))
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, logit), fn(x, logit), rtol=0, atol=0)
