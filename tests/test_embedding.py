"""embedding_dropout / EmbeddingDropout: whole vocabulary rows dropped, one mask per forward."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest

import dropkit
from dropkit import functional as F
from variant_helpers import ALPHA, saved_bytes


def _setup(v=50, d=4):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, v, (20, 6), generator=g), torch.randn(v, d, generator=g) + 3.0  # rows never zero


def test_every_occurrence_of_a_word_shares_its_fate():
    idx, w = _setup()
    y = F.embedding_dropout(idx, w, 0.5, seed=1)
    dropped = (y == 0).all(-1)
    assert dropped.any() and (~dropped).any()
    for token in idx.unique():
        fate = dropped[idx == token]
        assert bool(fate.all() or (~fate).all())
    kept = ~dropped
    torch.testing.assert_close(y[kept], w[idx][kept] * 2)


def test_equals_dropping_rows_of_the_matrix():
    idx, w = _setup()
    rows = F.dropout(w, 0.3, noise_shape=(w.shape[0], 1), seed=4)
    torch.testing.assert_close(F.embedding_dropout(idx, w, 0.3, seed=4), torch.nn.functional.embedding(idx, rows))


def test_row_rate_binomial():
    v = 20000
    w = torch.ones(v, 1)
    y = F.embedding_dropout(torch.arange(v), w, 0.25, seed=2)
    assert binomtest(int((y != 0).sum()), v, 0.75).pvalue > ALPHA


def test_gradients_reach_kept_rows_only_and_nothing_new_is_saved():
    idx, w = _setup()
    w = w.double().requires_grad_()
    y = F.embedding_dropout(idx, w, 0.5, seed=3)
    y.sum().backward()
    used = torch.zeros(w.shape[0], dtype=torch.bool)
    used[idx.unique()] = True
    kept_rows = (F.dropout(torch.ones(w.shape[0], dtype=torch.float64), 0.5, seed=3) != 0)
    assert (w.grad[used & kept_rows] != 0).all() and (w.grad[~kept_rows] == 0).all()
    assert torch.autograd.gradcheck(lambda t: F.embedding_dropout(idx[:3, :2], t, 0.5, seed=3), w.detach()[:, :2].clone().requires_grad_())
    # only the indices F.embedding saves itself
    assert saved_bytes(lambda t: F.embedding_dropout(idx, t, 0.5, seed=3).sum(), w) == idx.numel() * idx.element_size()


def test_eval_edges_errors():
    idx, w = _setup()
    plain = torch.nn.functional.embedding(idx, w)
    assert torch.equal(F.embedding_dropout(idx, w, 0.5, training=False), plain)
    assert torch.equal(F.embedding_dropout(idx, w, 0.0), plain)
    assert (F.embedding_dropout(idx, w, 1.0) == 0).all()
    with pytest.raises(TypeError, match="token ids"):
        F.embedding_dropout(idx.float(), w, 0.5)
    with pytest.raises(ValueError, match="2-D"):
        F.embedding_dropout(idx, w[0], 0.5)
    with pytest.raises(ValueError, match="`p`"):
        F.embedding_dropout(idx, w, 1.5)


def test_module_wraps_an_embedding():
    emb = torch.nn.Embedding(30, 5, padding_idx=0)
    m = dropkit.nn.EmbeddingDropout(emb, 0.2, seed=1)
    assert m.p == 0.2 and m.weight is emb.weight and repr(m).startswith("EmbeddingDropout(\n")
    assert set(m.state_dict()) == {"embedding.weight", "rng_state"}
    idx = torch.tensor([[0, 1, 2, 1]])
    y = m(idx)
    assert y.shape == (1, 4, 5) and (y[0, 0] == 0).all()  # the padding row stays zero
    assert torch.equal(m.eval()(idx), emb(idx))
    with pytest.raises(TypeError, match="Embedding"):
        dropkit.nn.EmbeddingDropout(torch.nn.Linear(2, 2))
