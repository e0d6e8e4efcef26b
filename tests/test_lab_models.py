"""Lab models: shapes, dropout sites and rates, variants, the no-dropout baseline."""

from __future__ import annotations

import pytest
import torch

import dropkit
from dropkit.lab.models import MODELS, SITES, VARIANTS, build_model, probabilities, resolve_rates, variant_choices

SHAPES = {"mlp": (1, 8, 8), "overfit-mlp": (10,), "cnn": (1, 8, 8), "lstm": (40,)}


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_and_probabilities(name):
    classes = 2 if name == "overfit-mlp" else 10
    model = build_model(name, SHAPES[name], classes, p=0.5)
    out = model(torch.randn(5, *SHAPES[name]))
    assert out.shape == (5, 1 if name == "overfit-mlp" else classes)
    probs = probabilities(model, out)
    assert probs.shape == (5, classes)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize("name", MODELS)
def test_p_zero_model_is_deterministic_in_training(name):
    classes = 2 if name == "overfit-mlp" else 10
    model = build_model(name, SHAPES[name], classes, p=0.0).train()
    x = torch.randn(4, *SHAPES[name])
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_dropout_model_is_random_in_training_and_not_in_eval(name):
    classes = 2 if name == "overfit-mlp" else 10
    model = build_model(name, SHAPES[name], classes, p=0.5).train()
    x = torch.randn(4, *SHAPES[name])
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_dropout_layers_come_from_dropkit_with_per_site_rates():
    model = build_model("mlp", (64,), 10, p=[0.2, 0.5], input_p=0.1)
    drops = [m for m in model.modules() if isinstance(m, dropkit.nn.Dropout)]
    assert [d.p for d in drops] == [0.1, 0.2, 0.5]
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [256, 256, 10]
    deep = build_model("overfit-mlp", (10,), 2, p=0.3)
    assert [m.out_features for m in deep.modules() if isinstance(m, torch.nn.Linear)] == [256, 256, 256, 1]
    assert deep.output_activation == "sigmoid"


def test_cnn_drops_whole_channels():
    model = build_model("cnn", (1, 8, 8), 10, p=0.5).train()
    spatial = model.features[2]
    y = spatial(torch.ones(2, 32, 8, 8))
    per_channel = y.flatten(2)
    assert torch.all((per_channel == 0).all(-1) | (per_channel != 0).all(-1))  # each map all kept or all dropped


def test_lstm_uses_locked_dropout_and_dropkit_lstm_when_available():
    model = build_model("lstm", (40,), 10, p=[0.3, 0.25]).train()
    out = model.output_drop(torch.ones(2, 7, 16))
    assert torch.all((out == 0).all(1) | (out != 0).all(1))  # the same mask at every time step
    if hasattr(dropkit.nn, "LSTM"):
        assert isinstance(model.lstm, dropkit.nn.LSTM)


def test_rate_and_variant_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"`p`: expected one rate or 2 rates \(hidden1, hidden2\)"):
        build_model("mlp", (64,), 10, p=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"Invalid value for `p`.*Received: p=1.5"):
        build_model("mlp", (64,), 10, p=1.5)
    with pytest.raises(ValueError, match=r"expected one of \('Dropout'"):
        build_model("mlp", (64,), 10, variant="Nope")
    with pytest.raises(ValueError, match="fits no dropout site of model 'mlp'"):
        build_model("mlp", (64,), 10, variant="LockedDropout")
    with pytest.raises(ValueError, match="cnn.*needs image inputs"):
        build_model("cnn", (10,), 10)
    with pytest.raises(ValueError, match=r"model.*expected one of \('mlp'"):
        build_model("resnet", (10,), 10)
    assert resolve_rates("cnn", 0.4) == (0.4, 0.4, 0.4)
    assert set(variant_choices("cnn")) >= {"Dropout2d", "DropBlock2d", "Dropout"}
    assert set(SITES) == set(MODELS) and set(VARIANTS) >= {"Dropout", "Dropout2d", "LockedDropout"}


@pytest.mark.parametrize("variant", ["GaussianDropout", "AlphaDropout", "DropBlock2d"])
def test_other_variants_when_dropkit_has_them(variant):
    if not hasattr(dropkit.nn, variant):
        with pytest.raises(ValueError, match=f"dropkit.nn.{variant} is not available"):
            build_model("cnn" if variant == "DropBlock2d" else "mlp", (1, 8, 8), 10, variant=variant)
        return
    model = build_model("cnn" if variant == "DropBlock2d" else "mlp", (1, 8, 8), 10, variant=variant)
    assert any(type(m).__name__ == variant for m in model.modules())
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
