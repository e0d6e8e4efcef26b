"""The Triton backend against the reference backend, bit for bit.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors, with the ops' CPU kernels replaced by their implementations over the Triton backend; results are
compared with :mod:`dropkit.kernels.reference` through integer views of the output bits.
A compile test lowers every kernel to a cubin for sm_80 / sm_90 (no GPU needed), which
catches what the interpreter accepts but the compiler rejects. Tests marked ``cuda`` run
the compiled kernels and are skipped without a CUDA device.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings

import pytest
import torch

pytest.importorskip("triton")
# the interpreter evaluates inf * x and float16 overflow with NumPy, which warns
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

import dropkit  # noqa: E402
import dropkit.functional as DF  # noqa: E402
from dropkit import kernels  # noqa: E402
from dropkit.kernels import reference  # noqa: E402
from dropkit.kernels import triton as tk  # noqa: E402
from dropkit.rng import keep_probability, threshold  # noqa: E402
from backend_helpers import assert_same_bits, requires_cuda, special_input  # noqa: E402

CPU = torch.device("cpu")
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SEEDS = [0, 0x0123456789ABCDEF, 2**64 - 1]


@contextlib.contextmanager
def _registered_on_cpu(name: str):
    """The ``dropkit::`` ops' CPU kernels are their implementations over backend ``name`` inside the block (a
    scoped registration: leaving it restores the kernels registered at import)."""
    be = kernels.backend(name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding a previously registered kernel", UserWarning)
        with torch.library._scoped_library("dropkit", "IMPL") as lib:
            for op, impl in dropkit.ops.kernels.IMPLS.items():
                lib.impl(op, functools.partial(impl, be), "CPU")
            yield be


@pytest.fixture
def interpreter():
    """Triton's interpreter on and the ops' CPU kernels running the Triton backend, for one test."""
    saved_env = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        with _registered_on_cpu("triton"):
            yield
    finally:
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


# --------------------------------------------------------------------------- availability
def test_status_and_available(interpreter):
    assert tk.available()
    assert dropkit.backend_info("cpu")["backend"] != "triton"  # registered at import: the C kernel or the reference
    name, reason = tk.status()
    assert name == "triton-interpreter" and "TRITON_INTERPRET" in reason


def test_without_triton_the_backend_steps_aside(monkeypatch):
    """With ``import triton`` failing, the backend reports itself unavailable and CUDA falls back."""
    import sys

    monkeypatch.setitem(sys.modules, "triton", None)
    assert not tk.available()
    assert tk.status() == ("reference", "Triton is not installed (pip install 'dropkit[triton]')")
    assert kernels._chosen("cuda").module is reference  # what a process without Triton registers for CUDA


def test_cpu_tensor_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        tk.keep_mask(8, 0.5, 0, 0, 0, CPU)


# --------------------------------------------------------------------------- keep_mask
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1023, 2053])
@pytest.mark.parametrize("offset", [0, 3, 8, 2**33 + 5])
def test_keep_mask_matches_reference(interpreter, n, offset):
    for seed, stream in [(SEEDS[0], 0), (SEEDS[1], 2**63 + 1), (SEEDS[2], 2**32 - 1)]:
        got = tk.keep_mask(n, 0.3, seed, stream, offset, CPU)
        want = reference.keep_mask(n, 0.3, seed, stream, offset, CPU)
        assert got.dtype == torch.bool and got.shape == (n,)
        assert torch.equal(got, want), (n, offset, seed, stream)


@pytest.mark.parametrize("p", [0.0, 2.0**-17, 2.0**-16, 0.1, 0.5, 1 / 3, 1 - 2.0**-16, 1.0])
def test_keep_mask_thresholds(interpreter, p):
    got = tk.keep_mask(300, p, 7, 1, 5, CPU)
    assert torch.equal(got, reference.keep_mask(300, p, 7, 1, 5, CPU))
    if threshold(p) == 0:
        assert got.all()
    if threshold(p) == 65536:
        assert not got.any()


def test_keep_probability_is_the_16_bit_one(interpreter):
    """p = 0.1 keeps 1 - 6554/65536, and every step of 2**-16 in p changes the mask.

    FlashAttention-2's 8-bit threshold keeps 230/256 at p = 0.1 and gives the same mask for
    every p in (6400/65536, 6656/65536); here masks for p = t/65536, t = 6550..6560, are
    nested and each step drops more elements.
    """
    n = 1 << 16
    q = keep_probability(0.1)
    assert q == 1 - 6554 / 65536
    kept = int(tk.keep_mask(n, 0.1, 1234, 0, 0, CPU).sum())
    assert abs(kept - n * q) < 4.5 * math.sqrt(n * q * (1 - q))
    masks = [tk.keep_mask(n, t / 65536, 1234, 0, 0, CPU) for t in range(6550, 6561)]
    counts = [int(m.sum()) for m in masks]
    assert counts[0] > counts[-1]
    for a, b in zip(masks, masks[1:]):
        assert not (b & ~a).any()  # nested: a larger p only drops more
    assert sum(c1 > c2 for c1, c2 in zip(counts, counts[1:])) >= 5


# --------------------------------------------------------------------------- dropout_mul
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n,offset", [(1, 0), (13, 3), (1031, 0), (2049, 7)])
def test_dropout_mul_matches_reference(interpreter, dtype, n, offset):
    x = special_input(n, dtype, seed=n)
    for p in (0.1, 1 / 3):
        scale = 1.0 / (1.0 - p)
        got = tk.dropout_mul(x, p, scale, SEEDS[1], 5, offset)
        assert_same_bits(got, reference.dropout_mul(x, p, scale, SEEDS[1], 5, offset))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_dropout_mul_out_and_inplace(interpreter, dtype):
    x = special_input(777, dtype)
    want = reference.dropout_mul(x, 0.25, 4 / 3, 3, 0, 1)
    out = torch.empty_like(x)
    assert tk.dropout_mul(x, 0.25, 4 / 3, 3, 0, 1, out=out) is out
    assert_same_bits(out, want)
    y = x.clone()
    assert tk.dropout_mul(y, 0.25, 4 / 3, 3, 0, 1, out=y) is y
    assert_same_bits(y, want)
    strided = torch.empty(777, 2, dtype=dtype)[:, 0]
    assert tk.dropout_mul(x, 0.25, 4 / 3, 3, 0, 1, out=strided) is strided
    assert_same_bits(strided.contiguous(), want)


def test_bfloat16_rounds_to_nearest_even(interpreter):
    """float32 products halfway between two bfloat16 values round to the even one (as torch does)."""
    base = torch.tensor([1.0, 1.0078125, -1.0, 3.0], dtype=torch.bfloat16)
    x = base.repeat(64)
    # scale 1 + 2**-8 puts x * scale exactly halfway for x = 1; nearest-even decides
    got = tk.dropout_mul(x, 0.0, 1.0 + 2.0**-8, 0, 0, 0)
    assert_same_bits(got, reference.dropout_mul(x, 0.0, 1.0 + 2.0**-8, 0, 0, 0))


def test_empty(interpreter):
    assert tk.keep_mask(0, 0.5, 0, 0, 3, CPU).shape == (0,)
    assert tk.dropout_mul(torch.empty(0), 0.5, 2.0, 0, 0, 0).shape == (0,)


# --------------------------------------------------------------------------- the public op
def _with_backend(name: str, fn):
    with _registered_on_cpu(name):
        return fn()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_dropout_op_strides_noise_shape_backward(interpreter, dtype):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 7, 5, 3, generator=g).to(dtype)
    cases = [
        dict(x=base.transpose(1, 3), kw={}),  # non-contiguous
        dict(x=base[:, ::2], kw={}),  # strided slice
        dict(x=base, kw={"noise_shape": (6, 7, 1, 1)}),  # spatial dropout, broadcast mask
        dict(x=base, kw={"noise_shape": (None, 1, 5, None)}),
        dict(x=base, kw={"seed": dropkit.rng.key_tensor(2**63 + 11, 2**64 - 1)}),
    ]
    for case in cases:
        def run():
            x = case["x"].detach().clone().requires_grad_()
            y = DF.dropout(x, 0.3, **{"seed": 2**63 + 11, **case["kw"]})
            y.backward(torch.ones_like(y))
            return y.detach(), x.grad

        y_t, g_t = run()
        y_r, g_r = _with_backend("reference", run)
        assert_same_bits(y_t, y_r)
        assert_same_bits(g_t, g_r)


def test_dropout_op_inplace(interpreter):
    x = torch.randn(3, 333)
    want = _with_backend("reference", lambda: DF.dropout(x.clone(), 0.4, seed=9))
    y = x.clone()
    assert DF.dropout(y, 0.4, inplace=True, seed=9) is y
    assert_same_bits(y, want)


def test_batch_shard_offsets(interpreter):
    """A shard starting at sample 3 draws rows 3.. of the full batch's mask (the offset path)."""
    x = torch.ones(8, 37)
    full = DF.dropout(x, 0.5, seed=4)
    with dropkit.rng.batch_shard(3):
        part = DF.dropout(x[3:], 0.5, seed=4)
    assert_same_bits(part, full[3:])


# --------------------------------------------------------------------------- fused op
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "identity"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_fused_triton_matches_torch_path(interpreter, activation, dtype):
    g = torch.Generator().manual_seed(3)
    shape = (5, 67)
    x = torch.randn(shape, generator=g).to(dtype)
    b = torch.randn(shape[-1], generator=g).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)

    def run():
        xs, bs, rs = (t.detach().clone().requires_grad_() for t in (x, b, r))
        y = DF.fused_bias_act_dropout_add(xs, bs, rs, 0.3, activation, seed=dropkit.rng.key_tensor(2**64 - 3, 1))
        y.backward(torch.linspace(-1, 1, y.numel()).view(shape).to(dtype))
        return y.detach(), xs.grad, bs.grad, rs.grad

    got = run()
    want = _with_backend("reference", run)
    keep = reference.keep_mask(x.numel(), 0.3, 2**64 - 3, 1, 0, CPU).view(shape)
    assert torch.equal(got[0][~keep], r[~keep])  # dropped: exactly the residual
    assert torch.equal(got[1][~keep], torch.zeros_like(got[1][~keep]))
    if activation in ("relu", "identity") or dtype in (torch.float16, torch.bfloat16):
        exact = activation in ("relu", "identity")
    else:
        exact = False
    for a, w in zip(got, want):
        if exact:
            assert_same_bits(a, w)
        else:  # erf / exp differ by an ulp between NumPy (interpreter) and torch
            tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
            torch.testing.assert_close(a, w, rtol=tol, atol=tol)


def test_fused_triton_no_bias_and_eval(interpreter):
    x, r = torch.randn(4, 33), torch.randn(4, 33)
    y = DF.fused_bias_act_dropout_add(x, None, r, 0.5, "silu", training=False)
    torch.testing.assert_close(y, r + torch.nn.functional.silu(x), rtol=1e-6, atol=1e-6)
    y1 = DF.fused_bias_act_dropout_add(x, None, r, 1.0, "relu", seed=1)
    assert torch.equal(y1, r)


# --------------------------------------------------------------------------- uniforms
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,offset", [(0, 0), (1, 0), (3, 1), (7, 3), (1025, 2), (4099, 2**33 + 1), (5, 2**64 - 5)])
def test_uniform_matches_rng_bit_for_bit(interpreter, dtype, n, offset):
    for seed, stream in [(SEEDS[0], 0), (SEEDS[2], 2**63 + 1)]:
        got = tk.uniform(n, seed, stream, offset, CPU, dtype)
        assert got.dtype == dtype and got.shape == (n,)
        assert_same_bits(got, dropkit.rng.uniform((n,), seed, stream, offset, dtype=dtype))
    assert_same_bits(kernels.backend("triton").uniform(n, 3, 4, offset, CPU, dtype), reference.uniform(n, 3, 4, offset, CPU, dtype))
    if n:  # in the open interval (0, 1), float64: exact multiples of 2**-33, odd
        u = tk.uniform(n, 5, 0, offset, CPU)
        assert bool((u > 0).all() and (u < 1).all())
        assert bool((torch.frexp(u * 2.0**33).mantissa != 0).all())


# --------------------------------------------------------------------------- normal contract v2
@pytest.mark.parametrize("n,offset", [(0, 0), (1, 0), (3, 1), (7, 3), (1025, 2), (4099, 2**33 + 1), (5, 2**64 - 5)])
def test_normal_matches_rng_bit_for_bit(interpreter, n, offset):
    for seed, stream in [(SEEDS[0], 0), (SEEDS[2], 2**63 + 1)]:
        got = tk.normal(n, seed, stream, offset, CPU)
        assert got.dtype == torch.float32 and got.shape == (n,)
        assert torch.equal(got.view(torch.int32), dropkit.rng.normal((n,), seed, stream, offset).view(torch.int32))
    assert torch.equal(kernels.backend("triton").normal(n, 3, 4, offset, CPU, torch.float64), dropkit.rng.normal((n,), 3, 4, offset, dtype=torch.float64))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n,offset", [(1, 0), (13, 3), (1031, 0), (2049, 7)])
def test_gaussian_mul_matches_reference(interpreter, dtype, n, offset):
    x = special_input(n, dtype, seed=n)
    for sigma in (0.25, 1.5275252316519468):
        assert_same_bits(tk.gaussian_mul(x, sigma, SEEDS[1], 5, offset), reference.gaussian_mul(x, sigma, SEEDS[1], 5, offset))
    out = torch.empty_like(x)
    assert kernels.backend("triton").gaussian_mul(x, 0.5, 1, 2, offset, out=out) is out
    assert_same_bits(out, reference.gaussian_mul(x, 0.5, 1, 2, offset))
    y = DF.gaussian_dropout(x.view(1, -1).expand(2, -1), 0.3, seed=9)  # the public op, a strided input
    assert_same_bits(y, reference.gaussian_mul(x.view(1, -1).expand(2, -1).contiguous(), math.sqrt(0.3 / 0.7), 9, 0, 0))


# --------------------------------------------------------------------------- compiled kernels (no GPU needed)
def _compile_all(arch: int, fp_fusion: bool = False, key_in_memory: bool = False) -> dict[str, str]:
    """Lower every kernel to PTX and cubin for ``sm_<arch>``; returns the PTX by case name.

    ``fp_fusion``: Triton's ``enable_fp_fusion`` (on by default, and how Inductor compiles a graph's user
    kernels); ``key_in_memory``: the graph launches' key tensor instead of the eager scalar key."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - depends on the Triton version
        pytest.skip(f"this Triton has no offline compile API: {exc}")
    import triton

    mod = tk._module(False)
    key = {a: "i32" for a in ("b_lo", "b_hi", "seed_lo", "seed_hi", "stream_lo", "stream_hi", "thr", "scale_lo", "scale_hi")}
    div16 = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", arch, 32)
    ptx = {}

    def build(name, fn, sig, constexprs, n_ptrs):
        items = list(sig.items())
        sig = dict(items[:n_ptrs] + [("key_ptr", "*i64")] + items[n_ptrs:])
        constexprs = {**constexprs, "KEY_IN_MEMORY": key_in_memory}
        for k in constexprs:
            sig[k] = "constexpr"
        attrs = {(i,): div16 for i in range(n_ptrs + 2)}  # pointers and n aligned, as at most launches
        try:
            src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        except TypeError as exc:  # pragma: no cover - older ASTSource signature
            pytest.skip(f"this Triton's ASTSource differs: {exc}")
        compiled = triton.compile(src, target=target, options={"num_warps": 4, "enable_fp_fusion": fp_fusion})
        assert compiled.asm.get("cubin"), name
        ptx[name] = compiled.asm["ptx"]

    build("keep_mask", mod.keep_mask_kernel, {"out_ptr": "*u8", "n": "i32", **key}, {"START": 3, "BLOCK_B": tk.BLOCK_B}, 1)
    for dt, ptr in [(torch.float16, "*fp16"), (torch.bfloat16, "*i16"), (torch.float32, "*fp32"), (torch.float64, "*fp64")]:
        xptr = ptr
        meta = {"F64": dt == torch.float64, "BF16": dt == torch.bfloat16, "START": 0, "BLOCK_B": tk.BLOCK_B}
        build(f"dropout_mul {dt}", mod.dropout_mul_kernel, {"x_ptr": xptr, "out_ptr": ptr, "n": "i64", **key}, meta, 2)
    sig = {"a_ptr": "*i16", "x_ptr": "*i16", "bias_ptr": "*i16", "out_ptr": "*i16", "n": "i32", **key, "H": "i32"}
    for act, code in tk.ACTIVATIONS.items():
        for backward in (False, True):
            meta = {"ACT": code, "HAS_BIAS": True, "BACKWARD": backward, "F64": False, "BF16": True, "START": 0, "BLOCK_B": tk.BLOCK_B}
            build(f"fused {act} backward={backward}", mod.fused_kernel, sig, meta, 4)
    nkey = {k: v for k, v in key.items() if k != "thr"}
    for ptr in ("*fp32", "*fp64"):
        meta = {"START": 2, "BLOCK_B": tk.NORMAL_BLOCK_B}
        build(f"uniform {ptr}", mod.uniform_kernel, {"out_ptr": ptr, "n": "i32", **nkey}, meta, 1)
    build("normal", mod.normal_kernel, {"out_ptr": "*fp32", "n": "i32", **nkey}, {"START": 1, "BLOCK_B": tk.NORMAL_BLOCK_B}, 1)
    for dt, ptr in [(torch.bfloat16, "*i16"), (torch.float32, "*fp32"), (torch.float64, "*fp64")]:
        meta = {"F64": dt == torch.float64, "BF16": dt == torch.bfloat16, "START": 0, "BLOCK_B": tk.NORMAL_BLOCK_B}
        build(f"gaussian_mul {dt}", mod.gaussian_mul_kernel, {"x_ptr": ptr, "out_ptr": ptr, "n": "i64", **nkey}, meta, 2)
    return ptx


@pytest.mark.parametrize(
    "arch,fp_fusion,key_in_memory",
    [(80, False, False), (90, False, False), (90, True, False), (90, True, True)],
    ids=["sm80", "sm90", "sm90-fp-fusion", "sm90-fp-fusion-graph-key"],
)
def test_kernels_compile_for_gpu(arch, fp_fusion, key_in_memory, monkeypatch):
    """The PTX of every kernel, with Triton's FP fusion off and on (Inductor compiles a graph's user
    kernels with it on) and with the key in memory (graph launches)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ptx = _compile_all(arch, fp_fusion, key_in_memory)
    assert "mul.hi.u32" in ptx["keep_mask"]  # Philox's 32x32 -> high 32 products
    if key_in_memory:  # the key is read from the device: four 64-bit loads before Philox
        assert ptx["keep_mask"].count("ld.global.b64") + ptx["keep_mask"].count("ld.global.u64") >= 1
    # normal contract v2 on the GPU: the correctly rounded division and square root, no contracted
    # multiply-add (whatever the fusion option), no approximate (fast-math) instructions
    for name in ("normal", "gaussian_mul torch.float32", "gaussian_mul torch.bfloat16", "gaussian_mul torch.float64"):
        code = ptx[name]
        assert "div.rn.f32" in code and "sqrt.rn.f32" in code, name
        assert "fma." not in code and ".approx" not in code and ".ftz" not in code, name
    # residual + act(h) * f rounds like the unfused torch ops (erf and exp use fused operations inside)
    for name in ("fused identity backward=False", "fused relu backward=False", "dropout_mul torch.float32"):
        assert "fma." not in ptx[name], name


# --------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n,offset", [(1, 0), (1031, 7), ((1 << 20) + 3, 2**40 + 1)])
@requires_cuda
def test_cuda_matches_cpu_reference(dtype, n, offset):
    dev = torch.device("cuda")
    assert dropkit.backend_info(dev)["backend"] == "triton"
    mask = kernels.for_device(dev).keep_mask(n, 0.1, SEEDS[1], 3, offset, dev)
    assert torch.equal(mask.cpu(), reference.keep_mask(n, 0.1, SEEDS[1], 3, offset, CPU))
    x = special_input(n, dtype)
    got = kernels.for_device(dev).dropout_mul(x.to(dev), 0.1, 1 / 0.9, SEEDS[1], 3, offset).cpu()
    assert_same_bits(got, reference.dropout_mul(x, 0.1, 1 / 0.9, SEEDS[1], 3, offset))


@requires_cuda
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_cuda_fused_matches_cpu(activation):
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(64, 257, generator=g), torch.randn(64, 257, generator=g)
    b = torch.randn(257, generator=g)
    outs = []
    for dev in ("cpu", "cuda"):
        xs, bs, rs = (t.to(dev).requires_grad_() for t in (x, b, r))
        y = DF.fused_bias_act_dropout_add(xs, bs, rs, 0.2, activation, seed=77)
        y.sum().backward()
        outs.append([t.detach().cpu() for t in (y, xs.grad, bs.grad, rs.grad)])
    for a, w in zip(*outs):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_cuda_backward_saves_no_mask():
    x = torch.randn(1 << 16, device="cuda", requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        DF.dropout(x, 0.5, seed=1).sum()
    assert saved == []


@pytest.mark.parametrize(("dtype", "bits"), [(torch.float16, 0x7E00), (torch.bfloat16, 0x7FC0)], ids=str)
def test_16_bit_nan_rule(interpreter, dtype, bits):
    """docs/rng.md: a 16-bit NaN result is the canonical quiet NaN, whatever the input's sign and payload."""
    payloads = [0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7FFF, 0xFFFF] if dtype == torch.float16 else \
        [0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF]
    x = torch.tensor(payloads * 50, dtype=torch.int32).to(torch.int16).view(dtype)
    for p in (0.0, 0.5, 1.0):
        y = tk.dropout_mul(x, p, 2.0, 11, 0, 3)
        assert bool((y.view(torch.int16) == bits).all()), y.view(torch.int16).unique()
    for backward in (False, True):  # forward: x + x * f; backward: x * f * 1 (every value NaN)
        y = tk.fused_bias_act_dropout_add(x, x, None, "identity", backward, 0.5, 2.0, 11, 0, 3)
        assert bool((y.view(torch.int16) == bits).all())


def test_loading_the_kernels_leaves_the_environment_alone(monkeypatch):
    """Loading the interpreted kernels must not set TRITON_INTERPRET for the process (issue #13)."""
    import threading

    monkeypatch.setattr(tk, "_loaded", {})
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(os.environ.get("TRITON_INTERPRET"))

    t = threading.Thread(target=watch)
    t.start()
    try:
        tk._module(True)
        tk._module(False)
    finally:
        stop.set()
        t.join()
    assert set(seen) <= {None} and "TRITON_INTERPRET" not in os.environ
    from triton import knobs

    assert "interpret" not in knobs.runtime.__dict__  # the knob is restored too
