"""Every dropkit call goes through PyTorch's dispatcher (issue 20): what the dispatcher then gives for free.

The dispatcher resolves negative bits before a kernel reads its input, keeps copy-on-write inputs lazy,
sends meta tensors to the fake kernels, and lets dispatch modes see every call; ``backend_info`` reads
what the ops registered for each device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dropkit
import dropkit.functional as F
from dropkit import kernels, ops
from dropkit.kernels import cpu, reference

SRC = str(Path(dropkit.__file__).resolve().parent.parent)


def _neg_view(*shape: int) -> torch.Tensor:
    """A tensor whose negative bit is set (the imaginary part of a conjugate view), as the issue reproduces it."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g)).conj().imag
    assert x.is_neg()
    return x


VARIANTS = {
    "dropout": lambda t: F.dropout(t, 0.5, seed=3),
    "dropout noise_shape": lambda t: F.dropout(t, 0.5, seed=3, noise_shape=(2, 3, 1, 1)),
    "alpha_dropout": lambda t: F.alpha_dropout(t, 0.3, seed=3),
    "gaussian_dropout": lambda t: F.gaussian_dropout(t, 0.3, seed=3),
    "drop_block2d": lambda t: F.drop_block2d(t, 0.3, block_size=3, seed=3),
}


# ---------------------------------------------------------------------------
# Negative and conjugate bits
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_negative_bit_is_resolved_before_the_kernel(name):
    x = _neg_view(2, 3, 8, 8)
    got, want = VARIANTS[name](x), VARIANTS[name](x.resolve_neg())
    assert torch.equal(got, want)
    assert (got != 0).any()  # the values, not just zeros on both sides


def test_negative_bit_the_issues_example_keeps_its_sign():
    x = torch.complex(torch.randn(1), torch.randn(1)).conj().imag
    for seed in range(8):  # some seed keeps the element
        y = F.dropout(x, 0.5, seed=seed)
        if y.item() != 0:
            assert torch.sign(y) == torch.sign(x.resolve_neg())
            return
    pytest.fail("no seed of 8 kept the element (probability 2**-8)")


@pytest.mark.parametrize("noise_shape", [None, (2, 3, 1, 1)])
def test_negative_bit_in_place_writes_the_values_of_the_resolved_tensor(noise_shape):
    c = torch.complex(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    x = c.conj().imag
    want = F.dropout(x.resolve_neg(), 0.5, seed=7, noise_shape=noise_shape)
    assert F.dropout(x, 0.5, seed=7, inplace=True, noise_shape=noise_shape) is x
    assert torch.equal(x, want) and x.is_neg()
    assert torch.equal(c.imag, -want)  # written through the view into the complex tensor


def test_negative_bit_backward():
    a = torch.randn(5, 7, requires_grad=True)
    y = F.dropout(-a, 0.5, seed=2)  # neg() is a real op; its gradient flows through the registered op
    (g,) = torch.autograd.grad(y.sum(), a)
    assert torch.equal(g, -F.dropout(torch.ones(5, 7), 0.5, seed=2))


def test_conjugate_bit_complex_input_is_refused_clearly():
    x = torch.randn(4, dtype=torch.complex64).conj()
    assert x.is_conj()
    for fn in (F.dropout, F.alpha_dropout, F.gaussian_dropout):
        with pytest.raises(TypeError, match=r"`input` must have a floating dtype .*received dtype=torch.complex64"):
            fn(x, 0.5, seed=1)


# ---------------------------------------------------------------------------
# Copy-on-write
# ---------------------------------------------------------------------------
#: The C kernel reads inputs through Tensor.const_data_ptr, which older torch (2.6) does not have: there the
#: kernel takes data_ptr(), which materialises a copy-on-write input (the values are right either way).
needs_const_ptr = pytest.mark.skipif(
    not hasattr(torch.Tensor, "const_data_ptr"), reason="this torch has no Tensor.const_data_ptr"
)


@needs_const_ptr
@pytest.mark.parametrize("name", ["dropout", "alpha_dropout", "gaussian_dropout"])
def test_copy_on_write_input_stays_lazy(name):
    base = torch.randn(2, 3, 8, 8)
    x = torch._lazy_clone(base)
    assert torch._C._is_cow_tensor(x)
    y = VARIANTS[name](x)
    assert torch._C._is_cow_tensor(x), "the call materialised its copy-on-write input"
    assert torch.equal(y, VARIANTS[name](base))


@needs_const_ptr
def test_copy_on_write_input_stays_lazy_through_backward():
    x = torch._lazy_clone(torch.randn(64, 32)).requires_grad_()
    F.dropout(x, 0.5, seed=1).sum().backward()
    assert torch._C._is_cow_tensor(x)


# ---------------------------------------------------------------------------
# Meta and FakeTensor: the fake kernels, no compute
# ---------------------------------------------------------------------------
@pytest.fixture
def no_real_compute(monkeypatch):
    """Every way dropkit computes noise raises: a call that reaches one did real work."""

    def refuse(*args, **kwargs):
        raise AssertionError("real compute ran for a meta / fake tensor")

    for module in (reference, cpu):
        for name in ("keep_mask", "dropout_mul", "uniform", "normal", "gaussian_mul"):
            monkeypatch.setattr(module, name, refuse)
    for name in ("keep_mask_torch", "keep_mask_numpy", "uniform_words_torch", "uniform_words_numpy"):
        monkeypatch.setattr(reference, name, refuse)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_meta_tensor_of_2_pow_22_goes_to_the_fake_kernel(name, no_real_compute):
    x = torch.empty(2, 3, 1 << 10, 1 << 9, device="meta")  # 3 * 2**20 elements per sample: 2**22 and more
    y = VARIANTS[name](x)
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype


def test_meta_tensor_backward_and_in_place(no_real_compute):
    x = torch.empty(1 << 22, device="meta", requires_grad=True)
    y = F.dropout(x, 0.5, seed=1)
    (g,) = torch.autograd.grad(y, x, torch.empty_like(y))
    assert g.device.type == "meta" and g.shape == x.shape
    z = torch.empty(1 << 22, device="meta")
    assert F.dropout(z, 0.5, seed=1, inplace=True) is z


def test_fake_tensor_mode_uses_the_fake_kernels(no_real_compute):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):  # a seeded key is a cached real tensor
        x = torch.empty(2, 3, 1 << 10, 1 << 9)
        for fn in VARIANTS.values():
            y = fn(x)
            assert y.shape == x.shape


# ---------------------------------------------------------------------------
# Dispatch modes see every call
# ---------------------------------------------------------------------------
class _Record(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_dropkit_dropout_on_every_eager_call():
    x = torch.randn(8, 16)
    xg = torch.randn(8, 16, requires_grad=True)
    with _Record() as rec:
        for _ in range(3):
            F.dropout(x, 0.5)
        F.dropout(x, 0.5, seed=4)
        F.dropout(x.clone(), 0.5, seed=4, inplace=True)
        y = F.dropout(xg, 0.5, seed=5)
        y.backward(torch.ones_like(y))
    assert rec.ops.count("dropkit.dropout.default") == 3 + 1 + 1 + 1  # forward calls and the backward one
    assert rec.ops.count("dropkit.dropout_.default") == 1


def test_a_dispatch_mode_sees_every_variants_op():
    x = torch.randn(2, 3, 8, 8)
    emb = torch.nn.Embedding(10, 4)
    with _Record() as rec:
        F.gaussian_dropout(x, 0.3, seed=1)
        F.drop_block2d(x, 0.3, block_size=3, seed=1)
        F.embedding_dropout(torch.tensor([1, 2, 3]), emb.weight, 0.5, seed=1)
        F.fused_bias_act_dropout_add(x, None, x, 0.5, "relu", seed=1)
    for name in ("gaussian_dropout", "drop_block", "embedding_dropout", "fused_bias_act_dropout_add"):
        assert f"dropkit.{name}.default" in rec.ops, (name, rec.ops)


# ---------------------------------------------------------------------------
# backend_info reads the registration
# ---------------------------------------------------------------------------
def test_backend_info_agrees_with_the_registration(monkeypatch):
    registered = ops.kernels.REGISTERED
    info = dropkit.backend_info("cpu")
    assert info["backend"] == registered["CPU"].name
    assert (registered["CPU"].module is cpu) == cpu.available()
    assert registered["CompositeExplicitAutograd"].module is reference
    assert dropkit.backend_info("meta") == {
        "backend": "reference", "reason": "no fast backend for device type 'meta'; torch integer ops",
        "registration": "Python: torch.library kernels",
    }
    cuda = dropkit.backend_info("cuda")["backend"]
    assert cuda == ("triton" if registered["CUDA"].module is not reference else "reference")
    # the registered CPU kernel is the one that runs: the Python kernel's primitive, unless C++ registered dropout
    calls = []
    module = registered["CPU"].module
    real = module.dropout_mul
    monkeypatch.setattr(module, "dropout_mul", lambda *a: calls.append(a) or real(*a))
    F.dropout(torch.randn(100), 0.5, seed=1)
    assert len(calls) == (0 if "dropout" in ops.kernels.CPP_REGISTERED else 1)
    assert ("C++ for dropout" in info["registration"]) == ("dropout" in ops.kernels.CPP_REGISTERED)


def test_without_the_library_the_reference_is_registered_and_gives_the_same_bits():
    script = (
        "import json, torch, dropkit, dropkit.functional as F\n"
        "x = torch.linspace(-3, 3, 5003)\n"
        "y = F.dropout(x, 0.3, seed=9) + F.gaussian_dropout(x, 0.3, seed=9)\n"
        "print(json.dumps({'info': dropkit.backend_info('cpu'), 'y': y.tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    env.update(DROPKIT_NO_KERNEL="1", PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info"]["backend"] == "reference" and "DROPKIT_NO_KERNEL" in out["info"]["reason"]
    x = torch.linspace(-3, 3, 5003)
    assert torch.equal(torch.tensor(out["y"]), F.dropout(x, 0.3, seed=9) + F.gaussian_dropout(x, 0.3, seed=9))


def test_factory_ops_take_the_backend_of_their_device_argument():
    key = dropkit.rng.key_tensor(3, 1)
    assert torch.equal(ops.keep_mask_op(key, [4, 5], 0.5, 7, "cpu").flatten(), reference.keep_mask(20, 0.5, 3, 1, 7,
                                                                                                     torch.device("cpu")))
    m = ops.uniform_op(key, [6], 0, torch.float64, "meta")
    assert m.device.type == "meta" and m.shape == (6,)
    assert kernels.for_device("cpu") is ops.kernels.REGISTERED["CPU"]


@pytest.mark.parametrize("name", ["dropout", "dropout_", "gaussian_dropout"])
def test_opcheck_with_negative_bit_inputs(name):
    """torch.library.opcheck (schema, autograd registration, FakeTensor, AOT dispatch) on negative-bit inputs;
    tests/test_pt2.py::test_opcheck runs it on every op with ordinary ones."""
    key = dropkit.rng.key_tensor(3, 1)
    x = _neg_view(4, 6)
    args = (x, key, 0.3, 0) if name == "gaussian_dropout" else (x, key, 0.5, 2.0, None, 0)
    torch.library.opcheck(ops.OPS[name], args)
