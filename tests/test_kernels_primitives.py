"""The backends' primitives beyond the mask: ``uniform``, ``normal``, ``fused_bias_act_dropout_add``,
the backend each device's ops registered, and the counter range.

Every backend must return the bits of the definitions in :mod:`dropkit.rng` (uniform,
normal) and of the torch reference (fused op).
"""

from __future__ import annotations

import math

import pytest
import torch

import dropkit
from dropkit import kernels, rng
from dropkit.kernels import cpu, reference
from backend_helpers import ISAS, backend

CPU = torch.device("cpu")
SIZES = [0, 1, 3, 4, 5, 63, 65, 4095, 4097, 9001, 70001]
OFFSETS = [0, 1, 3, 6, 4093, 2**33 + 1, 4 * 2**32 - 3]  # the last crosses the lo32 block-counter wrap
KEYS = [(0, 0), (12345, 7), (2**64 - 1, 2**63 + 3)]
UNIFORM_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _backends():
    yield "reference", None
    for isa in ISAS:
        yield "cpu", isa


BACKENDS = list(_backends())
#: The backend the ops registered for CPU tensors.
B = kernels.for_device("cpu")
IDS = [f"{b}-{i}" if i else b for b, i in BACKENDS]


@pytest.mark.parametrize(("be", "isa"), BACKENDS, ids=IDS)
def test_uniform_is_rng_uniform_bit_for_bit(be, isa):
    with backend(be, isa) as B:
        for k, offset in enumerate(OFFSETS):
            seed, stream = KEYS[k % len(KEYS)]
            for n in SIZES:
                for dtype in UNIFORM_DTYPES:
                    got = B.uniform(n, seed, stream, offset, CPU, dtype)
                    want = rng.uniform((n,), seed, stream, offset, dtype=dtype)
                    assert got.dtype == dtype and got.shape == (n,)
                    assert torch.equal(got, want), (n, offset, dtype)
        assert B.uniform(5, 1, 0, 0, CPU).dtype == torch.float64  # the default dtype


@pytest.mark.parametrize(("be", "isa"), BACKENDS, ids=IDS)
def test_normal_is_rng_normal_bit_for_bit(be, isa):
    with backend(be, isa) as B:
        for k, offset in enumerate(OFFSETS + [2**64 - 70001]):
            seed, stream = KEYS[k % len(KEYS)]
            for n in (0, 1, 2, 3, 5, 7, 63, 65, 4097, 20001, 70001):
                for dtype in (torch.float32, torch.float64):
                    got = B.normal(n, seed, stream, offset, CPU, dtype)
                    want = rng.normal((n,), seed, stream, offset, dtype=dtype)
                    assert got.dtype == dtype and got.shape == (n,)
                    view = torch.int32 if dtype == torch.float32 else torch.int64
                    assert torch.equal(got.view(view), want.view(view)), (n, offset, dtype)
        assert B.normal(3, 1, 0, 0, CPU).dtype == torch.float32  # the default dtype


def test_uniform_values_are_in_the_open_interval_and_uniform():
    n = 1 << 18
    u = B.uniform(n, 2024, 1, 0, CPU)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    # mean of n U(0,1): sd = sqrt(1/12/n); 6 sigma
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / n)
    z = B.normal(n, 2024, 1, 0, CPU, torch.float64)
    assert abs(float(z.mean())) < 6 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 6 * math.sqrt(2 / n)


@pytest.mark.skipif(not ISAS, reason=f"no compiled kernel: {cpu.status()[1]}")
def test_uniform_thread_count_invariance():
    n = (1 << 17) + 4099
    want = rng.uniform((n,), 5, 6, 13, dtype=torch.float64)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)  # restored by conftest
        assert torch.equal(cpu.uniform(n, 5, 6, 13, CPU), want), threads
        assert torch.equal(cpu.uniform(n, 5, 6, 13, CPU, torch.float32), want.float()), threads


# ---------------------------------------------------------------------------
# The registered backend, and a primitive the compiled kernel lacks
# ---------------------------------------------------------------------------
def test_cpu_registers_the_compiled_kernel_where_it_loads():
    assert B.name == dropkit.backend_info("cpu")["backend"]
    assert (B.module is cpu) == cpu.available()
    assert kernels.for_device("meta").module is reference and kernels.backend("reference").module is reference
    with pytest.raises(ValueError, match="`name` must be one of"):
        kernels.backend("cuda")


def test_the_fused_op_on_the_cpu_backend_uses_its_mask(monkeypatch):
    """The compiled kernel has no fused op: the reference's torch ops run over the kernel's own keep mask."""
    if not ISAS:
        pytest.skip("no compiled kernel")
    calls = []
    real = cpu.keep_mask
    monkeypatch.setattr(cpu, "keep_mask", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(4, 8)
    got = kernels.backend("cpu").fused_bias_act_dropout_add(x, x, None, "relu", False, 0.5, 2.0, 1, 2, 3)
    assert calls == [(32, 0.5, 1, 2, 3, x.device)]
    assert torch.equal(got, reference.fused_bias_act_dropout_add(x, x, None, "relu", False, 0.5, 2.0, 1, 2, 3))


@pytest.mark.parametrize("activation", reference.FUSED_ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backward", [False, True])
def test_fused_dispatch_matches_the_reference_math(activation, dtype, backward):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 33, generator=g).to(dtype)
    a = torch.randn(37, 33, generator=g).to(dtype)
    b = torch.randn(33, generator=g).to(dtype)
    p, scale, seed, stream, offset = 0.3, 1 / 0.7, 2**64 - 3, 1, 17
    got = B.fused_bias_act_dropout_add(a, x, b, activation, backward, p, scale, seed, stream, offset)
    # written out: the reference op with the NumPy mask
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    keep = torch.from_numpy(rng.keep_mask_numpy(x.numel(), p, seed, stream, offset)).view(x.shape)
    factor = keep.to(cdt) * scale
    h = x.to(cdt) + b.to(cdt)
    if backward:
        want = (a.to(cdt) * factor) * reference._act_grad(h, activation)
    else:
        want = a.to(cdt) + reference._act(h, activation) * factor
    assert got.dtype == dtype and torch.equal(got, want.to(dtype))
    no_bias = B.fused_bias_act_dropout_add(a, x, None, activation, backward, p, scale, seed, stream, offset)
    with backend("reference") as R:
        assert torch.equal(
            no_bias, R.fused_bias_act_dropout_add(a, x, None, activation, backward, p, scale, seed, stream, offset)
        )


def test_fused_rejects_unknown_activation():
    x = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="`activation` must be one of .*received 'tanh'"):
        B.fused_bias_act_dropout_add(x, x, None, "tanh", False, 0.5, 2.0, 1, 0, 0)


# ---------------------------------------------------------------------------
# Counter range: no call may pass global index 2**64 (the backends would wrap differently)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("be", "isa"), BACKENDS, ids=IDS)
def test_counter_range_ends_at_2_pow_64(be, isa):
    top = 1 << 64
    with backend(be, isa) as B:
        # the last valid elements agree with the NumPy definition
        got = B.keep_mask(5, 0.5, 9, 1, top - 5, CPU)
        assert torch.equal(got, torch.from_numpy(rng.keep_mask_numpy(5, 0.5, 9, 1, top - 5)))
        assert torch.equal(B.uniform(3, 9, 1, top - 3, CPU), rng.uniform((3,), 9, 1, top - 3, dtype=torch.float64))
        # normal contract v2: normals use the element indices themselves (4 per Philox block)
        assert torch.equal(B.normal(3, 9, 1, top - 3, CPU), rng.normal((3,), 9, 1, top - 3))
        want = reference.gaussian_mul(torch.ones(5), 0.5, 9, 1, top - 5)
        assert torch.equal(B.gaussian_mul(torch.ones(5), 0.5, 9, 1, top - 5), want)
        for call in (
            lambda: B.keep_mask(6, 0.5, 9, 1, top - 5, CPU),
            lambda: B.dropout_mul(torch.ones(6), 0.5, 2.0, 9, 1, top - 5),
            lambda: B.uniform(4, 9, 1, top - 3, CPU),
            lambda: B.normal(4, 9, 1, top - 3, CPU),
            lambda: B.gaussian_mul(torch.ones(6), 0.5, 9, 1, top - 5),
            lambda: B.keep_mask(1, 0.5, 9, 1, -1, CPU),
        ):
            with pytest.raises(ValueError, match=r"element indices of a call must stay in \[0, 2\*\*64\)"):
                call()
        with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*64\)"):
            B.keep_mask(1, 0.5, top, 0, 0, CPU)
        with pytest.raises(ValueError, match=r"`stream` must be an int in \[0, 2\*\*64\)"):
            B.uniform(1, 0, -1, 0, CPU)


# ---------------------------------------------------------------------------
# The 16-bit NaN rule (docs/rng.md): one bit pattern per dtype, on every backend
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("be", "isa"), BACKENDS, ids=IDS)
@pytest.mark.parametrize(("dtype", "bits"), [(torch.float16, 0x7E00), (torch.bfloat16, 0x7FC0)], ids=str)
def test_16_bit_nan_results_have_one_bit_pattern(be, isa, dtype, bits):
    # NaNs of both signs and several payloads, kept and dropped (NaN * 0 is NaN), in the vector
    # body and the scalar tail of every loop
    payloads = [0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7FFF, 0xFFFF] if dtype == torch.float16 else \
        [0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF]
    n = 1000 + 13
    raw = torch.tensor(payloads * (n // len(payloads) + 1), dtype=torch.int32)[:n].to(torch.int16)
    x = raw.view(dtype)
    assert bool(torch.isnan(x).all())
    with backend(be, isa) as B:
        for p in (0.0, 0.5, 1.0):
            y = B.dropout_mul(x, p, 1 / (1 - p) if p < 1 else 0.0, 11, 0, 3)
            assert bool((y.view(torch.int16) == torch.tensor(bits, dtype=torch.int16)).all()), (p, y.view(torch.int16).unique())
        big = torch.full((2,), torch.finfo(dtype).max, dtype=dtype)
        inf = B.dropout_mul(big, 0.0, 4.0, 1, 0, 0)  # overflow to inf stays inf, not NaN
        assert bool(torch.isinf(inf).all())
