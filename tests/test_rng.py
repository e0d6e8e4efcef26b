"""Philox4x32-10 known answers and the mask contract (dropkit.rng)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import rng

# Random123 tests/kat_vectors, "philox4x32 10" lines: counter, key, expected output.
KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def _words(text: str) -> np.ndarray:
    return np.array([int(w, 16) for w in text.split()], dtype=np.uint32)


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    np.testing.assert_array_equal(rng.philox4x32_10(_words(ctr), _words(key)), _words(expected))


def test_philox_batched_and_broadcast_key():
    ctrs = np.stack([_words(c) for c, _, _ in KAT])
    keys = np.stack([_words(k) for _, k, _ in KAT])
    out = rng.philox4x32_10(ctrs, keys)
    np.testing.assert_array_equal(out, np.stack([_words(e) for _, _, e in KAT]))
    # a single key broadcasts over a batch of counters
    out0 = rng.philox4x32_10(np.zeros((3, 4), np.uint32), np.zeros(2, np.uint32))
    np.testing.assert_array_equal(out0, np.tile(_words(KAT[0][2]), (3, 1)))


def test_philox_rejects_bad_arrays():
    with pytest.raises(TypeError, match="uint32"):
        rng.philox4x32_10(np.zeros(4, np.int64), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="counters must have shape"):
        rng.philox4x32_10(np.zeros(3, np.uint32), np.zeros(2, np.uint32))
    with pytest.raises(ValueError, match="key must have shape"):
        rng.philox4x32_10(np.zeros(4, np.uint32), np.zeros(3, np.uint32))


def test_torch_philox_equals_numpy():
    g = np.random.default_rng(0)
    blocks = g.integers(0, 2**62, size=257, dtype=np.int64)
    seed, stream = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    ctr = np.stack(
        [blocks & 0xFFFFFFFF, blocks >> 32, np.full_like(blocks, stream & 0xFFFFFFFF), np.full_like(blocks, stream >> 32)],
        axis=-1,
    ).astype(np.uint32)
    want = rng.philox4x32_10(ctr, np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32))
    got = rng.philox_blocks_torch(torch.from_numpy(blocks), seed, stream).numpy().astype(np.uint32)
    np.testing.assert_array_equal(got, want)


def test_mask_layout_matches_the_written_contract():
    """Element e takes 16-bit lane e % 8 of Philox(block e // 8): checked by hand for a few elements."""
    seed, stream, p = 99, 5, 0.5
    words = rng.philox4x32_10(
        np.array([[b, 0, stream, 0] for b in range(3)], np.uint32), np.array([seed, 0], np.uint32)
    )
    mask = rng.keep_mask_numpy(24, p, seed, stream)
    for e in range(24):
        w = int(words[e // 8, (e % 8) // 2])
        u = (w >> (16 * (e % 2))) & 0xFFFF
        assert mask[e] == (u >= 32768)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    offset=st.integers(0, 2**40),
    stream=st.integers(0, 2**64 - 1),
    seed=st.integers(0, 2**64 - 1),
    p=st.floats(0, 1),
)
def test_numpy_and_torch_masks_agree(n, offset, stream, seed, p):
    a = rng.keep_mask_numpy(n, p, seed, stream, offset)
    b = rng.keep_mask_torch(n, p, seed, stream, offset).numpy()
    np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), k=st.integers(0, 50), seed=st.integers(0, 2**64 - 1))
def test_offset_selects_a_window_of_one_stream(n, k, seed):
    full = rng.keep_mask_numpy(n + k, 0.3, seed)
    np.testing.assert_array_equal(rng.keep_mask_numpy(n, 0.3, seed, offset=k), full[k:])


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0, 1))
def test_keep_probability_within_2_pow_minus_16(p):
    assert abs(rng.keep_probability(p) - (1 - p)) <= 2.0**-16
    assert 0 <= rng.threshold(p) <= 65536


def test_threshold_edges():
    assert rng.threshold(0.0) == 0 and rng.keep_probability(0.0) == 1.0
    assert rng.threshold(1.0) == 65536 and rng.keep_probability(1.0) == 0.0
    assert rng.threshold(0.5) == 32768
    assert not rng.keep_mask_numpy(1000, 1.0, 3).any()
    assert rng.keep_mask_numpy(1000, 0.0, 3).all()


def test_uniform_open_interval_and_moments():
    n = 1 << 18
    u = rng.uniform((n,), seed=11, dtype=torch.float64)
    assert 0 < float(u.min()) and float(u.max()) < 1
    # mean of U(0,1): sd of the sample mean is sqrt(1/12/n); 5 sigma bound
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)


def test_normal_moments():
    n = 1 << 18
    z = rng.normal((n,), seed=12, dtype=torch.float64)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert torch.equal(z[100:200], rng.normal((100,), seed=12, offset=100, dtype=torch.float64))


def test_resolve_seed_sources():
    torch.manual_seed(3)
    a = rng.resolve_seed()
    torch.manual_seed(3)
    assert rng.resolve_seed() == a
    assert rng.resolve_seed(seed=5) == 5
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert rng.resolve_seed(generator=g1) == rng.resolve_seed(generator=g2)
    assert 0 <= a < 2**64


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"seed": 1, "generator": torch.Generator()}, ValueError, "not both"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"generator": "cpu"}, TypeError, "generator"),
    ],
)
def test_resolve_seed_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        rng.resolve_seed(**kwargs)


def test_batch_shard_rejects_negative():
    with pytest.raises(ValueError, match="start"):
        with rng.batch_shard(-1):
            pass
    assert rng.current_batch_start() == 0


# ---------------------------------------------------------------------------
# One rule for keys and element ranges (rng.check_elements / check_counters / check_seed)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n,offset,ok",
    [
        (0, 0, True),
        (8, 2**64 - 8, True),  # the last eight indices
        (0, 2**64, True),  # no element at all, at the end of the space
        (9, 2**64 - 8, False),
        (1, 2**64, False),
        (-1, 0, False),
        (1, -1, False),
    ],
)
def test_check_elements_is_the_one_rule(n, offset, ok):
    if ok:
        assert rng.check_elements(n, offset) == (n, offset)
    else:
        with pytest.raises(ValueError, match="`n`|`offset`"):
            rng.check_elements(n, offset)


@pytest.mark.parametrize("fn", [rng.uniform, rng.normal, lambda shape, seed, stream=0, offset=0: rng.keep_mask(
    math.prod(shape), 0.5, seed, stream, offset)], ids=["uniform", "normal", "keep_mask"])
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"offset": -1}, "`offset`"),
        ({"seed": -1}, "`seed`"),
        ({"seed": 2**64 + 5}, "`seed`"),
        ({"stream": -1}, "`stream`"),
        ({"stream": 2**64}, "`stream`"),
        ({"offset": 2**64 - 3}, "`offset`"),  # 4 elements past index 2**64 - 3
    ],
)
def test_samplers_validate_like_keep_mask(fn, kwargs, match):
    args = {"seed": 1, "stream": 0, "offset": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        fn((2, 2), args["seed"], args["stream"], args["offset"])


def test_samplers_accept_the_last_indices_of_the_space():
    z = rng.uniform((4,), 2**64 - 1, 2**64 - 1, 2**64 - 4, dtype=torch.float64)
    w = rng.uniform((8,), 2**64 - 1, 2**64 - 1, 2**64 - 8, dtype=torch.float64)
    assert torch.equal(z, w[4:])
    assert rng.normal((4,), 3, 0, 2**64 - 4).shape == (4,)
    with pytest.raises(ValueError, match="`shape`"):
        rng.uniform((2, -1), 1)


def test_check_counters_names_the_bad_argument():
    rng.check_counters(4, 2**64 - 1, 2**64 - 1, 2**64 - 4)
    for kwargs, match in [({"seed": 2**64}, "`seed`"), ({"stream": -1}, "`stream`"), ({"offset": 2**64}, "offset")]:
        args = {"n": 4, "seed": 1, "stream": 0, "offset": 0, **kwargs}
        with pytest.raises(ValueError, match=match):
            rng.check_counters(args["n"], args["seed"], args["stream"], args["offset"])
