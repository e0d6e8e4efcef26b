"""Runs the shared layer contract (tests/layer_contract.py) over every registered module."""

from __future__ import annotations

import pytest
import torch

from layer_contract import LAYER_CASES, LayerCase

CASES = [pytest.param(c, id=c.name) for c in LAYER_CASES]


def _x(case: LayerCase, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(case.shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_shape_and_dtype_kept(case: LayerCase, dtype):
    if dtype not in case.dtypes:
        pytest.skip(f"{case.name} does not support {dtype}")
    x = _x(case, dtype)
    y = case.make(case.p, 1)(x)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("case", CASES)
def test_eval_behaviour(case: LayerCase):
    x = _x(case)
    m = case.make(case.p, 1).eval()
    y1, y2 = m(x), m(x)
    expected = x if case.eval_fn is None else case.eval_fn(x, case.p)
    torch.testing.assert_close(y1, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("case", CASES)
def test_p0_identity_in_training(case: LayerCase):
    if not case.accepts_p0:
        pytest.skip("p=0 not accepted")
    x = _x(case)
    torch.testing.assert_close(case.make(0.0, 1)(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_p1_no_nan(case: LayerCase):
    if not case.accepts_p1:
        with pytest.raises(ValueError, match="p"):
            case.make(1.0, 1)
        return
    x = _x(case) * 1e30  # large but finite inputs must not turn into NaN/inf
    y = case.make(1.0, 1)(x)
    assert torch.isfinite(y).all()
    if case.p1_zeros:
        assert (y == 0).all()


@pytest.mark.parametrize("case", CASES)
def test_backward_runs(case: LayerCase):
    x = _x(case).requires_grad_()
    y = case.make(case.p, 1)(x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", CASES)
def test_seed_determines_output(case: LayerCase):
    x = _x(case)
    a, b, c = case.make(case.p, 7)(x), case.make(case.p, 7)(x), case.make(case.p, 8)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("case", CASES)
def test_global_generator_reproducible(case: LayerCase):
    x = _x(case)
    m = case.make(case.p, None)
    torch.manual_seed(5)
    a = m(x)
    torch.manual_seed(5)
    b = m(x)
    c = m(x)
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.parametrize("case", CASES)
def test_repr(case: LayerCase):
    r = repr(case.make(case.p, None))
    assert type(case.make(case.p, None)).__name__ in r and str(case.p) in r
    for s in case.repr_contains:
        assert s in repr(case.make(case.p, 1)), (s, repr(case.make(case.p, 1)))
