"""dropkit.nn.Dropout as a drop-in for torch.nn.Dropout, its owned stream, and replace_dropout."""

from __future__ import annotations

import io

import pytest
import torch

import dropkit
from dropkit import nn as dnn


def _mlp(drop):
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), drop(0.3), torch.nn.Linear(16, 4))


def test_drop_in_for_torch():
    m = dnn.Dropout(0.3)
    assert isinstance(m, torch.nn.Dropout)
    assert repr(m) == repr(torch.nn.Dropout(0.3)) == "Dropout(p=0.3, inplace=False)"
    assert repr(dnn.Dropout(0.3, True)) == "Dropout(p=0.3, inplace=True)"
    assert list(m.parameters()) == [] and list(m.buffers()) == [] and m.state_dict() == {}


def test_state_dict_loads_strictly_both_ways():
    torch.manual_seed(0)
    t_model, d_model = _mlp(torch.nn.Dropout), _mlp(dnn.Dropout)
    d_model.load_state_dict(t_model.state_dict(), strict=True)
    t_model.load_state_dict(d_model.state_dict(), strict=True)


def test_follows_train_and_eval():
    m = dnn.Dropout(0.5)
    x = torch.ones(1000)
    assert (m(x) == 0).any()
    m.eval()
    assert m(x) is x
    classic = dnn.Dropout(0.5, scaling="classic").eval()
    torch.testing.assert_close(classic(x), x * 0.5)


def test_seeded_module_stream_and_resume():
    x = torch.ones(64, 64)
    a = dnn.Dropout(0.5, seed=123)
    outs = [a(x) for _ in range(5)]
    assert all(not torch.equal(outs[i], outs[i + 1]) for i in range(4))
    # call k equals the functional op with (seed, stream=k)
    assert torch.equal(outs[3], dropkit.functional.dropout(x, 0.5, seed=dropkit.rng.key_tensor(123, 3)))
    # resume: a fresh module loading the state after 3 calls draws calls 3, 4 exactly
    b = dnn.Dropout(0.5, seed=123)
    for _ in range(3):
        b(x)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = dnn.Dropout(0.5, seed=999)
    c.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert c.seed == 123
    assert torch.equal(c(x), outs[3]) and torch.equal(c(x), outs[4])
    assert "rng_state" in b.state_dict()
    assert repr(b) == "Dropout(p=0.5, inplace=False, seed=123)"


def test_seed_above_2_pow_63_round_trips():
    m = dnn.Dropout(0.5, seed=2**64 - 5)
    m(torch.ones(4))
    n = dnn.Dropout(0.5, seed=1)
    n.load_state_dict(m.state_dict())
    assert n.seed == 2**64 - 5 and n._calls == 1


def test_eval_does_not_advance_the_stream():
    m = dnn.Dropout(0.5, seed=1).eval()
    m(torch.ones(3))
    assert m._calls == 0


def test_module_gradients_and_inplace():
    m = dnn.Dropout(0.5, inplace=True, seed=4)
    a = torch.randn(100, requires_grad=True)
    h = a + 0
    y = m(h)
    assert y is h
    y.sum().backward()
    assert torch.equal(a.grad != 0, y != 0)


def test_replace_dropout_swaps_in_place():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.Dropout(0.2), torch.nn.Sequential(torch.nn.Dropout(0.7, inplace=True))
    )
    model[2].eval()
    report = dnn.replace_dropout(model, scaling="classic")
    assert report.model is model and [r.path for r in report.replaced] == ["1", "2.0"] and not report.not_replaced
    assert type(model[1]) is dnn.Dropout and model[1].p == 0.2 and model[1].scaling == "classic"
    inner = model[2][0]
    assert type(inner) is dnn.Dropout and inner.p == 0.7 and inner.inplace and not inner.training
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())


def test_replace_dropout_errors():
    with pytest.raises(TypeError, match="model"):
        dnn.replace_dropout("model")
    with pytest.raises(TypeError, match="seed"):
        dnn.replace_dropout(torch.nn.Sequential(), seed="1")
    with pytest.raises(ValueError, match="scaling"):
        dnn.replace_dropout(torch.nn.Sequential(), scaling="x")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"p": 2.0}, ValueError, "`p`"),
        ({"p": 0.5, "inplace": 1}, TypeError, "inplace"),
        ({"p": 0.5, "scaling": "keep"}, ValueError, "scaling"),
        ({"p": 0.5, "seed": -3}, ValueError, "seed"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dnn.Dropout(**kwargs)
