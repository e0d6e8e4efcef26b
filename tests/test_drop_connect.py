"""drop_connect / remove_drop_connect: DropConnect as a torch.nn.utils.parametrize parametrization."""

from __future__ import annotations

import warnings

import pytest
import torch
from scipy.stats import binomtest
from torch.nn.utils import parametrize

import dropkit
from variant_helpers import ALPHA


def _modules():
    return {
        "Linear": (torch.nn.Linear(8, 6), "weight", torch.randn(3, 8)),
        "Conv1d": (torch.nn.Conv1d(3, 4, 3), "weight", torch.randn(2, 3, 9)),
        "Conv2d": (torch.nn.Conv2d(3, 4, 3), "weight", torch.randn(2, 3, 6, 6)),
        "LSTM": (torch.nn.LSTM(4, 5, 2), "weight_hh_l0", torch.randn(6, 2, 4)),
        "GRU": (torch.nn.GRU(4, 5), "weight_hh_l0", torch.randn(6, 2, 4)),
        "dropkit.LSTM": (dropkit.nn.LSTM(4, 5, 2, dropout=0.2), "weight_hh_l1", torch.randn(6, 2, 4)),
    }


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("kind", list(_modules()))
def test_train_eval_grads_and_no_warnings(kind):
    torch.manual_seed(0)
    module, name, x = _modules()[kind]
    original = getattr(module, name)
    reference = _out(module.eval()(x)).detach()
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "weights are not part of single contiguous chunk" or other warnings
        dropkit.nn.drop_connect(module, name, p=0.5, seed=1)
        assert getattr(module.parametrizations, name).original is original
        y = _out(module(x))
        assert not torch.equal(y, reference)
        y.square().sum().backward()
        assert original.grad is not None and (original.grad != 0).any()
        module.eval()
        assert torch.equal(getattr(module, name), original)  # eval: the full weight itself
        assert torch.equal(_out(module(x)), reference)


def test_mask_rate_and_scale():
    fc = dropkit.nn.drop_connect(torch.nn.Linear(256, 256), p=0.3, seed=2)
    w, w0 = fc.weight, fc.parametrizations.weight.original
    kept = w != 0
    assert binomtest(int(kept.sum()), kept.numel(), 0.7).pvalue > ALPHA
    torch.testing.assert_close(w[kept], w0[kept] / 0.7)
    assert not torch.equal(fc.weight != 0, kept)  # each access in training draws a new mask


def test_state_dict_round_trip_and_remove():
    a = dropkit.nn.drop_connect(torch.nn.Linear(5, 4), p=0.5, seed=7)
    a(torch.randn(2, 5))
    state = a.state_dict()
    assert "parametrizations.weight.original" in state and "parametrizations.weight.0.rng_state" in state
    b = dropkit.nn.drop_connect(torch.nn.Linear(5, 4), p=0.5, seed=7)
    b.load_state_dict(state)
    x = torch.randn(2, 5)
    assert torch.equal(a(x), b(x))  # same weights and the same stream position
    original = a.parametrizations.weight.original
    dropkit.nn.remove_drop_connect(a)
    assert a.weight is original and isinstance(a.weight, torch.nn.Parameter)
    assert not parametrize.is_parametrized(a) and set(a.state_dict()) == {"weight", "bias"}


def test_remove_on_rnn_restores_fused_weights():
    lstm = torch.nn.LSTM(4, 5)
    w = lstm.weight_hh_l0
    dropkit.nn.drop_connect(lstm, "weight_hh_l0", 0.5)
    lstm(torch.randn(3, 1, 4))
    dropkit.nn.remove_drop_connect(lstm, "weight_hh_l0")
    assert lstm.weight_hh_l0 is w and lstm._flat_weights[1] is w


def test_errors():
    fc = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"`name`.*Received: name='nope'"):
        dropkit.nn.drop_connect(fc, "nope")
    with pytest.raises(TypeError, match="module"):
        dropkit.nn.drop_connect("fc")
    with pytest.raises(ValueError, match="`p`"):
        dropkit.nn.drop_connect(fc, p=1.2)
    with pytest.raises(ValueError, match="no DropConnect"):
        dropkit.nn.remove_drop_connect(fc)
    dropkit.nn.drop_connect(fc, p=0.1)
    with pytest.raises(ValueError, match="already has DropConnect"):
        dropkit.nn.drop_connect(fc, p=0.1)


def test_weight_mask_is_the_same_on_every_batch_shard():
    fc = dropkit.nn.drop_connect(torch.nn.Linear(6, 4), p=0.5)
    torch.manual_seed(3)
    w = fc.weight
    torch.manual_seed(3)
    with dropkit.rng.batch_shard(16):
        assert torch.equal(fc.weight, w)
    rnn = dropkit.nn.GRU(4, 5, weight_dropout=0.5, seed=1)
    x = torch.randn(3, 2, 4)
    ref = dropkit.nn.GRU(4, 5, weight_dropout=0.5, seed=1)
    ref.load_state_dict(rnn.state_dict())
    with dropkit.rng.batch_shard(7):  # per-sample masks would shift; the weight mask must not
        out = rnn(x)[0]
    assert torch.equal(out, ref(x)[0])
