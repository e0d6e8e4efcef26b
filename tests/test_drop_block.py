"""drop_block2d/3d and DropBlock2d/3d: block structure (odd and even), dropped fraction, rescaling, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as tnf

import dropkit
from dropkit import functional as F
from dropkit.functional.drop_block import block_seed_rate
from variant_helpers import DTYPES, positive, saved_bytes

OPS = {2: F.drop_block2d, 3: F.drop_block3d}


def _is_union_of_blocks(dropped: torch.Tensor, b: int, d: int) -> bool:
    """Every dropped position lies in a b^d window that is dropped entirely (and fits in the map)."""
    pool = tnf.max_pool2d if d == 2 else tnf.max_pool3d
    full = -pool(-dropped.float(), b, stride=1)  # 1 where the window starting here is all dropped
    cover = pool(tnf.pad(full, [b - 1] * (2 * d)), b, stride=1)
    return bool(torch.equal(cover.bool(), dropped))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5])
def test_dropped_region_is_a_union_of_blocks(d, block_size):
    shape = (2, 3) + ((12, 12) if d == 2 else (7, 7, 7))
    y = OPS[d](torch.ones(shape), 0.3, block_size, seed=block_size)
    dropped = y == 0
    assert dropped.any() and (~dropped).any()
    assert _is_union_of_blocks(dropped, block_size, d)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("block_size", [1, 2, 3, 6])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_dropped_fraction_close_to_p(d, block_size, p):
    shape = (16, 32) + ((16, 16) if d == 2 else (8, 8, 8))
    y = OPS[d](torch.ones(shape), p, block_size, seed=17)
    per_channel = (y == 0).flatten(2).double().mean(2).reshape(-1)  # one independent sample per channel
    m = per_channel.numel()
    bound = 5 * float(per_channel.std()) / math.sqrt(m) + 1e-9
    assert abs(float(per_channel.mean()) - p) < bound, (float(per_channel.mean()), p, bound)


def test_seed_rate_solves_the_expected_fraction():
    for p, spatial, b in ((0.1, (16, 16), 3), (0.5, (7, 9), 4), (0.2, (5, 6, 7), 2)):
        gamma = block_seed_rate(p, spatial, b)
        # Monte Carlo of the expected fraction with the exact gamma
        starts = torch.rand((4000, 1) + tuple(s - b + 1 for s in spatial), generator=torch.Generator().manual_seed(0)) < gamma
        pool = tnf.max_pool2d if len(spatial) == 2 else tnf.max_pool3d
        frac = pool(tnf.pad(starts.float(), [b - 1] * (2 * len(spatial))), b, stride=1).mean().item()
        assert abs(frac - p) < 0.01


def test_rescaled_by_numel_over_kept_per_sample():
    x = positive((2, 4, 10, 10))
    y = F.drop_block2d(x, 0.3, 3, seed=4)
    keep = y != 0
    for n in range(2):
        scale = keep[n].numel() / keep[n].sum()
        torch.testing.assert_close(y[n][keep[n]], x[n][keep[n]] * scale)
    ones = F.drop_block2d(torch.ones(2, 4, 10, 10, dtype=torch.float64), 0.3, 3, seed=4)
    assert ones.sum(dim=(1, 2, 3)).tolist() == pytest.approx([400.0, 400.0])  # each sample's mean exactly kept
    unbatched = F.drop_block2d(torch.ones(4, 10, 10, dtype=torch.float64), 0.3, 3, seed=4)
    assert float(unbatched.sum()) == pytest.approx(400.0)


def test_batch_shard_draws_the_full_batch_blocks():
    x = positive((4, 3, 9, 9))
    for share in (False, True):
        full = F.drop_block2d(x, 0.3, 3, seed=5, share_channels=share)
        with dropkit.rng.batch_shard(2):
            assert torch.equal(F.drop_block2d(x[2:], 0.3, 3, seed=5, share_channels=share), full[2:])


def test_per_channel_or_shared():
    x = torch.ones(4, 8, 10, 10)
    per = F.drop_block2d(x, 0.3, 3, seed=5) == 0
    shared = F.drop_block2d(x, 0.3, 3, share_channels=True, seed=5) == 0
    assert (shared == shared[:, :1]).all()
    assert not (per == per[:, :1]).all()


def test_batched_equals_unbatched():
    x = positive((1, 3, 9, 9))
    torch.testing.assert_close(F.drop_block2d(x, 0.4, 2, seed=3)[0], F.drop_block2d(x[0], 0.4, 2, seed=3), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    x = torch.ones(2, 3, 8, 8, dtype=dtype)
    y = F.drop_block2d(x, 0.3, 3, seed=1)
    assert y.dtype == dtype and torch.isfinite(y).all()


def test_errors():
    x = torch.ones(2, 3, 8, 6)
    with pytest.raises(ValueError, match=r"`block_size`.*>= 1.*Received: block_size=0"):
        F.drop_block2d(x, 0.1, 0)
    with pytest.raises(ValueError, match=r"`block_size`.*\[1, 6\].*Received: block_size=7"):
        F.drop_block2d(x, 0.1, 7)
    with pytest.raises(TypeError, match="block_size"):
        F.drop_block2d(x, 0.1, 2.0)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        F.drop_block2d(torch.ones(8, 8), 0.1, 3)
    with pytest.raises(ValueError, match="4-D or 5-D"):
        F.drop_block3d(torch.ones(4, 4, 4), 0.1, 2)
    with pytest.raises(ValueError, match="block_size"):
        dropkit.nn.DropBlock2d(0.1, -1)


def test_edges_and_autograd():
    x = positive((2, 3, 6, 6), torch.float64)
    assert F.drop_block2d(x, 0.3, 3, training=False) is x and F.drop_block2d(x, 0.0, 3) is x
    assert (F.drop_block2d(x, 1.0, 3) == 0).all()
    assert not torch.equal(F.drop_block2d(x, 0.3, 3), x)
    xr = x[:1, :2, :4, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.drop_block2d(t, 0.3, 2, seed=1), xr)
    x3 = positive((1, 2, 3, 3, 3), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.drop_block3d(t, 0.3, 2, seed=1), x3)
    assert saved_bytes(lambda t: F.drop_block2d(t, 0.3, 2, seed=1).sum(), x) == 0


def test_inplace():
    x = positive((2, 3, 6, 6))
    expected = F.drop_block2d(x, 0.3, 2, seed=8)
    assert F.drop_block2d(x, 0.3, 2, inplace=True, seed=8) is x and torch.equal(x, expected)


def test_modules():
    m = dropkit.nn.DropBlock2d(0.1, 7)
    assert m.p == 0.1 and repr(m) == "DropBlock2d(p=0.1, block_size=7, inplace=False, share_channels=False)"
    m3 = dropkit.nn.DropBlock3d(0.2, 3, share_channels=True, seed=1)
    x = torch.ones(2, 4, 6, 6, 6)
    y = m3(x)
    assert ((y == 0) == (y == 0)[:, :1]).all()
    assert m3.eval()(x) is x


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 9),
    dims=st.sampled_from([2, 3]),
    sizes=st.lists(st.integers(1, 12), min_size=3, max_size=3),
    rate=st.sampled_from([0.02, 0.2, 0.7]),
    seed=st.integers(0, 2**31),
)
def test_window_max_is_a_stride_one_max_pool(b, dims, sizes, rate, seed):
    """The block grower (ops.kernels.window_max per spatial dim) equals torch's max_pool of kernel b, stride 1."""
    from dropkit.ops.kernels import window_max as _window_max

    spatial = [s + b - 1 for s in sizes[:dims]]  # at least b wide: the padded start grid always is
    x = (torch.rand([2, 3, *spatial], generator=torch.Generator().manual_seed(seed)) < rate).float()
    got = x
    for d in range(-dims, 0):
        got = _window_max(got, b, d)
    pool = tnf.max_pool2d if dims == 2 else tnf.max_pool3d
    assert torch.equal(got, pool(x, kernel_size=b, stride=1))
