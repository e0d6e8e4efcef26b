"""Normal contract v2 (docs/rng.md): Box-Muller in exactly rounded float32 arithmetic.

* the NumPy definition and the torch-ops definition agree bit for bit (on edge words too);
* its accuracy against float64 ``sqrt(-2 ln u1) * cos/sin(theta)`` on the same ``u1``, ``theta``;
* known answers derived from the definition (exact angles, the extreme ``u1``);
* statistics of the samples (mean, variance, KS, 3-sigma tail, independence of the two halves);
* ``gaussian_mul`` on every backend and ISA against the reference and against the rounding
  rule written out in NumPy float32, with broadcast, strided, ``out=`` and in-place inputs;
* thread-count invariance of the compiled kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dropkit import kernels, rng
from dropkit.kernels import cpu, reference
from backend_helpers import ISAS, assert_same_bits, backend, special_input

CPU = torch.device("cpu")
#: The backend the ops registered for CPU tensors.
B = kernels.for_device("cpu")
BACKENDS = [("reference", None)] + [("cpu", isa) for isa in ISAS]
IDS = [f"{b}-{i}" if i else b for b, i in BACKENDS]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _edge_words() -> tuple[np.ndarray, np.ndarray]:
    """Word pairs at the edges of every step: the extreme u1, the quadrant and reduction boundaries of theta."""
    a_edges = [0, 1, 2, 3, 255, 256, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 257, 2**32 - 256, 2**32 - 2, 2**32 - 1]
    a_edges += [(1 << k) - 1 for k in range(1, 33)] + [1 << k for k in range(32)]
    t_edges = []
    for q in range(5):  # theta = (pi/2) q and its neighbours, and the reduction's split points +-pi/4
        for base in (q << 22, (q << 22) + (1 << 21), (q << 22) - (1 << 21)):
            for d in (-2, -1, 0, 1, 2):
                t_edges.append((base + d) % (1 << 24))
    b_edges = [(t << 8) | low for t in t_edges for low in (0, 255)]
    a, b = np.meshgrid(np.array(a_edges, np.uint64), np.array(b_edges, np.uint64))
    return a.reshape(-1).astype(np.uint32), b.reshape(-1).astype(np.uint32)


def _words(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    a = g.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    b = g.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    ea, eb = _edge_words()
    return np.concatenate([ea, a]), np.concatenate([eb, b])


def _exact(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 Box-Muller on the contract's u1 and theta (u1 is exact in float64: the float32 the contract makes)."""
    u1 = ((a >> np.uint32(1)).astype(np.float32) + np.float32(1.0)).astype(np.float64) * 2.0**-31
    theta = 2.0 * np.pi * (b >> np.uint32(8)).astype(np.float64) / 2.0**24
    r = np.sqrt(-2.0 * np.log(u1))
    return r * np.cos(theta), r * np.sin(theta)


# ---------------------------------------------------------------------------
# The definition: NumPy == torch ops, accuracy, known answers
# ---------------------------------------------------------------------------
def test_numpy_and_torch_definitions_agree_bit_for_bit():
    a, b = _words(1 << 18, seed=1)
    zc, zs = rng.box_muller_f32_numpy(a, b)
    tc, ts = rng.box_muller_f32_torch(torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64)))
    assert zc.dtype == zs.dtype == np.float32 and tc.dtype == ts.dtype == torch.float32
    assert torch.equal(tc.view(torch.int32), torch.from_numpy(zc).view(torch.int32))
    assert torch.equal(ts.view(torch.int32), torch.from_numpy(zs).view(torch.int32))


def test_accuracy_against_float64_box_muller():
    """max |z - z_exact| <= 2e-6 * max(1, |z_exact|) over 4M word pairs plus every edge pair."""
    a, b = _words(1 << 22, seed=2)
    zc, zs = rng.box_muller_f32_numpy(a, b)
    ec, es = _exact(a, b)
    for got, want in ((zc, ec), (zs, es)):
        err = np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
        assert float(err.max()) <= 2e-6, (float(err.max()), int(np.argmax(err)))
    # the tails reach sqrt(-2 ln 2**-31) = 6.56 (a = 0 or 1: the smallest u1)
    assert abs(float(np.abs(zc).max()) - math.sqrt(62 * math.log(2))) < 2e-6 * 6.6


def test_known_answers_from_the_definition():
    """Derived by hand from docs/rng.md, not recorded from a run.

    ``b >> 8 = q * 2**22`` is the angle ``q * pi / 2`` exactly: the reduced fraction is 0, so
    ``cos = 1`` and ``sin = 0 * S(0) = 0`` before the quadrant's swap and signs. ``a >> 1 = 2**31 - 1``
    rounds to ``2**31`` in float32, so ``u1 = 1``, ``log u1 = +0``, ``r = sqrt(-0) = -0``.
    ``a = 0`` gives ``u1 = 2**-31``: ``m = 1``, ``k = -31``, ``r = sqrt(62 ln 2)`` to float32 rounding.
    """
    r_max = np.float32(math.sqrt(62 * math.log(2)))
    a = np.array([0, 0, 0, 0], np.uint32)
    b = np.array([0 << 30, 1 << 30, 2 << 30, 3 << 30], np.uint32)  # q = 0, 1, 2, 3 and fraction 0
    zc, zs = rng.box_muller_f32_numpy(a, b)
    assert np.all(np.abs(np.abs(zc[[0, 2]]) - r_max) <= 2 * np.spacing(r_max))  # cos(0) = 1, cos(pi) = -1
    assert zc[0] > 0 and zc[2] < 0 and zs[1] > 0 and zs[3] < 0  # sin(pi/2) = 1, sin(3pi/2) = -1
    assert np.all(zc[[1, 3]] == 0) and np.all(zs[[0, 2]] == 0)  # cos(pi/2), cos(3pi/2), sin(0), sin(pi): exact zeros
    zc1, zs1 = rng.box_muller_f32_numpy(np.array([2**32 - 1, 2**32 - 2], np.uint32), np.array([123456789] * 2, np.uint32))
    assert np.all(zc1 == 0) and np.all(zs1 == 0)  # u1 = 1: r = 0
    # both halves of a pair share r: z_cos^2 + z_sin^2 = r^2 (to float32 rounding)
    a2, b2 = _words(1 << 12, seed=3)
    c2, s2 = rng.box_muller_f32_numpy(a2, b2)
    u1 = ((a2 >> np.uint32(1)).astype(np.float32) + np.float32(1.0)).astype(np.float64) * 2.0**-31
    np.testing.assert_allclose(c2.astype(np.float64) ** 2 + s2.astype(np.float64) ** 2, -2 * np.log(u1), rtol=1e-5, atol=1e-9)


def test_element_layout_uses_both_halves_of_each_pair():
    """Element e: block e // 4, lane e % 4 -> pair e % 4 // 2, cosine half for even lanes, sine for odd."""
    n, seed, stream = 64, 77, 5
    words = rng.uniform_words_numpy(n, seed, stream, 0).numpy().astype(np.uint32).reshape(-1, 4)
    zc, zs = rng.box_muller_f32_numpy(words[:, 0::2].reshape(-1), words[:, 1::2].reshape(-1))
    z = rng.normal((n,), seed, stream).numpy().reshape(-1, 4)
    assert np.array_equal(z[:, 0], zc[0::2]) and np.array_equal(z[:, 1], zs[0::2])
    assert np.array_equal(z[:, 2], zc[1::2]) and np.array_equal(z[:, 3], zs[1::2])


def test_constants_are_exact_float32_and_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "rng.md").read_text()
    for c in (*rng.NORMAL_LOG_POLY, *rng.NORMAL_COS_POLY, *rng.NORMAL_SIN_POLY, rng.NORMAL_LN2_HI, rng.NORMAL_LN2_LO):
        assert isinstance(c, np.float32)
        assert _short_hex(c) in doc, _short_hex(c)


def _short_hex(c: np.float32) -> str:
    """``float.hex`` without the trailing zeros of the float64 mantissa, as docs/rng.md writes it."""
    sign, rest = ("-", float.hex(float(c))[1:]) if float(c) < 0 else ("", float.hex(float(c)))
    mant, exp = rest.split("p")
    mant = mant.rstrip("0").rstrip(".")
    return f"{sign}{mant}p{exp}"


# ---------------------------------------------------------------------------
# Statistics (fixed seeds; bounds from n)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_normal_statistics(seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    n = 1 << 20
    z = B.normal(n, seed, 3, 0, CPU, torch.float64).numpy()
    assert abs(z.mean()) < 5 / math.sqrt(n)  # SE of the mean: 1 / sqrt(n)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / n)  # SE of the variance: sqrt(2 / n)
    assert scipy_stats.kstest(z, "norm").pvalue > 1e-6
    # tail beyond 3 sigma: binomial(n, p3), 5 standard deviations
    p3 = math.erfc(3 / math.sqrt(2))
    tail = int((np.abs(z) > 3).sum())
    assert abs(tail - n * p3) < 5 * math.sqrt(n * p3 * (1 - p3))
    # each lane of a block (cos/sin halves of two pairs) is standard normal on its own
    for lane in range(4):
        zl = z[lane::4]
        assert abs(zl.mean()) < 5 / math.sqrt(zl.size)
        assert abs(zl.var() - 1.0) < 5 * math.sqrt(2 / zl.size)


@pytest.mark.parametrize("seed", [0, 12345])
def test_the_two_halves_of_a_pair_are_independent(seed):
    """Box-Muller's cos and sin halves share r: they are independent normals, so both their
    correlation and the correlation of their squares are ~0 (within 5 / sqrt(pairs))."""
    n = 1 << 20
    z = B.normal(n, seed, 0, 0, CPU, torch.float64).numpy()
    c, s = z[0::2], z[1::2]
    bound = 5 / math.sqrt(c.size)
    assert abs(np.corrcoef(c, s)[0, 1]) < bound
    assert abs(np.corrcoef(c * c, s * s)[0, 1]) < bound
    assert abs(np.corrcoef(z[0::4], z[2::4])[0, 1]) < 5 / math.sqrt(n // 4)  # the two pairs of a block


# ---------------------------------------------------------------------------
# The compiled kernel's normals: every ISA, threads
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not ISAS, reason=f"no compiled kernel: {cpu.status()[1]}")
def test_normal_thread_count_invariance():
    n = (1 << 17) + 4099
    want = rng.normal((n,), 5, 6, 13)
    for isa in ISAS:
        with backend("cpu", isa):
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)  # restored by conftest
                assert torch.equal(cpu.normal(n, 5, 6, 13, CPU).view(torch.int32), want.view(torch.int32)), (isa, threads)


# ---------------------------------------------------------------------------
# gaussian_mul
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gaussian_mul_reference_is_the_written_out_rule(dtype):
    """x_f32 * (1 + sigma_f32 * z) in float32 (float64 for float64 x), rounded once, z = rng.normal."""
    n, sigma, seed, stream, offset = 1001, 0.6546536707079771, 2**64 - 3, 9, 2**40 + 3
    x = special_input(n, dtype, seed=4)
    z = rng.normal((n,), seed, stream, offset).numpy()
    if dtype == torch.float64:
        want = torch.from_numpy(x.numpy() * (1.0 + sigma * z.astype(np.float64)))
    else:
        xf = x.to(torch.float32).numpy()
        with np.errstate(all="ignore"):
            want = kernels.round_to(torch.from_numpy(xf * (np.float32(1.0) + np.float32(sigma) * z)), dtype)
    assert_same_bits(reference.gaussian_mul(x, sigma, seed, stream, offset), want)


@pytest.mark.parametrize(("be", "isa"), BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gaussian_mul_matches_the_reference_bit_for_bit(be, isa, dtype):
    with backend(be, isa) as B:
        for k, (n, offset) in enumerate([(0, 0), (1, 0), (3, 1), (7, 3), (64, 2), (4097, 1), (70001, 6), (9, 2**64 - 9)]):
            x = special_input(n, dtype, seed=k)
            for sigma in (0.1, 1.0, 3.0000001):
                got = B.gaussian_mul(x, sigma, 2**63 + k, k, offset)
                assert got.dtype == dtype and got.shape == x.shape
                assert_same_bits(got, reference.gaussian_mul(x, sigma, 2**63 + k, k, offset), (n, offset, sigma))


@pytest.mark.parametrize(("be", "isa"), BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
def test_gaussian_mul_layouts_out_and_inplace(be, isa, dtype):
    base = special_input(3 * 4111, dtype, seed=7).view(3, 4111)
    with backend(be, isa) as B:
        want = reference.gaussian_mul(base.t().contiguous(), 0.5, 1, 2, 3)
        assert_same_bits(B.gaussian_mul(base.t(), 0.5, 1, 2, 3), want)  # strided: row-major logical order
        one = torch.tensor(-1.5, dtype=dtype)
        bc = one.expand(70001)  # one value broadcast (the gradient of a sum)
        want_bc = reference.gaussian_mul(bc.contiguous(), 0.5, 1, 2, 3)
        assert_same_bits(B.gaussian_mul(bc, 0.5, 1, 2, 3), want_bc)
        out = torch.empty(70001, dtype=dtype)
        assert B.gaussian_mul(bc, 0.5, 1, 2, 3, out=out) is out
        assert_same_bits(out, want_bc)
        x = base.reshape(-1).clone()
        want_x = reference.gaussian_mul(x, 0.5, 1, 2, 3)
        assert B.gaussian_mul(x, 0.5, 1, 2, 3, out=x) is x  # in place
        assert_same_bits(x, want_x)
        strided = torch.empty(x.numel(), 2, dtype=dtype)[:, 0]
        assert B.gaussian_mul(want_x, 0.5, 1, 2, 3, out=strided) is strided
        assert_same_bits(strided.contiguous(), reference.gaussian_mul(want_x, 0.5, 1, 2, 3))


@pytest.mark.skipif(not ISAS, reason=f"no compiled kernel: {cpu.status()[1]}")
def test_gaussian_mul_thread_count_invariance():
    n = (1 << 17) + 4099
    x = torch.randn(n)
    want = reference.gaussian_mul(x, 0.8, 5, 6, 13)
    for isa in ISAS:
        with backend("cpu", isa) as B:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)  # restored by conftest
                assert_same_bits(B.gaussian_mul(x, 0.8, 5, 6, 13), want, (isa, threads))
                assert_same_bits(B.gaussian_mul(torch.tensor(2.0).expand(n), 0.8, 5, 6, 13),
                                 reference.gaussian_mul(torch.full((n,), 2.0), 0.8, 5, 6, 13), (isa, threads))


def test_gaussian_mul_rejects_bad_counters():
    with pytest.raises(ValueError, match=r"element indices of a call must stay in \[0, 2\*\*64\)"):
        B.gaussian_mul(torch.ones(3), 0.5, 1, 0, 2**64 - 2)
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*64\)"):
        B.gaussian_mul(torch.ones(3), 0.5, -1, 0, 0)


def test_gaussian_dropout_op_is_one_gaussian_mul():
    """The registered op returns kernels.gaussian_mul's bits, and its factor (vmap path) gives the same."""
    import dropkit.functional as F
    from dropkit.ops.kernels import gaussian_factor

    for dtype in FLOAT_DTYPES:
        x = special_input(1037, dtype, seed=11).view(17, 61)
        sigma = math.sqrt(0.3 / 0.7)
        y = F.gaussian_dropout(x, 0.3, seed=5)
        assert_same_bits(y, reference.gaussian_mul(x, sigma, 5, 0, 0))
        key = rng.key_tensor(5, 0)
        cdt = rng.compute_dtype(dtype)
        via_factor = kernels.round_to(x.to(cdt) * gaussian_factor(key, sigma, x.shape, 0, CPU, cdt), dtype)
        assert_same_bits(via_factor, y)
