"""dropkit's CUDA ops inside compiled graphs: decomposed into their Triton kernels (issue #12).

On CUDA, when AOTAutograd traces a graph, every op with a Triton kernel becomes its launches through
``torch.library.wrap_triton`` (``triton_kernel_wrapper_functional`` nodes), so Inductor compiles the kernels
into the graph's code. Without a GPU these tests run the whole path on CPU tensors: the graph launches are
switched on for the CPU (``graph.serves``), traced with the compiled-mode kernels (what ``wrap_triton``
records), and a backend hands each recorded launch to the same kernel under Triton's interpreter before
the graph runs. So dynamo, AOTAutograd, the decomposition rules, the key read from memory and the launch
arguments are all exercised and compared bit for bit with eager calls; what only a GPU can check
(Inductor's code generation for the kernels) is in the ``cuda`` tests at the end.
"""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

import dropkit.functional as DF  # noqa: E402
import dropkit.nn as dnn  # noqa: E402
from dropkit import kernels  # noqa: E402
from dropkit.kernels import triton as tk  # noqa: E402
from dropkit.kernels.triton import graph  # noqa: E402
from backend_helpers import requires_cuda  # noqa: E402

HOP = "triton_kernel_wrapper"


@pytest.fixture
def graph_on_cpu(monkeypatch):
    """Graph launches for CPU tensors: traced with the compiled-mode kernels, as on CUDA."""
    monkeypatch.setattr(kernels, "graph_kernels", lambda device: graph)
    monkeypatch.setattr(tk, "_kernels", lambda device: tk._module(False))
    monkeypatch.delenv("DROPKIT_TRITON_GRAPH", raising=False)
    # without a driver torch cannot analyse a kernel's writes and says so (then assumes every input is written)
    log = logging.getLogger("torch._higher_order_ops.triton_kernel_wrap")
    level = log.level
    log.setLevel(logging.ERROR)
    torch._dynamo.reset()
    yield
    log.setLevel(level)
    torch._dynamo.reset()


class Interpreting:
    """An AOTAutograd backend that runs each recorded kernel launch under Triton's interpreter and records
    the graphs' kernels and ops."""

    def __init__(self):
        self.kernels: list[str] = []
        self.per_graph: list[list[str]] = []  # forward graph, then backward graph
        self.ops: set[str] = set()

    def compile(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

        interpreted = tk._module(True)
        self.per_graph.append([])
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            self.ops.add(str(node.target))
            if HOP in str(node.target):
                kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
                name = kernel.fn.__name__
                self.kernels.append(name)
                self.per_graph[-1].append(name)
                idx = kernel_side_table.add_kernel(getattr(interpreted, name))
                node.kwargs = {**node.kwargs, "kernel_idx": idx}
        gm.recompile()
        return make_boxed_func(gm.forward)

    def backend(self):
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=self.compile, bw_compiler=self.compile)


def _cases():
    ones = torch.ones
    return {
        # name: (function of x (and the parameters), input shape, kernels the graphs launch)
        "dropout": (lambda x: DF.dropout(x, 0.3, seed=5), (4, 8, 6, 6), {"dropout_mul_kernel"}),
        "dropout-strided-64-bit-seed": (
            lambda x: DF.dropout(x[:, 1:], 0.3, seed=2**40 + 3),
            (7, 301),
            {"dropout_mul_kernel"},
        ),
        "dropout-channels_last": (
            lambda x: DF.dropout(x.to(memory_format=torch.channels_last), 0.5, seed=1),
            (2, 3, 4, 5),
            {"dropout_mul_kernel"},
        ),
        "dropout-inplace": (lambda x: DF.dropout(x * 1.0, 0.4, seed=9, inplace=True), (5, 33), {"dropout_mul_kernel"}),
        "dropout-bfloat16": (lambda x: DF.dropout(x.to(torch.bfloat16), 0.3, seed=5), (9, 130), {"dropout_mul_kernel"}),
        "dropout-float64": (lambda x: DF.dropout(x.double(), 0.3, seed=5), (9, 130), {"dropout_mul_kernel"}),
        "gaussian_dropout-float16": (
            lambda x: DF.gaussian_dropout(x.half(), 0.3, seed=6),
            (4, 257),
            {"gaussian_mul_kernel"},
        ),
        "dropout2d": (lambda x: DF.dropout2d(x, 0.5, seed=4), (4, 8, 6, 6), {"keep_mask_kernel"}),
        "alpha_dropout": (  # backward: the gradient through dropout_mul with the forward's mask
            lambda x: DF.alpha_dropout(x, 0.2, seed=3),
            (4, 40),
            {"keep_mask_kernel", "dropout_mul_kernel"},
        ),
        "gaussian_dropout": (lambda x: DF.gaussian_dropout(x, 0.3, seed=6), (4, 257), {"gaussian_mul_kernel"}),
        "gaussian_noise": (lambda x: DF.gaussian_noise(x, 0.5, seed=6), (4, 257), {"normal_kernel"}),
        "fused-relu": (
            lambda x: DF.fused_bias_act_dropout_add(x, ones(x.shape[-1]) * 0.1, x * 0.5, 0.2, "relu", seed=8),
            (6, 129),
            {"fused_kernel"},
        ),
        "fused-identity-no-bias": (
            lambda x: DF.fused_bias_act_dropout_add(x, None, x.cos(), 0.5, "identity", seed=8),
            (3, 65),
            {"fused_kernel"},
        ),
        "embedding_dropout": (
            lambda w: DF.embedding_dropout(torch.tensor([[1, 4, 2], [4, 0, 1]], device=w.device), w, 0.5, seed=2),
            (6, 5),
            {"keep_mask_kernel"},
        ),
        "drop_block2d": (lambda x: DF.drop_block2d(x, 0.2, 3, seed=7), (2, 3, 8, 8), {"uniform_kernel"}),
        "concrete_dropout": (
            lambda x: DF.concrete_dropout(x, torch.tensor(-1.0), seed=12),
            (5, 70),
            {"uniform_kernel"},
        ),
    }


def _run(fn, x):
    x = x.clone().requires_grad_()
    y = fn(x)
    (g,) = torch.autograd.grad(y, x, torch.linspace(-1, 1, y.numel()).view_as(y))
    return y.detach(), g


@pytest.mark.parametrize("name", sorted(_cases()))
def test_compiled_graph_launches_the_kernels_with_the_eager_bits(graph_on_cpu, name):
    fn, shape, launched = _cases()[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    be = Interpreting()
    y, g = _run(torch.compile(fn, backend=be.backend(), fullgraph=True), x)
    ye, ge = _run(fn, x)
    assert set(be.kernels) == launched, be.kernels
    if launched:  # forward and backward each launch: backward regenerates the noise
        # additive noise: the gradient is the identity; Concrete dropout is torch ops under compile, and
        # the partitioner keeps its (differentiable) keep tensor rather than recomputing it
        backward_free = name in ("gaussian_noise", "concrete_dropout")
        assert len(be.per_graph) == 2 and be.per_graph[0] and bool(be.per_graph[1]) != backward_free, be.per_graph
    # every dropkit op is gone from the graphs: kernel launches and torch ops only
    assert not {o for o in be.ops if o.startswith("dropkit.")}, be.ops
    assert torch.equal(y, ye) and torch.equal(g, ge)
    assert y.stride() == ye.stride()


def test_unseeded_compiled_graph_uses_the_forward_mask_in_backward(graph_on_cpu):
    be = Interpreting()
    m = torch.compile(dnn.Dropout(0.5), backend=be.backend(), fullgraph=True)
    x = (torch.rand(64, 64) + 0.5).requires_grad_()
    y1 = m(x)
    y1.sum().backward()
    assert torch.equal(x.grad, (y1 != 0).float() * 2.0)  # d/dx = the forward's mask
    assert not torch.equal(m(x), y1)  # a fresh key on each call, drawn in the graph
    assert be.kernels.count("dropout_mul_kernel") >= 2


def test_dynamic_shapes(graph_on_cpu):
    be = Interpreting()
    fn = torch.compile(
        lambda x: DF.gaussian_dropout(DF.dropout(x, 0.5, seed=3), 0.2, seed=4), backend=be.backend(), dynamic=True
    )
    for n in (37, 1031, 4099):
        x = torch.randn(n)
        assert torch.equal(fn(x), DF.gaussian_dropout(DF.dropout(x, 0.5, seed=3), 0.2, seed=4))


def test_export_keeps_the_ops_whole(graph_on_cpu):
    """An exported program names dropkit's ops, not a Triton kernel (as torch.export keeps triton_ops)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), dnn.Dropout(0.5, seed=1), dnn.GaussianDropout(0.2, seed=2))
    ep = torch.export.export(model.train(), (torch.randn(4, 8),))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "dropkit.dropout.default" in targets and "dropkit.gaussian_dropout.default" in targets
    assert not any(HOP in t for t in targets)


def test_switch_off_keeps_the_ops_whole(graph_on_cpu, monkeypatch):
    monkeypatch.setenv("DROPKIT_TRITON_GRAPH", "0")
    monkeypatch.setattr(kernels, "graph_kernels", lambda device: graph if graph.enabled() else None)
    be = Interpreting()
    x = torch.randn(4, 16)
    y = torch.compile(lambda t: DF.dropout(t, 0.5, seed=3), backend=be.backend(), fullgraph=True)(x)
    assert be.kernels == [] and "dropkit.dropout.default" in be.ops
    assert torch.equal(y, DF.dropout(x, 0.5, seed=3))


def test_graph_launches_serve_compiled_cuda_kernels_only(monkeypatch):
    """No graph launches for CPU tensors, the interpreter, or CUDA ops registered on the reference (no Triton)."""
    assert kernels.graph_kernels(torch.device("cpu")) is None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("DROPKIT_TRITON_GRAPH", raising=False)
    assert kernels.for_device("cuda").module is tk  # Triton is installed: registered for CUDA at import
    assert kernels.graph_kernels(torch.device("cuda")) is graph
    monkeypatch.setitem(kernels._CHOSEN, "cuda", kernels.backend("reference"))
    assert kernels.graph_kernels(torch.device("cuda")) is None
    monkeypatch.setitem(kernels._CHOSEN, "cuda", kernels.backend("triton"))
    monkeypatch.setenv("DROPKIT_TRITON_GRAPH", "0")
    assert kernels.graph_kernels(torch.device("cuda")) is None
    monkeypatch.delenv("DROPKIT_TRITON_GRAPH")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.graph_kernels(torch.device("cuda")) is None


@pytest.mark.parametrize("offset", [0, 5, 2**33 + 7])
def test_key_in_memory_gives_the_scalar_key_bits(offset, monkeypatch):
    """The graph launches' key tensor and the eager launches' scalar key select the same stream."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs the kernels on CPU tensors
    key = torch.tensor([0x89ABCDEF, 0x01234567, 5, 1], dtype=torch.int64)
    seed, stream = 0x0123456789ABCDEF, (1 << 32) | 5
    cpu = torch.device("cpu")
    x = torch.randn(1000, dtype=torch.float32)
    assert torch.equal(
        tk._keep_mask(1000, 0.3, key, offset, cpu), tk.keep_mask(1000, 0.3, seed, stream, offset, cpu)
    )
    assert torch.equal(
        tk._dropout_mul(x, 0.3, 1 / 0.7, key, offset), tk.dropout_mul(x, 0.3, 1 / 0.7, seed, stream, offset)
    )
    assert torch.equal(
        tk._normal(1000, key, offset, cpu, torch.float32), tk.normal(1000, seed, stream, offset, cpu)
    )
    assert torch.equal(tk._uniform(999, key, offset, cpu, torch.float64), tk.uniform(999, seed, stream, offset, cpu))
    assert torch.equal(tk._gaussian_mul(x, 0.5, key, offset), tk.gaussian_mul(x, 0.5, seed, stream, offset))
    assert torch.equal(
        tk._fused(x, x, None, "relu", False, 0.3, 2.0, key, offset),
        tk.fused_bias_act_dropout_add(x, x, None, "relu", False, 0.3, 2.0, seed, stream, offset),
    )
    # and the stream is the key's: another key, other bits
    other = key.clone()
    other[2] += 1
    assert not torch.equal(
        tk._keep_mask(1000, 0.3, other, offset, cpu), tk.keep_mask(1000, 0.3, seed, stream, offset, cpu)
    )


# --------------------------------------------------------------------------- CUDA: Inductor's code generation
@requires_cuda
@pytest.mark.parametrize("name", sorted(_cases()))
def test_cuda_inductor_compiles_the_kernels_into_the_graph(name):
    from torch._inductor.utils import run_and_get_code

    fn, shape, launched = _cases()[name]
    torch._dynamo.reset()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).cuda()
    (y, g), code = run_and_get_code(_run, torch.compile(fn, fullgraph=True), x)
    ye, ge = _run(fn, x)
    source = "\n".join(code)
    for kernel in launched:
        assert kernel in source  # Inductor emitted the user kernel, not a call into dropkit::
    if name in ("alpha_dropout", "gaussian_noise", "concrete_dropout", "drop_block2d"):
        # torch ops around the kernels: Inductor's own kernels contract a * b + c and may divide differently
        torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, ge, rtol=1e-5, atol=1e-6)
    else:  # the kernels alone (and exact multiplies): the eager launches' bits
        assert torch.equal(y, ye) and torch.equal(g, ge)
