"""dropkit.lint: every rule has a model that triggers it and a near miss that does not."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit.cli import main


def codes(model, inputs=None):
    return [(f.code, f.path) for f in dropkit.lint(model, inputs)]


def has(model, code, inputs=None):
    return any(c == code for c, _ in codes(model, inputs))


def mlp(p1=0.5, p2=0.3):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(p1), nn.Linear(256, 256), nn.ReLU(),
                         nn.Dropout(p2), nn.Linear(256, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.1), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 14 * 14, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))


IMG = (torch.randn(2, 1, 28, 28),)


def test_clean_models_have_no_error_or_warning():
    for model, inputs in ((mlp(), None), (mlp(), IMG), (cnn(), None), (cnn(), IMG)):
        assert all(f.severity == "info" for f in dropkit.lint(model, inputs))
    from dropkit.lab.models import build_model

    for name in ("mlp", "cnn"):
        assert all(f.severity == "info" for f in dropkit.lint(build_model(name, (1, 28, 28), 10, 0.5), IMG))


def test_finding_fields():
    f = dropkit.lint(nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5)))[0]
    assert (f.code, f.severity, f.path) == ("DK101", "error", "1")
    assert f.message and f.fix and "DK101 error" in str(f)


def test_dk101_output_dropout():
    assert codes(nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5), nn.Softmax(-1))) == [("DK101", "1")]
    assert not has(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2), nn.Softmax(-1)), "DK101")


def test_dk102_elementwise_on_feature_maps():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(), nn.Linear(4 * 26 * 26, 2))
    assert ("DK102", "2") in codes(model) and ("DK102", "2") in codes(model, IMG)
    assert not has(cnn(), "DK102", IMG)  # Dropout2d on maps, element-wise only after Linear


def test_dk103_dropout2d_on_3d_input():
    model = nn.Sequential(nn.Conv1d(4, 4, 3), nn.Dropout2d(0.3), nn.Flatten(), nn.Linear(4 * 8, 2))
    with pytest.warns(UserWarning):
        assert ("DK103", "1") in codes(model, (torch.randn(2, 4, 10),))
    assert not has(cnn(), "DK103", IMG)


def test_dk104_rnn_dropout_with_one_layer():
    with pytest.warns(UserWarning):
        one = nn.LSTM(4, 8, num_layers=1, dropout=0.3)
    assert codes(nn.Sequential(one)) == [("DK104", "0")]
    assert not has(nn.Sequential(nn.LSTM(4, 8, num_layers=2, dropout=0.3)), "DK104")


class Ungated(nn.Module):
    def __init__(self, gated):
        super().__init__()
        self.fc, self.gated = nn.Linear(4, 4), gated

    def forward(self, x):
        return F.dropout(self.fc(x), 0.2, training=self.training if self.gated else True)


class Forced(nn.Dropout):
    def train(self, mode=True):
        return super().train(True)


def test_dk105_randomness_in_eval():
    x = (torch.randn(2, 4),)
    assert ("DK105", "0") in codes(nn.Sequential(Ungated(False), nn.Linear(4, 2)), x)
    assert not has(nn.Sequential(Ungated(True), nn.Linear(4, 2)), "DK105", x)
    forced = nn.Sequential(nn.Linear(4, 4), Forced(0.3), nn.Linear(4, 2))
    assert [f for f in codes(forced, x) if f[0] == "DK105"] == [("DK105", "1")]
    assert not has(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 2)).train(), "DK105", x)


def test_dk106_inplace_after_inplace_activation():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Dropout(0.3, inplace=True), nn.Linear(4, 2))
    assert ("DK106", "2") in codes(model)
    near = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.3, inplace=True), nn.Linear(4, 2))
    assert not has(near, "DK106")


def test_dk107_dropout_before_batchnorm():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.BatchNorm1d(8), nn.Linear(8, 2))
    assert ("DK107", "2") in codes(model)
    near = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))
    assert not has(near, "DK107")


def test_dk108_rates():
    assert ("DK108", "3") in codes(mlp(p1=0.8))
    assert not has(mlp(p1=0.75), "DK108")
    inp = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(784, 10))
    assert ("DK108", "1") in codes(inp)
    assert not has(nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(64, 10)), "DK108")


def test_dk109_one_rate_everywhere():
    assert codes(mlp(0.5, 0.5)) == [("DK109", "")]
    assert dropkit.lint(mlp(0.5, 0.5))[0].severity == "info"
    assert not has(mlp(0.5, 0.3), "DK109")
    assert not has(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)), "DK109")


def test_model_left_as_found():
    model = mlp().train()
    dropkit.lint(model, (torch.randn(2, 784),))
    assert all(m.training for m in model.modules())


def bad_factory():
    return nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))


def clean_factory():
    return mlp(), (torch.randn(2, 784),)


def test_cli_text_and_json(capsys):
    assert main(["lint", "tests.test_lint:clean_factory"]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    assert main(["lint", "tests.test_lint:bad_factory", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data[0]["code"] == "DK101" and data[0]["severity"] == "error" and data[0]["path"] == "1"
    assert main(["lint", "tests.test_lint:bad_factory", "--shape", "3,4", "--ignore", "DK101"]) == 0
    with pytest.raises(SystemExit) as info:
        main(["lint", "tests.test_lint"])
    assert info.value.code == 2
