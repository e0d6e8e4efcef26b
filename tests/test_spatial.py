"""dropout1d/2d/3d and Dropout1d/2d/3d: whole channels, batched and unbatched, rates, errors, autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F
from variant_helpers import ALPHA, DTYPES, constant_over, positive, saved_bytes

OPS = {1: F.dropout1d, 2: F.dropout2d, 3: F.dropout3d}
MODULES = {1: dropkit.nn.Dropout1d, 2: dropkit.nn.Dropout2d, 3: dropkit.nn.Dropout3d}
SPATIAL = {1: (7,), 2: (4, 5), 3: (3, 4, 2)}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_whole_channels_dropped(dims, batched, dtype):
    shape = ((6,) if batched else ()) + (8,) + SPATIAL[dims]
    x = positive(shape, dtype)
    y = OPS[dims](x, 0.5, seed=3)
    assert y.shape == x.shape and y.dtype == dtype
    lead = 2 if batched else 1
    spatial_axes = tuple(range(lead, x.dim()))
    assert constant_over(y, x, spatial_axes)
    dropped = (y == 0).all(dim=spatial_axes)
    assert dropped.any() and (~dropped).any()
    kept = y != 0
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    torch.testing.assert_close(y[kept], (x.to(cdt)[kept] * 2).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_batched_equals_unbatched(dims):
    x = positive((1, 5) + SPATIAL[dims])
    torch.testing.assert_close(OPS[dims](x, 0.4, seed=9)[0], OPS[dims](x[0], 0.4, seed=9), rtol=0, atol=0)


def test_unbatched_3d_input_drops_channels_unlike_torch():
    x = positive((16, 6, 6))
    y = F.dropout2d(x, 0.5, seed=1)
    assert constant_over(y, x, (1, 2))  # one value per channel; torch would drop per (dim0, dim1) row


def test_is_dropout_with_noise_shape():
    x = positive((3, 4, 5, 5))
    ref = F.dropout(x, 0.3, noise_shape=(3, 4, 1, 1), seed=5)
    assert torch.equal(F.dropout2d(x, 0.3, seed=5), ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 12345])
def test_channel_keep_rate_binomial(p, seed):
    n, c = 256, 64
    y = F.dropout2d(torch.ones(n, c, 2, 2), p, seed=seed)
    kept = int((y[:, :, 0, 0] != 0).sum())
    assert binomtest(kept, n * c, 1 - p).pvalue > ALPHA


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_wrong_rank_names_accepted_ranks(dims):
    bad = torch.ones((2,) * (dims + 3))
    with pytest.raises(ValueError, match=rf"{dims + 1}-D or {dims + 2}-D.*Received: a {dims + 3}-D"):
        OPS[dims](bad, 0.5)
    with pytest.raises(ValueError, match="-D"):
        OPS[dims](torch.ones(3), 0.5, training=False)  # checked in eval too


def test_bad_arguments():
    x = torch.ones(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"`p`.*Received: p=1.5"):
        F.dropout2d(x, 1.5)
    with pytest.raises(TypeError, match="floating dtype"):
        F.dropout2d(x.long(), 0.5)
    with pytest.raises(TypeError, match="training"):
        F.dropout2d(x, 0.5, training=1)


def test_edges_and_eval():
    x = positive((2, 3, 4, 4))
    assert F.dropout2d(x, 0.5, training=False) is x
    assert F.dropout2d(x, 0.0) is x
    assert (F.dropout2d(x, 1.0) == 0).all()
    assert not torch.equal(F.dropout2d(x, 0.5), x)  # training=True is the default


def test_inplace_returns_input():
    x = positive((2, 6, 4, 4))
    expected = F.dropout2d(x, 0.5, seed=2)
    y = F.dropout2d(x, 0.5, inplace=True, seed=2)
    assert y is x and torch.equal(x, expected)


def test_layouts_do_not_change_the_mask():
    x = positive((4, 6, 5, 5))
    ref = F.dropout2d(x, 0.5, seed=7)
    cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(F.dropout2d(cl, 0.5, seed=7), ref, rtol=0, atol=0)
    nc = positive((4, 5, 5, 6)).permute(0, 3, 1, 2)
    torch.testing.assert_close(F.dropout2d(nc, 0.5, seed=7), F.dropout2d(nc.contiguous(), 0.5, seed=7), rtol=0, atol=0)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradcheck_and_nothing_saved(dims):
    x = torch.randn((2, 3) + SPATIAL[dims], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: OPS[dims](t, 0.4, seed=1), x)
    assert saved_bytes(lambda t: OPS[dims](t, 0.4, seed=1).sum(), x) == 0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_modules_are_torch_dropins(dims):
    m = MODULES[dims](0.3)
    assert isinstance(m, getattr(torch.nn, f"Dropout{dims}d")) and m.p == 0.3
    assert repr(m) == f"Dropout{dims}d(p=0.3, inplace=False)"
    assert m.state_dict() == {}


def test_module_seeded_stream_resumes_from_state_dict():
    x = positive((4, 8, 3, 3))
    a = dropkit.nn.Dropout2d(0.5, seed=11)
    a(x)
    state = a.state_dict()
    expected = a(x)
    b = dropkit.nn.Dropout2d(0.5, seed=11)
    b.load_state_dict(state)
    assert torch.equal(b(x), expected)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4), c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
    p=st.floats(0.0, 1.0), seed=st.integers(0, 2**64 - 1),
)  # fmt: skip
def test_hypothesis_channel_structure(n, c, h, w, p, seed):
    x = positive((n, c, h, w))
    y = F.dropout2d(x, p, seed=seed)
    zero = (y == 0).flatten(2)
    assert bool((zero.all(2) | (~zero).all(2)).all())


def test_replace_dropout_swaps_channel_and_alpha_dropouts():
    model = torch.nn.Sequential(
        torch.nn.Dropout2d(0.2), torch.nn.Dropout1d(0.1, inplace=True), torch.nn.Dropout3d(0.3),
        torch.nn.AlphaDropout(0.4), torch.nn.FeatureAlphaDropout(0.5), torch.nn.Dropout(0.6),
    )  # fmt: skip
    model[2].eval()
    dropkit.nn.replace_dropout(model, scaling="classic")
    expected = [dropkit.nn.Dropout2d, dropkit.nn.Dropout1d, dropkit.nn.Dropout3d, dropkit.nn.AlphaDropout,
                dropkit.nn.FeatureAlphaDropout, dropkit.nn.Dropout]  # fmt: skip
    assert all(isinstance(m, cls) for m, cls in zip(model, expected))
    assert [type(m) for m in model][1:] == expected[1:]  # Dropout2d: a subclass reading 3-D input as torch does
    x3 = torch.ones(4, 8, 5)  # torch's Dropout2d reads (N, C, L): whole (n, c) rows dropped, as dropout1d
    zero = model[0](x3) == 0
    assert bool((zero.all(2) | (~zero).all(2)).all()) and 0 < int(zero.all(2).sum()) < 32
    assert [m.p for m in model] == [0.2, 0.1, 0.3, 0.4, 0.5, 0.6]
    assert model[1].inplace and not model[2].training and model[5].scaling == "classic"
