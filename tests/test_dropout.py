"""dropkit.functional.dropout: semantics, statistics, autograd, layouts, errors."""

from __future__ import annotations

import contextlib

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ALPHA = 1e-3  # significance of each binomial test (fixed seeds: deterministic)


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)  # nonzero everywhere


# ---------------------------------------------------------------- statistics
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("seed", [1, 2**63 + 17])
def test_keep_rate_binomial(p, seed):
    n = 1 << 22
    y = F.dropout(torch.ones(n), p, seed=seed)
    kept = int((y != 0).sum())
    assert binomtest(kept, n, 1 - p).pvalue > ALPHA


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_survivors_scaled_exactly(p):
    x = _x(1 << 12)
    y = F.dropout(x, p, seed=4)
    kept = y != 0
    # survivors are scaled by exactly 1 / q(p), the inverse of the realised keep probability (E[y] = x)
    torch.testing.assert_close(y[kept], x[kept] * torch.tensor(dropkit.rng.inverted_scale(p), dtype=torch.float32), rtol=0, atol=0)
    yc = F.dropout(x, p, seed=4, scaling="classic")
    assert torch.equal(yc != 0, kept) and torch.equal(yc[kept], x[kept])


@pytest.mark.parametrize("lag", [1, 2, 4, 8, 16, 32])
def test_neighbours_uncorrelated(lag):
    rows, cols = 1024, 1024
    m = (F.dropout(torch.ones(rows, cols), 0.5, seed=21) != 0).double()
    n = rows * cols
    bound = 5 / math.sqrt(n)  # 5 sigma of a correlation estimate under independence
    along_rows = np.corrcoef(m[:, :-lag].reshape(-1), m[:, lag:].reshape(-1))[0, 1]
    along_cols = np.corrcoef(m[:-lag].reshape(-1), m[lag:].reshape(-1))[0, 1]
    assert abs(along_rows) < bound and abs(along_cols) < bound


def test_no_repeated_row_patterns():
    m = F.dropout(torch.ones(4096, 64), 0.5, seed=8) != 0
    assert len({bytes(r.numpy().tobytes()) for r in m}) == 4096


# ---------------------------------------------------------------- determinism
def test_same_seed_same_mask_other_seed_other():
    x = _x((64, 64))
    assert torch.equal(F.dropout(x, 0.5, seed=3), F.dropout(x, 0.5, seed=3))
    assert not torch.equal(F.dropout(x, 0.5, seed=3), F.dropout(x, 0.5, seed=4))
    assert not torch.equal(F.dropout(x, 0.5, seed=3), F.dropout(x, 0.5, seed=dropkit.rng.key_tensor(3, 1)))


def test_manual_seed_and_generator_reproduce():
    x = _x((64, 64))
    torch.manual_seed(11)
    a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)
    torch.manual_seed(11)
    assert torch.equal(F.dropout(x, 0.5), a) and torch.equal(F.dropout(x, 0.5), b)
    assert not torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(F.dropout(x, 0.5, generator=g1), F.dropout(x, 0.5, generator=g2))


@pytest.mark.parametrize("watched", [False, True], ids=["plain-eager", "under-a-dispatch-mode"])
def test_unseeded_key_is_two_randint_words_of_the_generator(watched):
    """The documented key of ``seed=None``: ``torch.randint(0, 2**32, (2,))`` from the generator, stream 0,
    whichever eager path draws it (plain eager takes a shorter op sequence than a watched call)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = _x((8, 16))
    g = torch.Generator().manual_seed(21)
    w = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=g).tolist()
    want = F.dropout(x, 0.5, seed=w[0] | (w[1] << 32))
    g.manual_seed(21)
    with Watch() if watched else contextlib.nullcontext():
        got = F.dropout(x, 0.5, generator=g)
    assert torch.equal(got, want)
    assert g.initial_seed() == 21 and torch.equal(g.get_state(), _state_after_two_words(21))


def _state_after_two_words(seed):
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=g)
    return g.get_state()


def test_thread_count_invariance():
    x = _x(1 << 20)
    torch.set_num_threads(1)
    a = F.dropout(x, 0.3, seed=77)
    torch.set_num_threads(2)
    b = F.dropout(x, 0.3, seed=77)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_same_mask_across_dtypes(dtype):
    ref = F.dropout(_x((33, 17)), 0.4, seed=9) != 0
    y = F.dropout(_x((33, 17), dtype), 0.4, seed=9)
    assert y.dtype == dtype and torch.equal(y != 0, ref)


def test_layouts_give_contiguous_values():
    x = _x((4, 6, 5, 7))
    cl = x.to(memory_format=torch.channels_last)
    assert torch.equal(F.dropout(cl, 0.5, seed=2), F.dropout(x, 0.5, seed=2))
    t = _x((9, 13)).t()
    assert torch.equal(F.dropout(t, 0.5, seed=2), F.dropout(t.contiguous(), 0.5, seed=2))
    s = _x((10, 20))[:, ::3]
    assert torch.equal(F.dropout(s, 0.5, seed=2), F.dropout(s.contiguous(), 0.5, seed=2))


def test_shards_of_a_batch_draw_the_full_batch_mask():
    x = _x((8, 5, 3))
    full = F.dropout(x, 0.5, seed=6)
    with dropkit.rng.batch_shard(3):
        part = F.dropout(x[3:], 0.5, seed=6)
    assert torch.equal(part, full[3:])
    shared = F.dropout(x, 0.5, seed=6, noise_shape=(1, 5, 3))
    with dropkit.rng.batch_shard(3):  # a mask shared along the batch does not shift
        assert torch.equal(F.dropout(x[3:], 0.5, seed=6, noise_shape=(1, 5, 3)), shared[3:])


# ---------------------------------------------------------------- autograd
def test_backward_regenerates_the_forward_mask():
    x = _x((257, 31)).requires_grad_()
    y = F.dropout(x, 0.5, seed=12)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g != 0, y != 0)
    torch.testing.assert_close(g[g != 0], torch.full_like(g[g != 0], 2.0), rtol=0, atol=0)


def test_saves_no_tensor_proportional_to_input():
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    x = torch.randn(1 << 20, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.dropout(x * 1.0, 0.5, seed=1)  # x * 1.0 saves nothing either (a scalar multiply)
    assert sum(saved) <= 64
    y.sum().backward()


def test_gradcheck_float64():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.dropout(t, 0.4, seed=5), (x,))
    assert torch.autograd.gradgradcheck(lambda t: F.dropout(t, 0.4, seed=5), (x,))
    assert torch.autograd.gradcheck(lambda t: F.dropout(t, 0.4, seed=5, noise_shape=(6, 1)), (x,))


def test_inplace_returns_same_object_and_grads():
    a = torch.randn(50, 40, requires_grad=True)
    h = a * 2.0  # non-leaf
    y = F.dropout(h, 0.5, inplace=True, seed=3)
    assert y is h
    y.sum().backward()
    expected = (F.dropout(torch.ones(50, 40), 0.5, seed=3)) * 2.0
    torch.testing.assert_close(a.grad, expected)
    z = torch.ones(8, 8)
    assert F.dropout(z, 0.5, inplace=True, seed=1) is z and (z == 0).any()


def test_inplace_on_leaf_requiring_grad_is_refused_like_torch():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError):
        F.dropout(x, 0.5, inplace=True, seed=1)


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edges(dtype):
    x = _x((5, 6), dtype)
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.5, training=False) is x
    torch.testing.assert_close(F.dropout(x, 0.25, training=False, scaling="classic"), x * 0.75)
    big = torch.full((4,), 1e30 if dtype != torch.float16 else 6e4, dtype=dtype)
    z = F.dropout(big, 1.0)
    assert (z == 0).all() and not z.isnan().any()
    assert F.dropout(torch.empty(0, 3, dtype=dtype), 0.5).shape == (0, 3)
    s = F.dropout(torch.tensor(3.0, dtype=dtype), 0.5, seed=0)
    assert s.shape == () and float(s) in (0.0, 6.0)


def test_nan_and_inf_follow_multiplication():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0] * 64)
    y = F.dropout(x, 0.5, seed=2)
    kept = F.dropout(torch.ones(256), 0.5, seed=2) != 0
    expected = x * torch.where(kept, 2.0, 0.0)
    assert torch.equal(y.isnan(), expected.isnan())
    assert torch.equal(y[~expected.isnan()], expected[~expected.isnan()])


def test_noise_shape_shares_mask_along_unit_dims():
    x = _x((6, 8, 4, 4))
    y = F.dropout(x, 0.5, seed=1, noise_shape=(None, 8, 1, 1))
    m = (y != 0).reshape(6, 8, 16)
    assert torch.equal(m.all(-1), m.any(-1))  # whole channels kept or dropped
    assert torch.equal(F.dropout(x, 0.5, seed=1, noise_shape=(6, 8, 4, 4)), F.dropout(x, 0.5, seed=1))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_p_value(p):
    with pytest.raises(ValueError, match=r"`p`.*\[0, 1\].*Received: p="):
        F.dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match=r"`p`"):
        dropkit.nn.Dropout(p)


@pytest.mark.parametrize("p", ["0.5", None, True, [0.5]])
def test_bad_p_type(p):
    with pytest.raises(TypeError, match=r"`p`"):
        F.dropout(torch.ones(3), p)
    with pytest.raises(TypeError, match=r"`p`"):
        dropkit.nn.Dropout(p)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64])
def test_non_float_input(dtype):
    with pytest.raises(TypeError, match="floating dtype"):
        F.dropout(torch.ones(3, dtype=dtype), 0.5)


def test_other_errors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        F.dropout([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match=r"`scaling`.*\('inverted', 'classic'\)"):
        F.dropout(torch.ones(3), 0.5, scaling="paper")
    with pytest.raises(ValueError, match="not both"):
        F.dropout(torch.ones(3), 0.5, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="not both"):  # checked in eval too
        F.dropout(torch.ones(3), 0.5, training=False, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="noise_shape"):
        F.dropout(torch.ones(3, 4), 0.5, noise_shape=(3,))
    with pytest.raises(ValueError, match="noise_shape"):
        F.dropout(torch.ones(3, 4), 0.5, noise_shape=(3, 2))
    with pytest.raises(TypeError, match="training"):
        F.dropout(torch.ones(3), 0.5, training="yes")


def test_shard_with_a_single_local_sample_is_per_sample():
    x = _x((4, 6))
    full = F.dropout(x, 0.5, seed=6)
    with dropkit.rng.batch_shard(3):
        assert torch.equal(F.dropout(x[3:], 0.5, seed=6), full[3:])
    spatial = F.dropout(_x((4, 3, 2, 2)), 0.5, seed=6, noise_shape=(4, 3, 1, 1))
    with dropkit.rng.batch_shard(2):
        part = F.dropout(_x((4, 3, 2, 2))[2:3], 0.5, seed=6, noise_shape=(1, 3, 1, 1))
    assert torch.equal(part, spatial[2:3])


def test_shard_along_a_later_batch_dim():
    x = _x((5, 4, 3))  # (time, batch, features), mask shared over time
    full = F.dropout(x, 0.5, seed=2, noise_shape=(1, 4, 3), batch_dim=1)
    with dropkit.rng.batch_shard(2):
        part = F.dropout(x[:, 2:], 0.5, seed=2, noise_shape=(1, 2, 3), batch_dim=1)
        with pytest.raises(ValueError, match="before the batch dimension"):
            F.dropout(x[:, 2:], 0.5, seed=2, batch_dim=1)
    assert torch.equal(part, full[:, 2:])


@pytest.mark.parametrize("p,chunks", [(0.9999, 8), (0.99999, 4), (1 - 2.0**-18, 4)])
def test_inverted_dropout_is_unbiased_near_one(p, chunks):
    # E[y] = x at every p < 1: the mean of y over 2^26-2^27 ones is within 6 standard errors of 1.
    # 1/(1-p) scaling gave 1.068 at p = 0.9999 (8 standard errors off at 2^27), 1.53 at 0.99999
    # (17 at 2^26) and 0 above 1 - 2^-17 (every element dropped).
    chunk = 1 << 24
    total = sum(float(F.dropout(torch.ones(chunk), p, seed=dropkit.rng.key_tensor(12345, s)).double().sum()) for s in range(chunks))
    n = chunk * chunks
    q = dropkit.rng.keep_probability(p)
    assert q > 0
    se = math.sqrt((1 - q) / q / n)  # std of y is sqrt((1 - q) / q) for x = 1
    assert abs(total / n - 1.0) <= 6 * se, (total / n, se)


@pytest.mark.parametrize("make", [
    lambda: torch.eye(4).to_sparse(),
    lambda: torch.eye(4).to_sparse_csr(),
    lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
], ids=["coo", "csr", "nested"])
def test_sparse_and_nested_inputs_get_a_clear_error(make):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors warn that they are a prototype
        x = make()
    with pytest.raises(TypeError, match="dense .strided. tensor"):
        F.dropout(x, 0.5, seed=1)
    with pytest.raises(TypeError, match="dense .strided. tensor"):
        F.gaussian_dropout(x, 0.5, seed=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("value", [1.0, -2.5, float("inf"), float("nan"), 3e38, -0.0, 1e-45])
def test_an_expanded_scalar_gets_the_values_of_its_materialised_tensor(dtype, value):
    """``loss.sum().backward()`` hands dropout's backward an expanded scalar: the bits the kernel gives on
    ``x.contiguous()`` (overflow, NaN, signed zeros), whatever path serves it."""
    from dropkit import kernels

    x = torch.tensor(value, dtype=dtype).expand(3, 1 << 15)
    ibits = torch.int64 if dtype == torch.float64 else torch.int32
    for p in (0.1, 0.5, 0.9):
        scale = dropkit.rng.inverted_scale(p)
        got = F.dropout(x, p, seed=dropkit.rng.key_tensor(5, 2))
        want = kernels.for_device("cpu").dropout_mul(x.contiguous(), p, scale, 5, 2, 0)
        assert got.shape == want.shape and got.dtype == dtype
        assert torch.equal(got.view(ibits), want.view(ibits))


def test_sum_backward_gradient_is_the_mask_times_scale():
    x = _x((64, 65)).requires_grad_()
    F.dropout(x, 0.3, seed=8).sum().backward()
    want = F.dropout(torch.ones(64, 65), 0.3, seed=8)
    assert torch.equal(x.grad, want)
