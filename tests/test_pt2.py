"""dropkit inside the PyTorch 2 stack: registered ops (opcheck), torch.func, forward AD, torch.compile,
torch.export, TorchScript / ONNX refusals, activation checkpointing, layouts and autocast.

These use PyTorch's own test patterns: ``torch.library.opcheck`` on every op, gradcheck with forward AD,
batched grads and forward-over-reverse, fullgraph compiles with zero graph breaks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.utils.checkpoint as cp
from torch.autograd.gradcheck import gradcheck, gradgradcheck

import dropkit
import dropkit.functional as F
import dropkit.nn as dnn
from dropkit import ops
from dropkit.rng import key_tensor

KEY = key_tensor(1234, 5)


# ---------------------------------------------------------------------------
# opcheck: schema, fake, autograd registration, AOT dispatch
# ---------------------------------------------------------------------------
def _opcheck_cases():
    x = torch.randn(3, 4, 5)
    xr = x.clone().requires_grad_()
    idx = torch.tensor([[1, 2], [3, 1]])
    return [
        ("keep_mask", (KEY, [3, 7], 0.3, 2, torch.device("cpu"))),
        ("uniform", (KEY, [5, 3], 1, torch.float64, torch.device("cpu"))),
        ("normal", (KEY, [5, 3], 1, torch.float32, torch.device("cpu"))),
        ("dropout", (xr, KEY, 0.3, 1.5, None, 0)),
        ("dropout", (xr, KEY, 0.3, 1.5, [3, 1, 5], 7)),
        ("dropout", (x.clone(), KEY, 0.5, 2.0, None, 3)),
        ("dropout_", (x.clone(), KEY, 0.3, 1.5, None, 0)),
        ("gaussian_dropout", (xr, KEY, 0.7, 0)),
        ("drop_block", (torch.randn(2, 3, 6, 6, requires_grad=True), KEY, 0.1, 3, [2, 3, 4, 4], 2, 0)),
        ("embedding_dropout", (torch.randn(2, 2, 4, requires_grad=True), KEY, idx, 5, 0.5, 2.0)),
        ("fused_bias_act_dropout_add",
         (torch.randn(4, 6, requires_grad=True), torch.randn(6, requires_grad=True), torch.randn(4, 6, requires_grad=True),
          KEY, 0.2, 1.25, "gelu", 0)),
        ("fused_bias_act_dropout_add_backward",
         (torch.randn(4, 6), torch.randn(4, 6), None, KEY, 0.2, 1.25, "silu", 0)),
    ]


@pytest.mark.parametrize("name,args", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(ops.OPS[name], args)


def test_opcheck_next_key():
    torch.library.opcheck(ops.OPS["next_key"], (dropkit.seed.state_tensor(7, 3),),
                          test_utils=("test_schema", "test_faketensor"))


def test_every_op_is_covered_by_opcheck():
    covered = {name for name, _ in _opcheck_cases()} | {"next_key"}
    assert covered == set(ops.OPS)


# ---------------------------------------------------------------------------
# gradcheck: backward, forward AD, batched grads, forward-over-reverse
# ---------------------------------------------------------------------------
FUNCS = {
    "dropout": lambda t: F.dropout(t, 0.4, seed=3),
    "dropout2d": lambda t: F.dropout2d(t, 0.4, seed=3),
    "drop_path": lambda t: F.drop_path(t, 0.4, seed=3),
    "alpha_dropout": lambda t: F.alpha_dropout(t, 0.4, seed=3),
    "gaussian_dropout": lambda t: F.gaussian_dropout(t, 0.4, seed=3),
    "gaussian_noise": lambda t: F.gaussian_noise(t, 0.4, seed=3),
    "drop_block2d": lambda t: F.drop_block2d(t, 0.3, 2, seed=3),
    "locked_dropout": lambda t: F.locked_dropout(t, 0.4, seed=3),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_gradcheck_forward_ad_batched_and_fwd_over_rev(name):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    fn = FUNCS[name]
    assert gradcheck(fn, (x,), check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(fn, (x,), check_fwd_over_rev=True, check_batched_grad=True)


def test_forward_ad_tangent_is_the_masked_tangent():
    x, t = torch.randn(64, 32), torch.randn(64, 32)
    with fwAD.dual_level():
        out = F.dropout(fwAD.make_dual(x, t), 0.5, seed=9)
        primal, tangent = fwAD.unpack_dual(out)
    assert tangent is not None
    assert torch.equal(tangent, F.dropout(t, 0.5, seed=9))
    assert torch.equal(primal, F.dropout(x, 0.5, seed=9))


def test_forward_ad_inplace():
    x, t = torch.randn(16, 8), torch.randn(16, 8)
    with fwAD.dual_level():
        d = fwAD.make_dual(x.clone(), t.clone())
        out = F.dropout(d * 1.0, 0.5, inplace=True, seed=2)
        tangent = fwAD.unpack_dual(out).tangent
    assert torch.equal(tangent, F.dropout(t, 0.5, seed=2))


# ---------------------------------------------------------------------------
# torch.func
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_vmap_equals_a_loop_over_rows(name):
    fn = FUNCS[name]
    xs = torch.randn(5, 3, 4, 4)
    batched = torch.func.vmap(fn)(xs)
    looped = torch.stack([fn(r) for r in xs])
    torch.testing.assert_close(batched, looped, rtol=0, atol=0)


UNSEEDED = {
    "dropout": lambda t: F.dropout(t, 0.5),
    "dropout2d": lambda t: F.dropout2d(t, 0.5),
    "dropout_inplace": lambda t: F.dropout(t * 1.0, 0.5, inplace=True),
    "alpha_dropout": lambda t: F.alpha_dropout(t, 0.3),
    "gaussian_dropout": lambda t: F.gaussian_dropout(t, 0.3),
    "gaussian_noise": lambda t: F.gaussian_noise(t, 0.3),
    "drop_block2d": lambda t: F.drop_block2d(t, 0.3, 2),
    "fused": lambda t: F.fused_bias_act_dropout_add(t, None, t, 0.5, "relu"),
}


@pytest.mark.parametrize("name", sorted(UNSEEDED))
def test_vmap_randomness_different_gives_each_row_its_own_noise(name):
    """torch's vmap(randomness="different") semantics: an unseeded call draws one key per row; each row is
    what that row's own call returns, and backward (vjp) uses each row's forward noise."""
    fn = UNSEEDED[name]
    xs = torch.rand(6, 3, 4, 4) + 0.5
    torch.manual_seed(0)
    ys = torch.func.vmap(fn, randomness="different")(xs)
    assert all(not torch.equal(ys[0], ys[i]) for i in range(1, 6))
    torch.manual_seed(0)
    same = torch.func.vmap(fn, randomness="same")(xs[:1].expand(6, -1, -1, -1))
    assert all(torch.equal(same[0], same[i]) for i in range(1, 6))

    def value_and_grad(t):
        y, vjp = torch.func.vjp(fn, t)
        return y, vjp(torch.ones_like(y))[0]

    ys, gs = torch.func.vmap(value_and_grad, randomness="different")(xs)
    assert all(not torch.equal(ys[0], ys[i]) for i in range(1, 6))
    # d y / d x from each row's own forward noise (x > 0 here)
    if name == "gaussian_noise":  # y = x + s z
        assert torch.equal(gs, torch.ones_like(gs))
    elif name == "alpha_dropout":  # kept: y = a x + b (slope a); dropped: the constant a alpha' + b (slope 0)
        from dropkit.functional.alpha import SELU_ALPHA_PRIME, alpha_coefficients

        a, b = alpha_coefficients(0.3)
        kept = (ys - (a * SELU_ALPHA_PRIME + b)).abs() > 1e-5
        torch.testing.assert_close(gs, kept.float() * a)
    else:  # y = x * f (fused relu with residual x: y = x + x f, slope 1 + f): the slope is y / x
        torch.testing.assert_close(gs, ys / xs, rtol=1e-5, atol=1e-6)


def test_vmap_over_an_ensemble_of_seeded_modules_equals_a_loop():
    """torch.func model ensembling (stack_module_state + functional_call): each member draws from its own
    stream and advances it, exactly as calling the members one by one."""
    import copy

    models = [torch.nn.Sequential(torch.nn.Linear(4, 16), dnn.Dropout(0.5, seed=i), dnn.GaussianDropout(0.2, seed=9 + i))
              for i in range(3)]
    loop = [copy.deepcopy(m) for m in models]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(5, 4)
    for _ in range(2):
        out = torch.func.vmap(lambda p, b: torch.func.functional_call(base, (p, b), (x,)))(params, buffers)
        ref = torch.stack([m(x) for m in loop])
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(out != 0, ref != 0)
    for i, m in enumerate(loop):
        assert torch.equal(buffers["1.rng_state"][i], m[1].rng_state)


def test_func_grad_jvp_and_is_grads_batched():
    x = torch.randn(6, 5)
    g = torch.func.grad(lambda t: F.dropout(t, 0.5, seed=4).sum())(x)
    assert torch.equal(g, F.dropout(torch.ones_like(x), 0.5, seed=4))
    _, tangent = torch.func.jvp(lambda t: F.dropout(t, 0.5, seed=4), (x,), (torch.ones_like(x),))
    assert torch.equal(tangent, g)
    xr = x.clone().requires_grad_()
    y = F.dropout(xr, 0.5, seed=4)
    grads = torch.eye(30).view(30, 6, 5)
    (jac,) = torch.autograd.grad(y, xr, grads, is_grads_batched=True)
    assert torch.equal(jac.sum(0), g)
    per_sample = torch.func.vmap(torch.func.grad(lambda t: F.dropout(t, 0.5, seed=4).sum()))(x)
    assert torch.equal(per_sample, torch.stack([F.dropout(torch.ones(5), 0.5, seed=4)] * 6))


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------
def _modules(seed):
    return {
        "Dropout": (lambda: dnn.Dropout(0.5, seed=seed), (4, 8, 6, 6)),
        "Dropout1d": (lambda: dnn.Dropout1d(0.5, seed=seed), (4, 8, 6)),
        "Dropout2d": (lambda: dnn.Dropout2d(0.5, seed=seed), (4, 8, 6, 6)),
        "Dropout3d": (lambda: dnn.Dropout3d(0.5, seed=seed), (2, 4, 3, 3, 3)),
        "AlphaDropout": (lambda: dnn.AlphaDropout(0.2, seed=seed), (4, 8)),
        "FeatureAlphaDropout": (lambda: dnn.FeatureAlphaDropout(0.2, seed=seed), (4, 8, 3, 3)),
        "GaussianDropout": (lambda: dnn.GaussianDropout(0.3, seed=seed), (4, 8)),
        "GaussianNoise": (lambda: dnn.GaussianNoise(0.3, seed=seed), (4, 8)),
        "DropBlock2d": (lambda: dnn.DropBlock2d(0.2, 3, seed=seed), (2, 4, 8, 8)),
        "DropBlock3d": (lambda: dnn.DropBlock3d(0.2, 2, seed=seed), (2, 3, 4, 4, 4)),
        "DropPath": (lambda: dnn.DropPath(0.3, seed=seed), (4, 8, 6)),
        "LockedDropout": (lambda: dnn.LockedDropout(0.3, seed=seed), (5, 4, 8)),
        "ConcreteDropout": (lambda: dnn.ConcreteDropout(0.2, seed=seed), (4, 8)),
        "DropConnect": (lambda: dnn.drop_connect(torch.nn.Linear(8, 8), p=0.3, seed=seed), (4, 8)),
        "LSTM": (lambda: dnn.LSTM(8, 6, num_layers=2, dropout=0.3, recurrent_dropout=0.2, weight_dropout=0.3,
                                 seed=seed), (5, 3, 8)),
        "GRU": (lambda: dnn.GRU(8, 6, num_layers=2, dropout=0.3, weight_dropout=0.3, seed=seed), (5, 3, 8)),
    }


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("name", sorted(_modules(None)))
def test_compile_fullgraph_zero_breaks_and_matches_eager_with_a_seed(name):
    # torch.compile skips torch.nn.RNNBase subclasses unless torch's own switch allows them (docs/pt2.md)
    with torch._dynamo.config.patch(allow_rnn=name in ("LSTM", "GRU")):
        _compile_matches_eager(name)


def _compile_matches_eager(name):
    make, shape = _modules(11)[name]
    torch.manual_seed(0)
    eager, compiled = make().train(), make().train()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(shape)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(make().train())(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    cm = torch.compile(compiled, fullgraph=True)
    for _ in range(2):  # the second call draws the next stream in both
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = _out(eager(xe)), _out(cm(xc))
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
        ye.square().sum().backward()
        yc.square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(eager.state_dict()["rng_state"] if "rng_state" in eager.state_dict() else torch.zeros(1),
                       compiled.state_dict()["rng_state"] if "rng_state" in compiled.state_dict() else torch.zeros(1))


@pytest.mark.parametrize(
    "name",
    ["AlphaDropout", "FeatureAlphaDropout", "GaussianNoise", "ConcreteDropout", "Dropout2d", "LockedDropout", "DropBlock2d"],
)
def test_compile_dynamic_shapes_matches_eager_at_every_batch_size(name):
    """torch.compile(dynamic=True): the float hyperparameters arrive as SymFloats (alpha, Gaussian noise and
    Concrete dropout used to fail in math.isfinite / math.sqrt) and the batch size is symbolic; values and
    gradients equal eager's at several batch sizes (noise shaped by the input follows it)."""
    make, shape = _modules(11)[name]
    torch.manual_seed(0)
    eager, compiled = make().train(), make().train()
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    cm = torch.compile(compiled, dynamic=True, fullgraph=True)
    bdim = 1 if name == "LockedDropout" else 0
    for b in (shape[bdim], 1, 5):
        s = list(shape)
        s[bdim] = b
        x = torch.randn(s)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = _out(eager(xe)), _out(cm(xc))
        assert ye.shape == yc.shape
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
        ye.square().sum().backward()
        yc.square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)


def test_compile_without_a_seed_draws_fresh_masks_and_backward_uses_the_forward_mask():
    m = torch.compile(dnn.Dropout(0.5), fullgraph=True)
    x = torch.rand(64, 64) + 0.5
    xr = x.clone().requires_grad_()
    y1 = m(xr)
    y1.sum().backward()
    assert torch.equal(xr.grad, (y1 != 0).float() * dropkit.rng.inverted_scale(0.5))  # d/dx = the forward's mask
    y2 = m(x)
    assert not torch.equal(y1.detach() != 0, y2 != 0)  # a fresh key per call, not a constant baked in


# ---------------------------------------------------------------------------
# torch.export, TorchScript, ONNX
# ---------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self, drop):
        super().__init__()
        self.fc, self.drop = torch.nn.Linear(8, 8), drop

    def forward(self, x):
        return self.drop(self.fc(x))


def _op_names(gm) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("seed", [None, 3])
def test_export_training_mode_draws_fresh_masks(seed):
    net = _Net(dnn.Dropout(0.5, seed=seed)).train()
    ep = torch.export.export(net, (torch.randn(4, 8),))
    assert any("dropkit.dropout" in t for t in _op_names(ep.graph_module))
    run = ep.module()
    x = torch.randn(4, 8)  # the exported batch size (32 elements: equal masks by chance with probability 2^-32)
    a, b = run(x), run(x)
    assert not torch.equal(a != 0, b != 0)


@pytest.mark.parametrize("name", sorted(_modules(None)))
def test_export_with_a_dynamic_batch_dimension(name):
    """torch.export with the batch size a Dim: the program runs at other batch sizes, its noise shaped by the
    input (noise_shape variants used to reject the symbolic size; DropBlock's op specialised it), and with a
    seed it equals the eager module at that size."""
    import copy

    from torch.export import Dim

    make, shape = _modules(11)[name]
    bdim = 1 if name in ("LSTM", "GRU", "LockedDropout") else 0
    torch.manual_seed(0)
    model = _Wrap(make(), shape[-1]).train()
    eager = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (torch.randn(shape),), dynamic_shapes=({bdim: Dim("batch", min=1, max=64)},))
    run = ep.module()
    for b in (7, 1):
        s = list(shape)
        s[bdim] = b
        x = torch.randn(s)
        y, ye = run(x), eager(x)
        assert y.shape == ye.shape
        torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-6)


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.seeded, self.unseeded = dnn.Dropout(0.5, seed=3), dnn.GaussianDropout(0.3)

    def forward(self, x):
        h = self.fc(x)
        return self.seeded(h), self.unseeded(h)


@pytest.mark.slow
def test_aot_inductor_package_advances_the_stream_and_draws_fresh_noise(tmp_path):
    """AOTInductor (export -> aoti_compile_and_package -> aoti_load_package): a seeded module's stream advances
    per call exactly as in eager (no frozen mask), and unseeded noise is fresh per call."""
    import copy

    torch.manual_seed(0)
    model = _TwoHeads().train()
    eager = copy.deepcopy(model)
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (x,))
        run = torch._inductor.aoti_load_package(
            torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
        )
    (a, ga), (b, gb) = run(x), run(x)
    assert not torch.equal(a, b) and not torch.equal(ga, gb)
    torch.testing.assert_close(a, eager(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, eager(x)[0], rtol=1e-5, atol=1e-6)


def test_export_eval_mode_has_no_random_op():
    net = _Net(dnn.Dropout(0.5, seed=3)).eval()
    ep = torch.export.export(net, (torch.randn(4, 8),))
    names = _op_names(ep.graph_module)
    assert not any("dropkit" in t or "rand" in t for t in names), names


def test_jit_script_points_to_freeze():
    with pytest.raises(RuntimeError, match="dropkit.guard.freeze"):
        torch.jit.script(_Net(dnn.Dropout(0.5)))


def test_jit_trace_in_training_mode_does_not_replay_one_mask():
    net = _Net(dnn.Dropout(0.5)).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (torch.randn(4, 8),), check_trace=False)
    x = torch.randn(32, 8)
    assert not torch.equal(traced(x) != 0, traced(x) != 0)


class _Wrap(torch.nn.Module):
    """A Linear in front of a module of ``_modules`` (its first output for RNNs)."""

    def __init__(self, drop, features):
        super().__init__()
        self.fc, self.drop = torch.nn.Linear(features, features), drop

    def forward(self, x):
        return _out(self.drop(self.fc(x)))


#: Variants whose noise takes its shape from x inside the op: a training-mode trace draws fresh noise at any shape.
_TRACEABLE_IN_TRAINING = {"Dropout", "GaussianDropout", "DropConnect"}


@pytest.mark.parametrize("name", sorted(_modules(None)))
def test_jit_trace_every_module_eval_works_training_fresh_or_refused(name):
    """Eval mode traces every module (values equal, another batch size works). In training mode a trace either
    draws fresh noise per call at any batch size, or is refused: the noise of the other variants is shaped by
    the input, which a trace bakes in (DropBlock's traced block grid broadcast silently at another batch size)."""
    make, shape = _modules(None)[name]
    x, other = torch.randn(shape), torch.randn((1,) + tuple(shape[1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = _Wrap(make(), shape[-1]).eval()
        traced = torch.jit.trace(m, (x,), check_trace=False)
        assert torch.equal(traced(x), m(x)) and torch.equal(traced(other), m(other))
        m.train()
        if name in _TRACEABLE_IN_TRAINING:
            traced = torch.jit.trace(m, (x,), check_trace=False)
            assert not torch.equal(traced(x), traced(x))
            assert traced(other).shape == m(other).shape
        else:
            with pytest.raises(RuntimeError, match="cannot record .* in training mode.*dropkit.guard.freeze"):
                torch.jit.trace(m, (x,), check_trace=False)


def test_onnx_export_in_training_mode_is_refused_not_constant(tmp_path):
    pytest.importorskip("onnx")
    net = _Net(dnn.Dropout(0.5)).train()
    with pytest.raises(Exception) as info:
        torch.onnx.export(net, (torch.randn(4, 8),), str(tmp_path / "m.onnx"), training=torch.onnx.TrainingMode.TRAINING,
                          dynamo=False)
    assert "dropkit" in str(info.value)


# ---------------------------------------------------------------------------
# Activation checkpointing: the recompute draws the forward's masks
# ---------------------------------------------------------------------------
class _Block(torch.nn.Module):
    def __init__(self, drop, shape):
        super().__init__()
        self.shape = shape
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, shape[-1]))
        self.drop = drop

    def forward(self, x):
        y = _out(self.drop(x * self.scale))
        return (y * self.scale).sin()  # the next op saves the dropout's output: a different mask changes the grad


def _grads(block, x, mode):
    block.zero_grad()
    xr = x.clone().requires_grad_()
    if mode is None:
        y = block(xr)
    elif mode == "sac":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        ctx = lambda: create_selective_checkpoint_contexts([torch.ops.aten.mm.default])  # noqa: E731
        y = cp.checkpoint(block, xr, use_reentrant=False, context_fn=ctx)
    else:
        y = cp.checkpoint(block, xr, use_reentrant=mode)
    y.sum().backward()
    return y.detach(), xr.grad, block.scale.grad.clone()


@pytest.mark.parametrize("seed", [None, 21])
@pytest.mark.parametrize("mode", [True, False, "sac"])
@pytest.mark.parametrize("name", sorted(set(_modules(None)) - {"DropConnect"}))
def test_checkpoint_recompute_draws_the_forward_masks(name, mode, seed):
    make, shape = _modules(seed)[name]
    if name in ("LSTM", "GRU"):
        make_block = lambda: _Block(make(), shape[:-1] + (6,))  # noqa: E731
        x_shape = shape
    else:
        make_block = lambda: _Block(make(), shape)  # noqa: E731
        x_shape = shape
    torch.manual_seed(5)
    ref, ckpt = make_block().train(), make_block().train()
    ckpt.load_state_dict(ref.state_dict())
    if name in ("LSTM", "GRU"):  # the block scales the LSTM's input by a vector of its input size
        ref.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))
        ckpt.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))
        ref.forward = lambda x, b=ref: (_out(b.drop(x * b.scale))).sin()
        ckpt.forward = lambda x, b=ckpt: (_out(b.drop(x * b.scale))).sin()
    x = torch.randn(x_shape)
    for _ in range(2):
        torch.manual_seed(17)
        y0, gx0, gs0 = _grads(ref, x, None)
        torch.manual_seed(17)
        y1, gx1, gs1 = _grads(ckpt, x, mode)
        torch.testing.assert_close(y1, y0, rtol=0, atol=0)
        torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(gs1, gs0, rtol=1e-6, atol=1e-7)


def test_compiled_checkpoint_matches_eager_without_a_seed():
    drop, w = dnn.Dropout(0.5), torch.linspace(0.5, 1.5, 8)
    fn = torch.compile(lambda t: cp.checkpoint(lambda u: (drop(u) * w).sin(), t, use_reentrant=False), fullgraph=True)
    x = torch.rand(64, 8) * 0.5 + 0.25  # |drop(x) * w| < pi / 2: cos > 0
    xa = x.clone().requires_grad_()
    y = fn(xa)
    y.sum().backward()
    kept = (y != 0).float()
    z = kept * dropkit.rng.inverted_scale(0.5) * x * w  # the forward's pre-activation, from its own mask
    torch.testing.assert_close(y.detach(), z.sin(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xa.grad, torch.cos(z) * kept * dropkit.rng.inverted_scale(0.5) * w, rtol=1e-5, atol=1e-6)


def test_compiled_checkpoint_with_a_seeded_module_refuses_instead_of_a_wrong_gradient():
    block = _Block(dnn.Dropout(0.5, seed=4), (16, 8))
    fn = torch.compile(lambda t: cp.checkpoint(block, t, use_reentrant=False), fullgraph=True)
    x = torch.randn(16, 8, requires_grad=True)
    y = fn(x)
    try:
        y.sum().backward()
    except RuntimeError as exc:  # the partitioner recomputed the seeded draw: refused, never silently wrong
        assert "cannot be identified" in str(exc)
        return
    ref = _Block(dnn.Dropout(0.5, seed=4), (16, 8))  # else (the draw was saved): it must be exact
    xr = x.detach().clone().requires_grad_()
    ref(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


# ---------------------------------------------------------------------------
# Layout, autocast, errors before effects
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [
    lambda t: F.dropout(t, 0.5, seed=1),
    lambda t: F.dropout2d(t, 0.5, seed=1),
    lambda t: F.alpha_dropout(t, 0.5, seed=1),
    lambda t: F.gaussian_dropout(t, 0.5, seed=1),
    lambda t: F.drop_block2d(t, 0.2, 3, seed=1),
], ids=["dropout", "dropout2d", "alpha", "gaussian", "drop_block"])
def test_output_keeps_the_input_memory_format(fn):
    x = torch.randn(2, 8, 5, 5)
    cl = x.to(memory_format=torch.channels_last)
    y = fn(cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, fn(x))
    perm = x.permute(0, 2, 3, 1)  # dense, not contiguous
    yp = fn(perm)
    assert yp.stride() == perm.stride()
    assert torch.equal(yp, fn(perm.contiguous()))


def test_inplace_channels_last_keeps_layout_and_values():
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    expected = F.dropout(x.contiguous(), 0.3, seed=6)
    y = F.dropout(x, 0.3, inplace=True, seed=6)
    assert y is x and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, expected)


def test_autocast_bf16_on_cpu():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), dnn.Dropout(0.5, seed=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(4, 8))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert net[0].weight.grad is not None


@pytest.mark.parametrize("call", [
    lambda t: F.dropout(t, 0.5, inplace=True, seed=1),
    lambda t: F.alpha_dropout(t, 0.5, inplace=True, seed=1),
    lambda t: F.drop_block2d(t, 0.2, 2, inplace=True, seed=1),
    lambda t: F.dropout(t, 1.0, inplace=True),
], ids=["dropout", "alpha", "drop_block", "p1"])
def test_failed_inplace_on_a_leaf_leaves_its_data_untouched(call):
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="in-place"):
        call(leaf)
    assert torch.equal(leaf.detach(), before)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "identity"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_op_forward_ad_and_jvp(activation, with_bias):
    """The fused op's tangent is t_residual + (t_x + t_bias) * f * act'(h), never a silent None."""
    x, r = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    x = x + 0.1 * torch.sign(x)  # away from relu's kink
    b = torch.randn(8, dtype=torch.float64) * 0.01 if with_bias else None

    def fn(x, r, b=None):
        return F.fused_bias_act_dropout_add(x, b, r, 0.4, activation=activation, seed=1)

    inputs = [t.clone().requires_grad_() for t in ((x, r, b) if with_bias else (x, r))]
    assert gradcheck(fn, inputs, check_forward_ad=True, check_backward_ad=True)
    with fwAD.dual_level():
        out = fn(fwAD.make_dual(x, torch.ones_like(x)), r, b)
        tangent = fwAD.unpack_dual(out).tangent
    assert tangent is not None
    _, jvp_out = torch.func.jvp(lambda t: fn(t, r, b), (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, jvp_out, rtol=0, atol=0)
    kept = F.dropout(torch.ones_like(x), 0.4, seed=1) != 0
    assert torch.equal(tangent == 0, ~kept) or activation == "relu"
