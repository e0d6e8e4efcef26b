"""dropkit.nn.LSTM / GRU: drop-ins for torch's with locked, recurrent and weight dropout."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import dropkit

PAIRS = [(dropkit.nn.LSTM, torch.nn.LSTM), (dropkit.nn.GRU, torch.nn.GRU)]
CONFIGS = [
    {},
    {"bidirectional": True},
    {"batch_first": True},
    {"bias": False, "num_layers": 1},
]


def _pair(ours, theirs, **kw):
    kw.setdefault("num_layers", 2)
    torch.manual_seed(0)
    m = ours(4, 6, **kw)
    t = theirs(4, 6, **{k: v for k, v in kw.items() if k not in ("recurrent_dropout", "weight_dropout", "seed")})
    t.load_state_dict(m.state_dict())
    return m, t


def _x(batch_first=False, t=5, n=3):
    x = torch.randn(t, n, 4, generator=torch.Generator().manual_seed(1))
    return x.transpose(0, 1) if batch_first else x


def _flat(out):
    return [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")  # torch's own warning for num_layers=1
@pytest.mark.parametrize("ours,theirs", PAIRS, ids=["LSTM", "GRU"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_eval_equals_torch_exactly(ours, theirs, cfg):
    m, t = _pair(ours, theirs, dropout=0.4, recurrent_dropout=0.3, weight_dropout=0.5, **cfg)
    m.eval(), t.eval()
    x = _x(cfg.get("batch_first", False))
    for a, b in zip(_flat(m(x)), _flat(t(x))):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(_flat(m(x)), _flat(m(x))))  # deterministic


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=["LSTM", "GRU"])
def test_same_constructor_and_state_dict_keys(ours, theirs):
    m = ours(4, 6, 2, True, False, 0.2, True)  # positional arguments as torch's
    t = theirs(4, 6, 2, True, False, 0.2, True)
    assert list(m.state_dict()) == list(t.state_dict())
    assert m.dropout == 0.2 and m.bidirectional and isinstance(m, theirs)
    assert list(ours(4, 6, seed=1).state_dict())[-1] == "rng_state"


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=["LSTM", "GRU"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_recurrent_loop_matches_fused_kernel(ours, theirs, cfg):
    # a rate that rounds to "keep everything" forces the Python time loop with an all-ones mask
    m, t = _pair(ours, theirs, recurrent_dropout=1e-9, **cfg)
    x = _x(cfg.get("batch_first", False))
    for a, b in zip(_flat(m(x)), _flat(t(x))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=["LSTM", "GRU"])
@pytest.mark.parametrize("recurrent", [0.0, 1e-9])
def test_packed_sequences(ours, theirs, recurrent):
    m, t = _pair(ours, theirs, recurrent_dropout=recurrent, bidirectional=True)
    m.dropout = 1e-9  # between-layer path on packed data, all kept
    x = _x()
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    a, b = m(packed), t(packed)
    torch.testing.assert_close(a[0].data, b[0].data, rtol=1e-5, atol=1e-6)
    for u, v in zip(_flat(a)[1:], _flat(b)[1:]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=["LSTM", "GRU"])
def test_unbatched_input(ours, theirs):
    m, t = _pair(ours, theirs, recurrent_dropout=1e-9)
    x = _x()[:, 0]
    for a, b in zip(_flat(m(x)), _flat(t(x))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_without_rates_is_torch_forward():
    m, t = _pair(dropkit.nn.LSTM, torch.nn.LSTM)
    x = _x()
    assert all(torch.equal(a, b) for a, b in zip(_flat(m(x)), _flat(t(x))))


def test_gru_recurrent_dropout_one_removes_h_from_the_gates_only():
    m = dropkit.nn.GRU(3, 4, recurrent_dropout=1.0, seed=0)
    x = _x()[:, :, :3]
    out, _ = m(x)
    w_ih, b_ih, b_hh = m.weight_ih_l0, m.bias_ih_l0, m.bias_hh_l0
    h = torch.zeros(3, 4)
    for t in range(x.shape[0]):  # h_{t-1} dropped inside the gates, carried unmasked
        ir, iz, in_ = (x[t] @ w_ih.T + b_ih).chunk(3, 1)
        hr, hz, hn = b_hh.chunk(3)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        h = (1 - z) * torch.tanh(in_ + r * hn) + z * h
        torch.testing.assert_close(out[t], h)


def test_between_layer_dropout_one_feeds_zeros_to_the_next_layer():
    m = dropkit.nn.LSTM(4, 6, 2, dropout=1.0, seed=0)
    second = torch.nn.LSTM(6, 6)
    second.load_state_dict({k.replace("l1", "l0"): v for k, v in m.state_dict().items() if "l1" in k})
    out, _ = m(_x())
    torch.testing.assert_close(out, second(torch.zeros(5, 3, 6))[0])


def test_seeded_module_is_reproducible_and_resumable():
    kw = dict(dropout=0.5, recurrent_dropout=0.5, weight_dropout=0.5, seed=3)
    m = dropkit.nn.LSTM(4, 6, 2, **kw)
    state = m.state_dict()
    a = m(_x())[0]
    b = dropkit.nn.LSTM(4, 6, 2, **kw)
    b.load_state_dict(state)
    assert torch.equal(b(_x())[0], a)  # same weights, key and call index: same masks
    assert not torch.equal(m(_x())[0], a)  # the next call draws new masks


def test_between_layer_mask_is_locked_over_time(monkeypatch):
    m = dropkit.nn.LSTM(4, 8, 2, dropout=0.5, seed=1)
    captured = []
    orig = dropkit.functional.locked_dropout

    def spy(x, *a, **k):
        captured.append(orig(x, *a, **k))
        return captured[-1]

    monkeypatch.setattr(dropkit.functional, "locked_dropout", spy)
    m(_x())
    (y,) = captured  # one between-layer dropout for two layers, on (T, N, F)
    zero = y == 0
    assert zero.any() and torch.equal(zero, zero[:1].expand_as(zero))


def test_weight_dropout_grads_reach_weight_hh_and_one_mask_per_forward(monkeypatch):
    m = dropkit.nn.GRU(4, 6, weight_dropout=0.5, seed=2)
    calls = []
    orig = dropkit.functional.dropout

    def spy(x, *a, **k):
        calls.append(x.shape)
        return orig(x, *a, **k)

    monkeypatch.setattr(dropkit.functional, "dropout", spy)
    out, _ = m(_x())
    assert calls == [m.weight_hh_l0.shape]
    out.sum().backward()
    assert m.weight_hh_l0.grad is not None and (m.weight_hh_l0.grad == 0).any()  # dropped weights get no grad


def test_p_property_and_repr_and_errors():
    m = dropkit.nn.LSTM(4, 6, 2, dropout=0.1, recurrent_dropout=0.3, weight_dropout=0.2)
    assert m.p == 0.3
    assert "recurrent_dropout=0.3" in repr(m) and "weight_dropout=0.2" in repr(m)
    assert dropkit.nn.GRU(4, 6).p == 0.0
    with pytest.raises(ValueError, match=r"`recurrent_dropout`.*Received: recurrent_dropout=1.5"):
        dropkit.nn.LSTM(4, 6, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="`weight_dropout`"):
        dropkit.nn.GRU(4, 6, weight_dropout=-1)
    with pytest.raises(ValueError, match="`dropout`"):
        dropkit.nn.GRU(4, 6, 2, dropout=2.0)
    with pytest.raises(ValueError, match="2D or 3D"):
        dropkit.nn.LSTM(4, 6, recurrent_dropout=0.1)(torch.ones(2, 2, 2, 4))


def test_no_warnings_in_training():
    m = dropkit.nn.LSTM(4, 6, 2, dropout=0.3, recurrent_dropout=0.2, weight_dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(_x())[0].sum().backward()
        m.recurrent_dropout = 0.0
        m(_x())[0].sum().backward()
