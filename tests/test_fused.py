"""``fused_bias_act_dropout_add`` and ``FusedBiasActDropoutAdd`` on the torch path (any device).

The unfused reference is ``residual + dropkit.functional.dropout(act(x + bias), p, seed=...)``
with torch's own activations and autograd; it draws the same mask, so values and
gradients are compared element for element. The Triton kernels of the same op are
compared with this path in ``test_kernels_triton.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dropkit
import dropkit.functional as DF
from dropkit.rng import keep_mask

ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "identity": lambda t: t}
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def operands(shape=(6, 5, 16), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64).to(dtype)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, b, r


def unfused(x, b, r, p, activation, seed, stream=0):
    return r + DF.dropout(ACTS[activation](x + b), p, seed=dropkit.rng.key_tensor(seed, stream))


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_and_grads_match_unfused(activation, dtype):
    x, b, r = operands(dtype=dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
    results = []
    for fn in (DF.fused_bias_act_dropout_add, unfused):
        xs, bs, rs = (t.clone().requires_grad_() for t in (x, b, r))
        y = fn(xs, bs, rs, 0.3, activation, seed=2**64 - 5)
        y.backward(grad_out)
        results.append((y.detach(), xs.grad, bs.grad, rs.grad))
    for name, a, w in zip(("out", "grad x", "grad bias", "grad residual"), *results):
        torch.testing.assert_close(a, w, rtol=TOL[dtype], atol=TOL[dtype], msg=name)


def test_mask_is_the_contract_mask():
    x, b, r = operands(shape=(7, 33))
    y = DF.fused_bias_act_dropout_add(x, b, r, 0.4, "identity", seed=dropkit.rng.key_tensor(123, 4))
    keep = keep_mask(x.numel(), 0.4, 123, 4).view(x.shape)
    assert torch.equal(y[~keep], r[~keep])  # dropped: exactly the residual
    # survivors scaled by 1 / q(0.4), the inverse of the realised keep probability (dropkit.rng.inverted_scale)
    torch.testing.assert_close(y[keep], (r + (x + b) * dropkit.rng.inverted_scale(0.4))[keep], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_rounds_once(dtype):
    x, b, r = operands(dtype=dtype)
    y = DF.fused_bias_act_dropout_add(x, b, r, 0.2, "gelu", seed=1)
    assert y.dtype == dtype
    x32, b32, r32 = (t.float() for t in (x, b, r))
    keep = keep_mask(x.numel(), 0.2, 1).view(x.shape)
    want = (r32 + F.gelu(x32 + b32) * keep / 0.8).to(dtype)
    torch.testing.assert_close(y, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_gradcheck_float64(activation):
    x, b, r = operands(shape=(3, 4), dtype=torch.float64)
    x = x + 0.2 * x.sign()  # keep relu's inputs away from its kink
    xs, bs, rs = (t.clone().requires_grad_() for t in (x, b * 0.01, r))
    assert torch.autograd.gradcheck(
        lambda a, c, d: DF.fused_bias_act_dropout_add(a, c, d, 0.3, activation, seed=11), (xs, bs, rs)
    )


def test_backward_saves_no_mask():
    """Autograd keeps x and bias (for act') and nothing else: no mask, no activation output."""
    x, b, r = (t.requires_grad_() for t in operands(shape=(64, 32)))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        DF.fused_bias_act_dropout_add(x, b, r, 0.5, "gelu", seed=3)
    assert sorted(t.numel() for t in saved) == [32, 64 * 32]
    assert all(t.dtype == x.dtype for t in saved)


def test_partial_requires_grad_and_no_bias():
    x, b, r = operands()
    xs = x.clone().requires_grad_()
    y = DF.fused_bias_act_dropout_add(xs, None, r, 0.3, "silu", seed=5)
    y.sum().backward()
    w = x.clone().requires_grad_()
    unfused(w, torch.zeros(()), r, 0.3, "silu", seed=5).sum().backward()
    torch.testing.assert_close(xs.grad, w.grad, rtol=2e-6, atol=2e-6)
    rs = r.clone().requires_grad_()
    DF.fused_bias_act_dropout_add(x, b, rs, 0.3, "relu", seed=5).sum().backward()
    assert torch.equal(rs.grad, torch.ones_like(r))


def test_eval_p0_p1():
    x, b, r = operands()
    want = r + F.gelu(x + b)
    torch.testing.assert_close(DF.fused_bias_act_dropout_add(x, b, r, 0.3, "gelu", training=False), want)
    torch.testing.assert_close(DF.fused_bias_act_dropout_add(x, b, r, 0.0, "gelu", seed=1), want)
    assert torch.equal(DF.fused_bias_act_dropout_add(x * 1e30, b, r, 1.0, "relu", seed=1), r)


def test_seed_generator_and_strides():
    x, b, r = operands(shape=(8, 12))
    y1 = DF.fused_bias_act_dropout_add(x, b, r, 0.5, seed=7)
    assert torch.equal(y1, DF.fused_bias_act_dropout_add(x, b, r, 0.5, seed=7))
    assert not torch.equal(y1, DF.fused_bias_act_dropout_add(x, b, r, 0.5, seed=8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        DF.fused_bias_act_dropout_add(x, b, r, 0.5, generator=g1), DF.fused_bias_act_dropout_add(x, b, r, 0.5, generator=g2)
    )
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert torch.equal(DF.fused_bias_act_dropout_add(xt, b, r, 0.5, seed=7), y1)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"bias": torch.zeros(5)}, ValueError, "bias"),
        ({"residual": torch.zeros(6, 5, 15)}, ValueError, "residual"),
        ({"activation": "tanh"}, ValueError, "activation"),
        ({"p": 1.5}, ValueError, "`p`"),
        ({"x": torch.zeros(6, 5, 16, dtype=torch.int64)}, TypeError, "x"),
        ({"seed": 1, "generator": torch.Generator()}, ValueError, "seed"),
    ],
)
def test_validation(kwargs, err, match):
    x, b, r = operands()
    args = {"x": x, "bias": b, "residual": r, "p": 0.1, "activation": "relu", **kwargs}
    with pytest.raises(err, match=match):
        DF.fused_bias_act_dropout_add(**args)


def test_module_train_eval_state_repr():
    x, b, r = operands()
    m = dropkit.nn.FusedBiasActDropoutAdd(0.25, "silu", seed=42)
    assert repr(m) == "FusedBiasActDropoutAdd(p=0.25, activation='silu', seed=42)"
    y0 = m(x, b, r)
    assert torch.equal(y0, DF.fused_bias_act_dropout_add(x, b, r, 0.25, "silu", seed=42))
    state = m.state_dict()
    y1 = m(x, b, r)
    m2 = dropkit.nn.FusedBiasActDropoutAdd(0.25, "silu", seed=42)
    m2.load_state_dict(state)
    assert torch.equal(m2(x, b, r), y1)  # resumes at stream 1
    m.eval()
    torch.testing.assert_close(m(x, b, r), r + F.silu(x + b))
    assert list(m.parameters()) == []
    with pytest.raises(ValueError, match="activation"):
        dropkit.nn.FusedBiasActDropoutAdd(0.1, "elu")


def test_transformer_ffn_block_trains():
    """A pre-norm FFN block using the fused tail trains like its unfused twin (same masks)."""
    torch.manual_seed(0)
    d, hidden = 16, 32

    class Block(torch.nn.Module):
        def __init__(self, fused: bool):
            super().__init__()
            self.fused = fused
            self.norm = torch.nn.LayerNorm(d)
            self.up = torch.nn.Linear(d, hidden)
            self.down = torch.nn.Linear(hidden, d, bias=False)
            self.bias = torch.nn.Parameter(torch.zeros(d))
            self.tail = dropkit.nn.FusedBiasActDropoutAdd(0.1, "identity", seed=5)

        def forward(self, x):
            h = self.down(F.gelu(self.up(self.norm(x))))
            if self.fused:
                return self.tail(h, self.bias, x)
            return x + DF.dropout(h + self.bias, 0.1, seed=self.tail.seed_generator())

    a, b = Block(True), Block(False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 7, d)
    for blk in (a, b):
        blk(x).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6, msg=name)
