"""The compiled CPU kernel (dropkit.kernels.cpu) against the reference backend, bit for bit.

Every ISA the CPU supports is forced in turn; outputs are compared as raw bits
(``.view(int)``) so NaN payloads and the sign of zero are checked too, with no exception:
16-bit NaN results follow the rule of docs/rng.md (0x7E00 / 0x7FC0) on every backend.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import dropkit
from dropkit import kernels
from dropkit.kernels import cpu, reference
from dropkit.kernels.cpu import _sources
from dropkit.rng import keep_mask_numpy

CPU = torch.device("cpu")
SRC = str(Path(dropkit.__file__).resolve().parent.parent)
needs_kernel = pytest.mark.skipif(not cpu.available(), reason=f"no compiled kernel: {cpu.status()[1]}")

SIZES = [0, 1, 7, 8, 9, 15, 17, 63, 65, 127, 1000, 4097, 2**16 + 3]
OFFSETS = [0, 1, 7, 8, 13, 4095, 2**33 + 5, 8 * 2**32 - 13]  # the last crosses the lo32 counter wrap
KEYS = [(0, 0), (12345, 7), (2**64 - 1, 2**63 + 3), (0x0123456789ABCDEF, 2**32)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}
ISAS = [name for name in ("scalar", "avx2", "avx512", "neon") if name in cpu.supported_isas()]


@contextlib.contextmanager
def forced_isa(name: str):
    before = cpu.isa()
    cpu.set_isa(name)
    try:
        yield
    finally:
        cpu.set_isa(before)


@pytest.fixture(params=ISAS or ["none"])
def isa(request):
    if request.param == "none":
        pytest.skip(f"no compiled kernel: {cpu.status()[1]}")
    with forced_isa(request.param):
        yield request.param


def special_values(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random values mixed with NaN, +-inf, +-0, subnormals, values that overflow or round to ties."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 3).to(dtype)
    specials = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-45, 6e-8, -3e-5, 40000.0,
                65504.0, -60000.0, 1e38, -3.3e38, 1.0 + 2**-8, 1.0 + 2**-11, 1.0 + 3 * 2**-24]
    sv = torch.tensor(specials, dtype=torch.float64).to(dtype)
    if n:
        idx = torch.randint(0, n, (min(n, 3 * len(specials)),), generator=g)
        x[idx] = sv[torch.arange(len(idx)) % len(sv)]
    return x


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    gi, wi = got.reshape(-1).view(INT_VIEW[got.dtype]), want.reshape(-1).view(INT_VIEW[want.dtype])
    bad = gi != wi
    assert not bool(bad.any()), (
        f"{int(bad.sum())} elements differ, first at {bad.nonzero()[:5].flatten().tolist()}: "
        f"got {got.reshape(-1)[bad][:5].tolist()} want {want.reshape(-1)[bad][:5].tolist()}"
    )


# ---------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------
@needs_kernel
def test_status_reports_the_compiled_backend():
    name, reason = cpu.status()
    assert name == f"cpu-{cpu.isa()}" and name in {f"cpu-{i}" for i in ISAS}
    assert "loaded from" in reason and Path(reason.split("loaded from ")[1].split(" (")[0]).is_file()
    info = dropkit.backend_info("cpu")
    assert {k: info[k] for k in ("backend", "reason")} == {"backend": name, "reason": reason}
    assert "scalar" in cpu.supported_isas()


@needs_kernel
def test_set_isa_reports_the_level_and_rejects_unknown_names(isa):
    assert cpu.isa() == isa and cpu.status()[0] == f"cpu-{isa}"
    with pytest.raises(ValueError, match="ISA must be one of"):
        cpu.set_isa("sse9")


# ---------------------------------------------------------------------------
# keep_mask
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
def test_keep_mask_matches_reference(isa, n):
    for k, offset in enumerate(OFFSETS):
        seed, stream = KEYS[k % len(KEYS)]
        for p in (0.0, 1e-6, 0.3, 0.5, 0.99999, 1.0):
            got = cpu.keep_mask(n, p, seed, stream, offset, CPU)
            want = torch.from_numpy(keep_mask_numpy(n, p, seed, stream, offset))
            assert got.dtype == torch.bool and got.shape == (n,)
            assert torch.equal(got, want), (n, offset, p, seed, stream)


def test_keep_mask_every_start_bit(isa):
    """Every offset % 8 and every length % 64 around a block boundary, one seed."""
    want = keep_mask_numpy(300, 0.4, 99, 5, 1000)
    for start in range(0, 24):
        for n in (1, 2, 31, 64, 65, 129, 200):
            got = cpu.keep_mask(n, 0.4, 99, 5, 1000 + start, CPU).numpy()
            np.testing.assert_array_equal(got, want[start : start + n])


# ---------------------------------------------------------------------------
# dropout_mul
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_mul_matches_reference(isa, dtype):
    for i, n in enumerate(SIZES):
        offset = OFFSETS[i % len(OFFSETS)]
        seed, stream = KEYS[i % len(KEYS)]
        x = special_values(n, dtype, seed=i)
        for p, scale in ((0.5, 2.0), (0.3, 1 / 0.7), (0.0, 1.0), (1.0, 0.0), (0.9, 10.0)):
            got = cpu.dropout_mul(x, p, scale, seed, stream, offset)
            want = reference.dropout_mul(x, p, scale, seed, stream, offset)
            assert_same_bits(got, want, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_mul_in_place_misaligned_and_no_out_of_bounds_writes(isa, dtype):
    """x and out at every element offset inside a guarded buffer: the result matches and the guard is intact."""
    for lead in range(0, 9):
        for n in (1, 5, 16, 33, 250, 4100):
            buf = special_values(n + 40, dtype, seed=lead)
            x = buf[lead : lead + n]
            want = reference.dropout_mul(x.clone(), 0.5, 2.0, 3, 4, lead + 1)
            guard = buf.clone()
            out = cpu.dropout_mul(x, 0.5, 2.0, 3, 4, lead + 1, out=x)  # in place
            assert out.data_ptr() == x.data_ptr()
            assert_same_bits(out, want, guard[lead : lead + n])
            outside = torch.ones(n + 40, dtype=torch.bool)
            outside[lead : lead + n] = False
            assert torch.equal(buf.view(INT_VIEW[dtype])[outside], guard.view(INT_VIEW[dtype])[outside])
            dst = torch.full((n + 40,), 7.0, dtype=dtype)
            cpu.dropout_mul(guard[lead : lead + n], 0.5, 2.0, 3, 4, lead + 1, out=dst[lead + 1 : lead + 1 + n])
            assert_same_bits(dst[lead + 1 : lead + 1 + n], want, guard[lead : lead + n])
            assert bool((dst[: lead + 1] == 7).all()) and bool((dst[lead + 1 + n :] == 7).all())


@needs_kernel
def test_dropout_mul_partially_overlapping_out_and_non_contiguous_x():
    x = special_values(1000, torch.float32)
    want = reference.dropout_mul(x[:900].clone(), 0.5, 2.0, 1, 2, 3)
    buf = x.clone()
    got = cpu.dropout_mul(buf[:900], 0.5, 2.0, 1, 2, 3, out=buf[50:950])  # overlaps x, shifted
    assert got.data_ptr() == buf[50:].data_ptr()
    assert_same_bits(got, want, x[:900])
    xt = torch.randn(37, 53).t()
    assert_same_bits(cpu.dropout_mul(xt, 0.5, 2.0, 1, 2, 3), reference.dropout_mul(xt.contiguous(), 0.5, 2.0, 1, 2, 3), xt)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_public_op_uses_the_kernel_and_matches_the_reference_backend(dtype):
    """dropkit.functional.dropout on non-contiguous and misaligned inputs, forward and backward, against the
    op's implementation over the reference backend."""
    ref = kernels.backend("reference")
    key, scale = dropkit.rng.key_tensor(11, 2), dropkit.rng.inverted_scale(0.3)
    base = special_values(3 * 61 * 47 + 1, dtype)
    inputs = {
        "transposed": base[1:].view(3, 61, 47).transpose(0, 2),
        "misaligned": base[1:],
        "strided": base[::3],
    }
    for name, x in inputs.items():
        xr = x.detach().clone().requires_grad_()
        y = dropkit.functional.dropout(xr, 0.3, seed=dropkit.rng.key_tensor(11, 2))
        want = dropkit.ops.kernels.IMPLS["dropout"](ref, x, key, 0.3, scale, None, 0)
        gwant = dropkit.ops.kernels.IMPLS["dropout"](ref, torch.ones_like(x), key, 0.3, scale, None, 0)
        assert_same_bits(y.detach(), want, x)
        if xr.requires_grad:
            (g,) = torch.autograd.grad(y, xr, torch.ones_like(y))
            assert_same_bits(g, gwant, torch.ones_like(x))


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------
@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_thread_count_invariance(dtype):
    n = max(cpu.parallel_threshold, 1 << 17) + 4099
    x = special_values(n, dtype)
    results = {}
    for threads in (1, 2, 3, 7):
        torch.set_num_threads(threads)  # restored by conftest
        results[threads] = (cpu.keep_mask(n, 0.5, 5, 6, 13, CPU), cpu.dropout_mul(x, 0.5, 2.0, 5, 6, 13))
    want_mask = torch.from_numpy(keep_mask_numpy(n, 0.5, 5, 6, 13))
    want = reference.dropout_mul(x, 0.5, 2.0, 5, 6, 13)
    for threads, (mask, y) in results.items():
        assert torch.equal(mask, want_mask), threads
        assert_same_bits(y, want, x)


@needs_kernel
def test_concurrent_callers_share_the_pool_safely():
    n = (1 << 17) + 3
    want = torch.from_numpy(keep_mask_numpy(n, 0.5, 1, 0, 0))
    torch.set_num_threads(2)
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(5):
            if not torch.equal(cpu.keep_mask(n, 0.5, 1, 0, 0, CPU), want):
                errors.append(f"thread {k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _child_after_fork(q) -> None:
    # Compare in NumPy: torch's own OpenMP pool can hang in a forked child once the parent used it.
    n = (1 << 17) + 3
    torch.set_num_threads(2)
    q.put(bool(np.array_equal(cpu.keep_mask(n, 0.5, 1, 0, 0, CPU).numpy(), keep_mask_numpy(n, 0.5, 1, 0, 0))))


@needs_kernel
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_thread_pool_survives_fork():
    torch.set_num_threads(2)
    cpu.keep_mask((1 << 17) + 3, 0.5, 1, 0, 0, CPU)  # the parent's pool is running
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_after_fork, args=(q,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0 and q.get(timeout=5) is True


# ---------------------------------------------------------------------------
# Fallback, environment switches, build failure (subprocesses: import-time state)
# ---------------------------------------------------------------------------
_CASES = textwrap.dedent(
    """
    import hashlib, json, sys, warnings
    import torch
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import dropkit
        from dropkit import kernels
        info = dropkit.backend_info("cpu")
        out = {}
        for i, dtype in enumerate([torch.float32, torch.float64, torch.float16, torch.bfloat16]):
            x = (torch.arange(5003, dtype=torch.float64).sin() * 100).to(dtype)
            x[7] = float("inf")
            y = kernels.for_device("cpu").dropout_mul(x, 0.3, 1 / 0.7, 2**64 - 5, 9, 12345 + i, None)
            m = kernels.for_device("cpu").keep_mask(70001, 0.3, 2**64 - 5, 9, 3 + i, torch.device("cpu"))
            out[str(dtype)] = [hashlib.sha256(y.numpy().tobytes() if dtype != torch.bfloat16
                                              else y.view(torch.int16).numpy().tobytes()).hexdigest(),
                               hashlib.sha256(m.numpy().tobytes()).hexdigest()]
    print(json.dumps({"info": info, "out": out, "warnings": [str(w.message) for w in caught
                                                            if "dropkit" in str(w.message)]}))
    """
)


#: Makes a subprocess ignore the library built into the package, to exercise the first-use build.
#: Makes the loader skip the library built into the package (extra build flags: a first-use build), so that
#: the build path runs at ``import dropkit``, where the ops register their CPU kernel.
NO_PACKAGED = {"DROPKIT_CPU_CFLAGS": "-O0"}


def _run(env_extra: dict[str, str], prelude: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    env.update(env_extra, PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", prelude + _CASES], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_kernel
def test_fallback_equals_kernel_and_says_why():
    fast = _run({"DROPKIT_CPU_ISA": "scalar"})
    slow = _run({"DROPKIT_NO_KERNEL": "1"})
    assert fast["info"]["backend"] == "cpu-scalar"
    assert slow["info"]["backend"] == "reference" and "DROPKIT_NO_KERNEL" in slow["info"]["reason"]
    assert slow["warnings"] == []  # disabling on purpose is not worth a warning
    in_process = {}
    import hashlib

    for i, dtype in enumerate(DTYPES):
        x = (torch.arange(5003, dtype=torch.float64).sin() * 100).to(dtype)
        x[7] = float("inf")
        y = cpu.dropout_mul(x, 0.3, 1 / 0.7, 2**64 - 5, 9, 12345 + i)
        m = cpu.keep_mask(70001, 0.3, 2**64 - 5, 9, 3 + i, CPU)
        yb = y.numpy().tobytes() if dtype != torch.bfloat16 else y.view(torch.int16).numpy().tobytes()
        in_process[str(dtype)] = [hashlib.sha256(yb).hexdigest(), hashlib.sha256(m.numpy().tobytes()).hexdigest()]
    assert fast["out"] == slow["out"] == in_process


def test_build_failure_falls_back_with_one_warning(tmp_path):
    res = _run({"CC": "false", "DROPKIT_CACHE_DIR": str(tmp_path), **NO_PACKAGED})
    assert res["info"]["backend"] == "reference"
    assert "failed" in res["info"]["reason"] and "reference" in res["info"]["reason"]
    assert len(res["warnings"]) == 1 and "compiled CPU kernel unavailable" in res["warnings"][0]
    assert "wheel built for this platform" in res["warnings"][0]  # says how to get the fast path
    res = _run({"CC": "no-such-compiler-dropkit", "DROPKIT_CACHE_DIR": str(tmp_path), **NO_PACKAGED})
    assert "no C compiler found" in res["info"]["reason"] and len(res["warnings"]) == 1
    assert not list(tmp_path.rglob("*.so"))


# ---------------------------------------------------------------------------
# C self test: every SIMD level == the scalar path on random bit patterns
# ---------------------------------------------------------------------------
_SELFTEST = Path(__file__).resolve().parent / "cpu_kernel_selftest.c"
_KERNEL_DIR = Path(cpu.__file__).resolve().parent


def _compile_and_run(cc: list[str], runner: list[str], tmp_path: Path, extra: list[str]) -> str:
    exe = tmp_path / "selftest"
    others = [str(_KERNEL_DIR / s) for s in _sources.SOURCES if s != "dropkit_cpu.c"]  # the selftest includes that one
    build = subprocess.run([*cc, "-O2", "-std=gnu11", "-pthread", "-ffp-contract=off", *extra, f"-I{_KERNEL_DIR}",
                            str(_SELFTEST), *others, "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and " 0 failures" in run.stdout, run.stdout + run.stderr
    return run.stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_selftest_native(tmp_path):
    _compile_and_run(["cc"], [], tmp_path, [])


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
                    reason="needs gcc-aarch64-linux-gnu and qemu-user to check the NEON path on this host")
def test_c_selftest_neon_under_qemu(tmp_path):
    out = _compile_and_run(["aarch64-linux-gnu-gcc"], ["qemu-aarch64"], tmp_path, ["-static"])
    assert "features 0x9" in out  # scalar + NEON
