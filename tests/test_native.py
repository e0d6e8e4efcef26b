"""The C++ registration of the CPU kernels (kernels/cpu/dk_torch.cpp, built by kernels/cpu/_torch.py) against the
Python registration it replaces: the same bits for every input the ops take, the same errors, the same ISA; and
its Autograd kernels (every device): gradients, double backward, forward-mode AD and torch.func of direct op calls.

The Python registration runs in a subprocess with ``DROPKIT_CPP_KERNELS=0`` (the registration is chosen once, at
import); both sides compute the same cases and the outputs are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dropkit
import dropkit.functional as F
from dropkit import ops
from dropkit.kernels import cpu
from dropkit.kernels.cpu import _torch
from dropkit.rng import key_tensor

SRC = str(Path(dropkit.__file__).resolve().parent.parent)
NATIVE = "dropout" in ops.kernels.CPP_REGISTERED
needs_native = pytest.mark.skipif(not NATIVE, reason=f"C++ registration not in use: {_torch.status()[1]}")

_CASES = textwrap.dedent(
    """
    import torch, dropkit.functional as F
    from dropkit.rng import key_tensor

    def cases():
        out = {}
        dropout, dropout_, gaussian = (torch.ops.dropkit.dropout, torch.ops.dropkit.dropout_,
                                       torch.ops.dropkit.gaussian_dropout)
        key = key_tensor(12345, 678)
        g = torch.Generator().manual_seed(0)
        for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for shape in ((0,), (7,), (3, 5, 4), (1 << 15) + 3):
                x = torch.randn(shape, generator=g).to(dt)
                if x.numel() > 2:
                    x.view(-1)[1] = float("nan")
                    x.view(-1)[2] = float("inf")
                for p in (0.0, 0.3, 0.5, 1.0):
                    out[f"dropout {dt} {shape} {p}"] = dropout(x, key, p, 1.0 / (1.0 - p) if p < 1 else 0.0, None, 5)
                out[f"gaussian {dt} {shape}"] = gaussian(x, key, 0.4, 3)
                y = x.clone()
                dropout_(y, key, 0.25, 4.0 / 3.0, None, 0)
                out[f"inplace {dt} {shape}"] = y
            x = torch.randn(4, 6, 5, 3, generator=g).to(dt)
            out[f"transposed {dt}"] = dropout(x.transpose(1, 3), key, 0.5, 2.0, None, 0)
            out[f"channels_last {dt}"] = dropout(x.to(memory_format=torch.channels_last), key, 0.5, 2.0, None, 0)
            out[f"noise_shape {dt}"] = dropout(x, key, 0.5, 2.0, [4, 6, 1, 1], 11)
            out[f"gaussian transposed {dt}"] = gaussian(x.transpose(0, 2), key, 0.4, 0)
            out[f"gaussian broadcast {dt}"] = gaussian(torch.ones((), dtype=dt).expand(3, 4), key, 0.4, 0)
            y2 = x.transpose(0, 1)
            dropout_(y2, key, 0.5, 2.0, None, 7)
            out[f"inplace transposed {dt}"] = y2
            z = x.clone()
            dropout_(z, key, 0.5, 2.0, [1, 6, 5, 1], 0)
            out[f"inplace noise_shape {dt}"] = z
        xg = torch.randn(50, 40, generator=g, requires_grad=True)
        y = F.dropout(xg, 0.4, seed=3) + F.gaussian_dropout(xg, 0.3, seed=4) + F.dropout2d(xg[None], 0.5, seed=5)[0]
        out["grad"] = torch.autograd.grad((y * torch.arange(2000.0).view(50, 40)).sum(), xg)[0]
        out["functional inplace"] = F.dropout(torch.randn(9, generator=g), 0.5, inplace=True, seed=8)
        # the Autograd kernels, through direct op calls: gradient, double backward, tangent, in place
        import torch.autograd.forward_ad as fwAD
        xw = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
        w = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
        ids = torch.tensor([[0, 3, 1], [2, 3, 4]])
        for name, op in LINEAR_CALLS.items():
            x, wg = xw.clone().requires_grad_(), w.clone().requires_grad_()
            (gx,) = torch.autograd.grad((op(x * 1.5, key, ids) * wg).sum(), x, create_graph=True)
            out[f"op grad {name}"] = gx
            out[f"op double backward {name}"] = torch.autograd.grad((gx * gx).sum(), wg)[0]
            with fwAD.dual_level():
                out[f"op tangent {name}"] = fwAD.unpack_dual(op(fwAD.make_dual(xw, w), key, ids)).tangent
        x = xw.clone().requires_grad_()
        h = x * 2.0
        dropout_(h, key, 0.5, 2.0, None, 0)
        out["op inplace grad"] = torch.autograd.grad((h * w).sum(), x)[0]
        with fwAD.dual_level():
            d = fwAD.make_dual(xw.clone(), w.clone())
            dropout_(d, key, 0.5, 2.0, None, 0)
            out["op inplace tangent"] = fwAD.unpack_dual(d).tangent
        # the fused op, called directly: gradients of x, bias and residual, and the tangent
        xf, bf, rf = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((6, 8), (8,), (6, 8)))
        wf = torch.randn(6, 8, generator=g, dtype=torch.float64)
        for act in ("relu", "gelu"):
            ins = [t.clone().requires_grad_() for t in (xf, bf, rf)]
            y = D.fused_bias_act_dropout_add(ins[0], ins[1], ins[2], key, 0.5, 2.0, act, 0)
            for name, grad in zip(("x", "bias", "residual"), torch.autograd.grad((y * wf).sum(), ins)):
                out[f"fused {act} grad {name}"] = grad
            with fwAD.dual_level():
                y = D.fused_bias_act_dropout_add(fwAD.make_dual(xf, wf), fwAD.make_dual(bf, wf[0]),
                                                 fwAD.make_dual(rf, wf * 2), key, 0.5, 2.0, act, 0)
                out[f"fused {act} tangent"] = fwAD.unpack_dual(y).tangent
        return {k: v.detach() for k, v in out.items()}

    D = torch.ops.dropkit
    # The ops linear in x, called directly (their Autograd kernels), on x of shape (2, 3, 6, 6).
    LINEAR_CALLS = {
        "dropout": lambda x, key, ids: D.dropout(x, key, 0.5, 2.0, None, 3),
        "gaussian_dropout": lambda x, key, ids: D.gaussian_dropout(x, key, 0.4, 0),
        "drop_block": lambda x, key, ids: D.drop_block(x, key, 0.3, 3, [2, 3, 4, 4], 2, 0),
        "embedding_dropout": lambda x, key, ids: D.embedding_dropout(x.flatten(2), key, ids, 5, 0.5, 2.0).view_as(x),
    }
    """
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of ``t`` (NaN payloads included), in row-major order."""
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view)


@needs_native
def test_cpp_registration_gives_the_bits_of_the_python_registration(tmp_path):
    out_file = tmp_path / "python_registration.pt"
    script = _CASES + f"\nimport dropkit, json\ntorch.save(cases(), {str(out_file)!r})\n" \
        "print(json.dumps(dropkit.backend_info('cpu')))\n"  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DROPKIT_CPP_KERNELS"}
    env.update(DROPKIT_CPP_KERNELS="0", PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "C++ registration not in use: disabled by DROPKIT_CPP_KERNELS=0" in info["registration"]
    python_side = torch.load(out_file)
    namespace: dict = {}
    exec(_CASES, namespace)
    here = namespace["cases"]()
    assert set(here) == set(python_side)
    for name, want in python_side.items():
        got = here[name]
        assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride(), name
        assert torch.equal(_bits(got), _bits(want)), name


@needs_native
def test_backend_info_names_the_cpp_registration():
    info = dropkit.backend_info("cpu")
    assert info["registration"].startswith(
        "C++ for dropout, dropout_, gaussian_dropout on CPU and the Autograd kernels of dropout, dropout_, "
        "gaussian_dropout, drop_block, embedding_dropout, fused_bias_act_dropout_add (C++ registration from "
    )
    assert ops.kernels.CPP_REGISTERED == _torch.OPS and ops.kernels.CPP_AUTOGRAD == _torch.AUTOGRAD_OPS


@needs_native
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3), k[:3], 0.5, 2.0, None, 0), ValueError,
         r"a dropkit key is an int64 tensor of shape \(4,\)"),
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3), k.float(), 0.5, 2.0, None, 0), ValueError,
         r"a dropkit key is an int64 tensor of shape \(4,\)"),
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3), k * 0 - 1, 0.5, 2.0, None, 0), ValueError,
         r"a dropkit key is 4 int64 words in \[0, 2\*\*32\)"),
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3), k, 1.5, 2.0, None, 0), ValueError,
         r"`p` must be a real number in \[0, 1\] \(the probability of dropping\); received p=1.5"),
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3), k, float("nan"), 2.0, None, 0), ValueError,
         r"`p` must be a real number in \[0, 1\]"),
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3), k, 0.5, 2.0, None, -1), ValueError,
         r"need `offset` >= 0"),
        (lambda k: torch.ops.dropkit.gaussian_dropout(torch.ones(3), k, 0.5, -2), ValueError, r"need `offset` >= 0"),
        (lambda k: torch.ops.dropkit.dropout(torch.ones(3, dtype=torch.int32), k, 0.5, 2.0, None, 0), TypeError,
         r"dropkit::dropout takes a floating tensor"),
        (lambda k: torch.ops.dropkit.dropout_(torch.ones(3, dtype=torch.int64), k, 0.5, 2.0, [1], 0), TypeError,
         r"dropkit::dropout takes a floating tensor"),
        (lambda k: torch.ops.dropkit.gaussian_dropout(torch.ones(3, dtype=torch.uint8), k, 0.5, 0), TypeError,
         r"dropkit::gaussian_dropout takes a floating tensor"),
    ],
)  # fmt: skip
def test_cpp_kernels_refuse_bad_arguments_with_the_python_words(call, error, match):
    with pytest.raises(error, match=match):
        call(key_tensor(1, 2))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_the_python_registration_refuses_integer_tensors_too(dtype):
    with pytest.raises(TypeError, match="dropkit::dropout takes a floating tensor"):
        ops.kernels._dropout(ops.kernels.REGISTERED["CompositeExplicitAutograd"], torch.ones(3, dtype=dtype),
                             key_tensor(1, 2), 0.5, 2.0, None, 0)  # fmt: skip


@needs_native
def test_every_isa_gives_the_same_bits_through_the_cpp_kernels():
    x = torch.randn((1 << 16) + 5)
    key = key_tensor(7, 9)
    best = cpu.isa()
    try:
        results = {}
        for isa in cpu.supported_isas():
            cpu.set_isa(isa)
            results[isa] = (torch.ops.dropkit.dropout(x, key, 0.5, 2.0, None, 3),
                            torch.ops.dropkit.gaussian_dropout(x, key, 0.2, 3))  # fmt: skip
    finally:
        cpu.set_isa(best)
    first = results[cpu.supported_isas()[0]]
    for isa, (d, gd) in results.items():
        assert torch.equal(d, first[0]) and torch.equal(gd, first[1]), isa


@needs_native
def test_a_damaged_cached_cpp_library_is_rebuilt_not_opened(tmp_path):
    """A fresh cache builds and registers; the next process loads the cached build; a truncated one is rebuilt."""
    script = "import json, dropkit; print(json.dumps(dropkit.backend_info('cpu')['registration']))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    env.update(DROPKIT_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))

    def run() -> str:
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert "(compiled at first use)" in run()
    assert "(cached first-use build)" in run()
    (lib,) = (tmp_path / "cache" / "cpu-torch").glob("dk_torch-*.so")
    lib.write_bytes(lib.read_bytes()[: 4096])
    again = run()
    assert "rebuilt the cached library (_Unusable:" in again and "does not match its SHA-256" in again
    assert again.startswith("C++ for dropout")


def test_a_bad_cpp_kernels_setting_is_reported_and_ignored():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    env.update(DROPKIT_CPP_KERNELS="maybe", PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    script = "import warnings; warnings.simplefilter('always'); import dropkit; print('ok')"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "DROPKIT_CPP_KERNELS='maybe' is not valid" in proc.stderr


@pytest.mark.parametrize("registration", ["C++", "Python"])
def test_in_place_on_an_inference_tensor_outside_inference_mode_is_refused_as_torch_refuses(registration):
    """torch's F.dropout(inplace=True) refuses an inference tensor outside inference mode (after writing it); both
    registrations refuse it before writing."""
    if registration == "C++" and not NATIVE:
        pytest.skip("C++ registration not in use")
    with torch.inference_mode():
        x, t = torch.ones(8), torch.ones(8)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        torch.nn.functional.dropout(t, 0.5, inplace=True)
    kernel = ops.OPS["dropout_"] if registration == "C++" else (
        lambda *a: ops.kernels._dropout_inplace(ops.kernels.REGISTERED["CPU"], *a))  # fmt: skip
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        kernel(x, key_tensor(1, 2), 0.5, 2.0, None, 0)
    assert torch.equal(x, torch.ones(8))
    gen = dropkit.SeedGenerator(5)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        F.dropout(x, 0.5, inplace=True, seed=gen)  # refused before the key is drawn
    assert gen.calls == 0 and torch.equal(x, torch.ones(8))
    with torch.inference_mode():
        kernel(x, key_tensor(1, 2), 0.5, 2.0, None, 0)  # inside inference mode: allowed, as torch allows it
    assert set(x.unique().tolist()) <= {0.0, 2.0}


def _linear_calls() -> dict:
    namespace: dict = {}
    exec(_CASES, namespace)
    return namespace["LINEAR_CALLS"]


@pytest.mark.parametrize("name", ["dropout", "gaussian_dropout", "drop_block", "embedding_dropout"])
def test_direct_op_calls_are_differentiable_in_every_mode(name):
    """y = x * f(key): the gradient of sum(y * w) and the tangent along w are op(w), bit for bit, under autograd,
    forward-mode AD and torch.func; gradcheck and gradgradcheck (forward AD included) pass."""
    op, key, ids = _linear_calls()[name], key_tensor(7, 1), torch.tensor([[0, 3, 1], [2, 3, 4]])
    g = torch.Generator().manual_seed(3)
    xw, w = (torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    want = op(w, key, ids)
    assert (want == 0).any() or name == "gaussian_dropout"  # a real mask, not the identity
    x = xw.clone().requires_grad_()
    y = op(x, key, ids)
    node = y.grad_fn if name != "embedding_dropout" else y.grad_fn.next_functions[0][0]  # below the view_as
    assert node is not None and (not NATIVE or node.name() == f"dropkit::{name}Backward")
    assert torch.equal(torch.autograd.grad((y * w).sum(), x)[0], want)
    with torch.autograd.forward_ad.dual_level():
        tangent = torch.autograd.forward_ad.unpack_dual(op(torch.autograd.forward_ad.make_dual(xw, w), key, ids)).tangent
    assert torch.equal(tangent, want)
    with torch.no_grad():
        assert op(x, key, ids).grad_fn is None
    if NATIVE:  # torch.func over an op's Python Autograd kernel is what the functional API avoids (ops/autograd.py)
        assert torch.equal(torch.func.grad(lambda t: (op(t, key, ids) * w).sum())(xw), want)
        assert torch.equal(torch.func.jvp(lambda t: op(t, key, ids), (xw,), (w,))[1], want)
        assert torch.equal(torch.func.vjp(lambda t: op(t, key, ids), xw)[1](w)[0], want)
    small = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: op(t, key, ids), (small,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda t: op(t, key, ids), (small,))


def test_the_functional_api_keeps_a_python_graph_node_that_compiled_autograd_traces():
    """Eager F.dropout with a gradient wanted applies the Python Function (not the op's C++ graph node, which
    compiled autograd cannot trace): compiled autograd gives eager's gradients."""
    import torch._dynamo.compiled_autograd as ca

    def step():
        torch.manual_seed(0)
        lin = torch.nn.Linear(16, 16)
        x = torch.randn(4, 16, requires_grad=True)
        (F.dropout(lin(x), 0.5, seed=1) * torch.arange(16.0)).sum().backward()
        return x.grad, lin.weight.grad

    eager = step()
    with ca._enable(torch.compile(backend="eager")):
        compiled = step()
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    assert type(F.dropout(torch.ones(3, requires_grad=True), 0.5, seed=1).grad_fn).__name__ == "LinearBackward"


@needs_native
def test_the_eager_path_never_enters_the_private_below_autograd_guard(monkeypatch):
    """With the C++ Autograd kernels, no eager call (forward, backward, no_grad, in place, forward AD) runs
    ``torch._C._AutoDispatchBelowAutograd``: only the Python registration needs it (issue 20, item 3)."""
    from dropkit.ops import autograd

    def refuse():
        raise AssertionError("the eager path entered the private below-autograd guard")

    monkeypatch.setattr(autograd, "_below_autograd", refuse)
    x = torch.randn(4, 6, requires_grad=True)
    y = F.dropout(x, 0.5, seed=1) + F.gaussian_dropout(x, 0.3, seed=2) + F.dropout2d(x[None], 0.5)[0]
    y.sum().backward()
    with torch.no_grad():
        F.dropout(x, 0.5)
        F.dropout(x.clone(), 0.5, inplace=True)
    h = x * 2
    F.dropout(h, 0.5, inplace=True, seed=3).sum().backward()
    with torch.autograd.forward_ad.dual_level():
        F.dropout(torch.autograd.forward_ad.make_dual(x.detach(), torch.ones(4, 6)), 0.5, seed=4)
    bias, residual = torch.zeros(6, requires_grad=True), torch.ones(4, 6)
    F.fused_bias_act_dropout_add(x, bias, residual, 0.5, "gelu", seed=5).sum().backward()
    with torch.no_grad():
        F.fused_bias_act_dropout_add(x, bias, residual, 0.5, "relu")


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "identity"])
def test_direct_fused_op_calls_are_differentiable_in_every_mode(activation):
    """The fused op's Autograd kernel: gradcheck and gradgradcheck with forward AD, for x, bias and residual, and
    torch.func over a direct call (C++ registration); bias None too."""
    key = key_tensor(9, 3)
    g = torch.Generator().manual_seed(4)
    x, b, r = (torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((5, 4), (4,), (5, 4)))
    x = (x + torch.where(x.abs() < 0.05, 0.2, 0.0)).detach().requires_grad_()  # away from relu's kink

    def fused(x, b, r):
        return torch.ops.dropkit.fused_bias_act_dropout_add(x, b, r, key, 0.5, 2.0, activation, 0)

    assert torch.autograd.gradcheck(fused, (x, b, r), check_forward_ad=True)
    assert torch.autograd.gradcheck(lambda x, r: fused(x, None, r), (x, r), check_forward_ad=True)
    if activation != "relu":
        assert torch.autograd.gradgradcheck(fused, (x, b, r), check_fwd_over_rev=False)
    y = fused(x, b, r)
    assert y.grad_fn is not None
    if NATIVE:
        assert y.grad_fn.name() == "dropkit::fused_bias_act_dropout_addBackward"
        w = torch.randn(5, 4, generator=g, dtype=torch.float64)
        want = torch.autograd.grad((fused(x, b, r) * w).sum(), (x, b, r))
        got = torch.func.grad(lambda *t: (fused(*t) * w).sum(), argnums=(0, 1, 2))(x.detach(), b.detach(), r.detach())
        assert all(torch.equal(a, c) for a, c in zip(want, got))
