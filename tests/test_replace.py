"""dropkit.nn.replace_dropout: every dropout-like module converted in place, meaning kept, per-layer seeds, a report."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import dropkit
import dropkit.functional as F
import dropkit.nn as dnn
from dropkit.nn.replace import layer_seed


def _model():
    return torch.nn.Sequential(
        torch.nn.Linear(16, 16),
        torch.nn.Dropout(0.3),
        torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.6, inplace=True)),
        torch.nn.AlphaDropout(0.2),
    )


def test_every_torch_class_is_replaced_keeping_rate_mode_and_flags():
    model = torch.nn.Sequential(
        torch.nn.Dropout(0.1), torch.nn.Dropout1d(0.2, inplace=True), torch.nn.Dropout2d(0.3), torch.nn.Dropout3d(0.4),
        torch.nn.AlphaDropout(0.5), torch.nn.FeatureAlphaDropout(0.6),
    )  # fmt: skip
    model[3].eval()
    report = dnn.replace_dropout(model)
    assert report.model is model and not report.not_replaced
    want = [dnn.Dropout, dnn.Dropout1d, dnn.Dropout2d, dnn.Dropout3d, dnn.AlphaDropout, dnn.FeatureAlphaDropout]
    assert all(isinstance(m, cls) for m, cls in zip(model, want))
    assert [m.p for m in model] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert model[1].inplace and not model[3].training and model[0].training
    assert [r.path for r in report.replaced] == [str(i) for i in range(6)]
    assert all(r.seed is None for r in report.replaced) and "replaced 6 layer(s)" in str(report)


def test_eval_outputs_are_unchanged():
    torch.manual_seed(0)
    model = _model().eval()
    x = torch.randn(8, 16)
    before = model(x)
    dnn.replace_dropout(model, seed=3)
    assert torch.equal(model(x), before)


def test_seeded_layers_get_streams_from_the_root_and_their_names():
    model = _model()
    report = dnn.replace_dropout(model, seed=7)
    seeds = {r.path: r.seed for r in report.replaced}
    assert seeds == {p: layer_seed(7, p) for p in ("1", "2.1", "3")}
    assert len(set(seeds.values())) == 3 and model[1].seed == layer_seed(7, "1")
    # the same layer under the same name gets the same masks whatever else the model holds
    other = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.3), torch.nn.Dropout(0.9))
    dnn.replace_dropout(other, seed=7)
    x = torch.ones(64, 16)
    assert torch.equal(model[1](x), other[1](x))
    # a SeedGenerator root: a fresh root per conversion, and it advances
    gen = dropkit.SeedGenerator(5)
    a = dnn.replace_dropout(_model(), seed=gen).replaced[0].seed
    b = dnn.replace_dropout(_model(), seed=gen).replaced[0].seed
    assert a != b and gen.calls == 2


def test_replaced_dropout_drops_at_rate_p():
    model = dnn.replace_dropout(torch.nn.Sequential(torch.nn.Dropout(0.3)), seed=1).model
    n = 1 << 16
    dropped = int((model(torch.ones(n)) == 0).sum())
    assert abs(dropped - 0.3 * n) <= 5 * math.sqrt(n * 0.3 * 0.7)


def test_unknown_dropout_like_modules_are_reported_and_kept():
    class MyDropout(torch.nn.Dropout):  # a subclass: its forward may differ
        pass

    class WordDropout(torch.nn.Module):
        p = 0.1

        def forward(self, x):
            return x

    model = torch.nn.Sequential(MyDropout(0.2), WordDropout(), dnn.Dropout(0.1))
    report = dnn.replace_dropout(model)
    assert [n.path for n in report.not_replaced] == ["0", "1"] and not report.replaced
    assert type(model[0]) is MyDropout and "forward may differ" in report.not_replaced[0].reason
    lone = dnn.replace_dropout(torch.nn.Dropout(0.2))
    assert not lone.replaced and "no parent" in lone.not_replaced[0].reason


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="`model`"):
        dnn.replace_dropout("model")
    with pytest.raises(TypeError, match="`seed`"):
        dnn.replace_dropout(_model(), seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        dnn.replace_dropout(_model(), seed=-1)
    with pytest.raises(ValueError, match="scaling"):
        dnn.replace_dropout(_model(), scaling="keep")


# --------------------------------------------------------------------------- timm / torchvision classes
@pytest.fixture
def fake_third_party(monkeypatch):
    """timm's and torchvision's dropout classes with their real attribute names (the real packages are tested in
    tests/test_models.py, in the venv that has them); registered in sys.modules as those packages would be."""

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0, scale_by_keep=True):
            super().__init__()
            self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    class StochasticDepth(torch.nn.Module):
        def __init__(self, p, mode):
            super().__init__()
            self.p, self.mode = p, mode

    class DropBlock2d(torch.nn.Module):
        def __init__(self, p, block_size, inplace=False, eps=1e-6):
            super().__init__()
            self.p, self.block_size, self.inplace, self.eps = p, block_size, inplace, eps

    mods = {
        "timm.layers.drop": {"DropPath": DropPath},
        "torchvision.ops.stochastic_depth": {"StochasticDepth": StochasticDepth},
        "torchvision.ops.drop_block": {"DropBlock2d": DropBlock2d},
    }
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
    return DropPath, StochasticDepth, DropBlock2d


def test_timm_and_torchvision_classes_are_replaced(fake_third_party):
    DropPath, StochasticDepth, DropBlock2d = fake_third_party
    model = torch.nn.Sequential(
        DropPath(0.2, scale_by_keep=False), StochasticDepth(0.3, "row"), StochasticDepth(0.4, "batch"), DropBlock2d(0.1, 3)
    )
    report = dnn.replace_dropout(model, seed=0)
    assert len(report.replaced) == 4 and not report.not_replaced
    assert isinstance(model[0], dnn.DropPath) and model[0].p == 0.2 and not model[0].scale_by_keep
    assert isinstance(model[1], dnn.DropPath) and model[1].p == 0.3 and model[1].scale_by_keep
    assert isinstance(model[3], dnn.DropBlock2d) and model[3].p == 0.1 and model[3].block_size == 3
    x = torch.ones(64, 4, 6, 6)
    y = model[2](x)  # "batch": the whole input kept (scaled by 1/q) or zeroed
    assert bool((y == 0).all()) or torch.allclose(y, x / dropkit.rng.keep_probability(0.4))
    draws = [bool((model[2](x) == 0).all()) for _ in range(400)]
    assert abs(sum(draws) - 160) <= 5 * math.sqrt(400 * 0.4 * 0.6)
    rows = (model[1](x) == 0).flatten(1)  # "row": whole samples
    assert bool((rows.all(1) | (~rows).all(1)).all())
    model.eval()
    assert torch.equal(model(x), x)


def test_third_party_packages_are_not_imported():
    code = (
        "import sys, torch, dropkit\n"
        "dropkit.nn.replace_dropout(torch.nn.Sequential(torch.nn.Dropout(0.1)))\n"
        "assert not any(m.split('.')[0] in ('timm', 'torchvision', 'transformers') for m in sys.modules), "
        "[m for m in sys.modules if m.startswith(('timm', 'torchvision', 'transformers'))]\n"
    )
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_replaced_model_trains_and_matches_functional_masks():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5))
    dnn.replace_dropout(model, seed=11)
    x = torch.ones(4, 8, requires_grad=True)
    y = model(x)
    gen = dropkit.SeedGenerator(layer_seed(11, "0"))
    assert torch.equal(y, F.dropout(torch.ones(4, 8), 0.5, seed=gen))
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)
