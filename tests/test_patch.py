"""dropkit.patch: torch's functional dropout calls and SDPA's dropout drawn by dropkit inside the block."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as tnf
from torch.utils.checkpoint import checkpoint

import dropkit
import dropkit.functional as F


@pytest.mark.parametrize(
    "torch_fn, dk_fn, shape",
    [
        (tnf.dropout, F.dropout, (8, 16)),
        (tnf.dropout1d, F.dropout1d, (4, 8, 16)),
        (tnf.dropout2d, F.dropout2d, (4, 8, 5, 5)),
        (tnf.dropout3d, F.dropout3d, (2, 8, 3, 3, 3)),
    ],
)
def test_dropout_calls_draw_dropkits_masks(torch_fn, dk_fn, shape):
    x = torch.randn(shape)
    with dropkit.patch(seed=3):
        a = torch_fn(x, 0.4)
        b = torch_fn(x, p=0.4, training=True)
    gen = dropkit.SeedGenerator(3)
    assert torch.equal(a, dk_fn(x, 0.4, seed=gen)) and torch.equal(b, dk_fn(x, 0.4, seed=gen))
    with dropkit.patch(seed=3):
        assert torch_fn(x, 0.4, training=False) is x  # eval: untouched, as torch


def test_torch_defaults_are_kept_alpha_dropout_is_off_by_default():
    x = torch.randn(64, 32)
    with dropkit.patch(seed=0):
        assert torch.equal(tnf.alpha_dropout(x, 0.2), x)  # torch's training=False default
        y = tnf.alpha_dropout(x, 0.2, training=True)
        z = tnf.feature_alpha_dropout(x.view(64, 32, 1), 0.2, True)
    gen = dropkit.SeedGenerator(0)
    assert torch.equal(y, F.alpha_dropout(x, 0.2, seed=gen))
    assert torch.equal(z, F.feature_alpha_dropout(x.view(64, 32, 1), 0.2, seed=gen))


def test_dropout2d_of_a_3d_input_keeps_torchs_reading():
    x = torch.ones(16, 8, 5)  # torch: (N, C, L), channel-wise 1-d dropout
    with dropkit.patch(seed=1):
        y = tnf.dropout2d(x, 0.5, True)
    zero = y == 0
    assert bool((zero.all(2) | (~zero).all(2)).all())
    n = 16 * 8
    assert abs(int(zero.all(2).sum()) - n / 2) <= 5 * math.sqrt(n / 4)


def test_unseeded_block_follows_torch_manual_seed():
    x = torch.randn(8, 8)
    with dropkit.patch():
        torch.manual_seed(5)
        a = tnf.dropout(x, 0.5)
        torch.manual_seed(5)
        b = tnf.dropout(x, 0.5)
    assert torch.equal(a, b)


def _qkv(gqa=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g)
    kv_heads = 2 if gqa else 4
    return q, torch.randn(2, kv_heads, 7, 8, generator=g), torch.randn(2, kv_heads, 7, 8, generator=g)


@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "float_mask", "scale", "gqa"])
def test_attention_without_dropout_matches_torch_sdpa(case):
    q, k, v = _qkv(case == "gqa")
    kw = {}
    if case == "causal":
        k, v = k[..., :6, :], v[..., :6, :]
        kw["is_causal"] = True
    elif case == "bool_mask":
        kw["attn_mask"] = torch.rand(6, 7, generator=torch.Generator().manual_seed(1)) > 0.3
        kw["attn_mask"][:, 0] = True
    elif case == "float_mask":
        kw["attn_mask"] = torch.randn(6, 7)
    elif case == "scale":
        kw["scale"] = 0.3
    elif case == "gqa":
        kw["enable_gqa"] = True
    want = tnf.scaled_dot_product_attention(q, k, v, **kw)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, **kw), want)


def test_sdpa_with_dropout_uses_dropkits_mask_on_the_probabilities():
    q, k, v = _qkv()
    with dropkit.patch(seed=9):
        y = tnf.scaled_dot_product_attention(q, k, v, dropout_p=0.25)
        y0 = tnf.scaled_dot_product_attention(q, k, v)  # no dropout: torch's own kernel
    gen = dropkit.SeedGenerator(9)
    assert torch.equal(y, F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, seed=gen))
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1)
    torch.testing.assert_close(y, F.dropout(probs, 0.25, seed=dropkit.SeedGenerator(9)) @ v)
    assert torch.equal(y0, tnf.scaled_dot_product_attention(q, k, v)) and gen.calls == 1


def test_multihead_attention_dropout_warns_once_naming_the_call():
    mha = torch.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
    x = torch.randn(2, 5, 8)
    import dropkit._patch as impl

    impl._warned.clear()
    with dropkit.patch(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mha(x, x, x)
        mha(x, x, x)
    msgs = [str(w.message) for w in caught if "multi_head_attention_forward" in str(w.message)]
    assert len(msgs) == 1 and "torch's own random numbers" in msgs[0]


def test_gradients_and_activation_checkpointing():
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16, requires_grad=True)

    def block(t):
        return tnf.dropout(lin(t), 0.5, True).relu()

    grads = {}
    for seed in (None, 6):
        with dropkit.patch(seed=seed):
            torch.manual_seed(2)
            plain = block(x)
            plain.sum().backward()
            grads["plain", seed], x.grad = x.grad, None
        with dropkit.patch(seed=seed) as p:
            torch.manual_seed(2)
            ck = checkpoint(block, x, use_reentrant=False, context_fn=p.checkpoint_context_fn)
            ck.sum().backward()
            grads["ckpt", seed], x.grad = x.grad, None
        assert torch.equal(plain, ck) and torch.equal(grads["plain", seed], grads["ckpt", seed])


def test_compile_fullgraph_inside_the_block():
    lin = torch.nn.Linear(16, 16)

    def f(t):
        return tnf.dropout(lin(t), 0.5, True) + tnf.scaled_dot_product_attention(t[None, None], t[None, None],
                                                                                 t[None, None], dropout_p=0.1)[0, 0]

    x = torch.randn(8, 16)
    torch._dynamo.reset()
    try:
        with dropkit.patch(seed=4):
            got = torch.compile(f, fullgraph=True)(x)
        with dropkit.patch(seed=4):
            want = f(x)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, want)


def test_seed_errors_name_the_argument():
    with pytest.raises(TypeError, match="`seed`"):
        dropkit.patch(seed="0")
    with pytest.raises(ValueError, match="seed"):
        dropkit.patch(seed=-1)
