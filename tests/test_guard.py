"""dropkit.guard: culprits found by watching and by comparing runs; inference(), freeze(), the CLI."""

import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

import dropkit
from dropkit import guard
from dropkit.cli import main
from dropkit.cli.guard import _weights_only


def mlp(drop=None):
    drop = drop if drop is not None else torch.nn.Dropout(0.5)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), drop, torch.nn.Linear(16, 3))


class FunctionalDrop(torch.nn.Module):
    def __init__(self, gated: bool):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.gated = gated

    def forward(self, x):
        training = self.training if self.gated else True
        return F.dropout(self.fc(x), 0.3, training=training)


class Block(torch.nn.Module):
    def __init__(self, dropout_p):
        super().__init__()
        self.dropout_p = dropout_p

    def forward(self, x):
        q = x.view(x.shape[0], 1, 2, 4)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=self.dropout_p).flatten(1)


X = (torch.randn(4, 8),)


def kinds(report):
    return {(c.path, c.kind) for c in report.culprits}


def test_eval_model_is_deterministic():
    report = guard.check_inference(mlp().eval(), X, runs=3)
    assert report.deterministic and report.culprits == [] and report.identical_runs == 3
    assert report.summary() == "bit-identical in 3/3 runs"


def test_dropout_module_left_in_training_is_named():
    report = guard.check_inference(mlp().train(), X)
    assert not report.deterministic
    assert ("2", "module-in-training") in kinds(report)
    assert report.identical_runs < report.runs


def test_dropkit_module_and_op_are_seen():
    assert kinds(guard.check_inference(mlp(dropkit.nn.Dropout(0.5)).train(), X)) == {("2", "module-in-training")}

    class Op(torch.nn.Module):
        def forward(self, x):
            return dropkit.functional.dropout(x, 0.5)

    report = guard.check_inference(torch.nn.Sequential(Op()), X)
    assert kinds(report) == {("0", "dropkit-op")}  # the key drawn from torch's generator is explained
    assert "masked_scale(p=0.5)" in str(report)


def test_functional_dropout_without_training_flag():
    assert kinds(guard.check_inference(FunctionalDrop(False).eval(), X)) == {("", "functional-dropout")}
    # near miss: training=self.training in eval is inert
    assert guard.check_inference(FunctionalDrop(True).eval(), X).deterministic


def test_nested_path_and_attention_dropout():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Sequential(Block(0.2))).eval()
    report = guard.check_inference(model, X)
    assert kinds(report) == {("1.0", "attention-dropout")}
    assert "dropout_p=0.2" in str(report)
    assert guard.check_inference(torch.nn.Sequential(Block(0.0)).eval(), X).deterministic


def test_multihead_attention_in_training_mode():
    mha = torch.nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 3, 8)
    report = guard.check_inference(mha.train(), (x, x, x))
    assert ("", "attention-dropout") in kinds(report)
    assert guard.check_inference(mha.eval(), (x, x, x)).deterministic


def test_random_function_and_unseen_randomness():
    class Noise(torch.nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x)

    class Hidden(torch.nn.Module):  # torch.ops calls are invisible to the watch: only runs differ
        def forward(self, x):
            return torch.ops.aten.bernoulli.p(x, 0.5)

    assert kinds(guard.check_inference(Noise(), X)) == {("", "random-op")}
    report = guard.check_inference(Hidden(), X)
    assert kinds(report) == {("", "output-differs")}


def test_state_is_restored():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    guard.check_inference(model, X)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_nan_outputs_compare_bitwise():
    class NaN(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    assert guard.check_inference(NaN(), X).deterministic


def test_assert_deterministic_lists_every_culprit():
    model = torch.nn.Sequential(torch.nn.Dropout(0.1), FunctionalDrop(False)).train()
    with pytest.raises(guard.NondeterministicInferenceError) as info:
        guard.assert_deterministic(model, X)
    message = str(info.value)
    assert "0: Dropout in training mode" in message and "1: torch.nn.functional.dropout" in message
    assert len(info.value.culprits) == 2
    assert guard.assert_deterministic(mlp().eval(), X).deterministic


def test_bad_arguments():
    with pytest.raises(ValueError, match="runs"):
        guard.check_inference(mlp(), X, runs=1)
    with pytest.raises(TypeError, match="tuple"):
        guard.check_inference(mlp(), X[0])


def test_inference_context_restores_modes_even_on_error():
    model = mlp().train()
    model[3].eval()  # a mixed state must come back exactly
    with guard.inference(model) as m:
        assert m is model and not any(x.training for x in model.modules())
        assert torch.is_inference_mode_enabled()
        assert torch.equal(model(X[0]), model(X[0]))
    assert [x.training for x in model.modules()] == [True, True, True, True, False]
    with pytest.raises(KeyError):
        with guard.inference(model):
            raise KeyError("boom")
    assert [x.training for x in model.modules()] == [True, True, True, True, False]


def test_freeze_replaces_layers_and_matches_eval():
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), dropkit.nn.Dropout(0.25, scaling="classic"), mlp(dropkit.nn.Dropout(0.5))
    ).train()
    frozen = guard.freeze(model)
    assert model.training and isinstance(model[1], dropkit.nn.Dropout)  # original untouched
    assert isinstance(frozen[1], guard.Scale) and frozen[1].scale == 0.75
    assert isinstance(frozen[2][2], torch.nn.Identity)
    assert not frozen.training
    with guard.inference(model):
        expected = model(X[0])
    torch.testing.assert_close(frozen(X[0]), expected, rtol=0, atol=0)


def test_frozen_graphs_have_no_random_op():
    model = mlp().train()
    assert guard.random_ops(torch.export.export(model, X))  # the scan can fail
    frozen = guard.freeze(model)
    assert guard.random_ops(torch.export.export(frozen, X)) == []
    assert guard.random_ops(torch.jit.trace(frozen, X)) == []
    assert guard.random_ops(torch.jit.script(frozen)) == []
    assert guard.random_ops(torch.jit.script(mlp().eval())) != []  # script keeps eval-mode dropout
    pytest.importorskip("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(model, X, buf, dynamo=False, training=torch.onnx.TrainingMode.TRAINING)
        assert any("Dropout" in op for op in guard.random_ops(buf.getvalue()))
        buf = io.BytesIO()
        torch.onnx.export(frozen, X, buf, dynamo=False)
        assert guard.random_ops(buf.getvalue()) == []


def test_cli_pt2_and_torchscript(tmp_path, capsys):
    model = mlp()
    torch.export.save(torch.export.export(model.train(), X), tmp_path / "train.pt2")
    torch.export.save(torch.export.export(model.eval(), X), tmp_path / "eval.pt2")
    torch.jit.save(torch.jit.trace(model.eval(), X), tmp_path / "eval.ts")
    assert main(["guard", str(tmp_path / "eval.pt2"), "--runs", "3"]) == 0
    assert "bit-identical in 3/3 runs" in capsys.readouterr().out
    assert main(["guard", str(tmp_path / "eval.pt2"), str(tmp_path / "train.pt2")]) == 1
    out = capsys.readouterr().out
    assert "aten.dropout" in out and "FAIL" in out and "1/2 files deterministic" in out
    assert main(["guard", str(tmp_path / "eval.ts"), "--shape", "2,8"]) == 0
    with pytest.raises(SystemExit) as info:
        main(["guard", str(tmp_path / "eval.ts")])
    assert info.value.code == 2 and "--shape" in capsys.readouterr().err


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_loading_never_unpickles_arbitrary_objects():
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf, pickle_protocol=2)
    with _weights_only(), pytest.raises(pickle.UnpicklingError):
        buf.seek(0)
        torch.load(buf, weights_only=False)


@pytest.mark.parametrize("layer", [lambda: dropkit.nn.DropBlock2d(0.3, 3), lambda: dropkit.nn.GaussianDropout(0.3)])
def test_dropkit_noise_without_a_single_rate_is_reported(layer):
    """Ops whose noise carries no `p` (DropBlock's block starts, Gaussian noise) are reported, not a crash."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), layer())
    report = guard.check_inference(model, (torch.randn(2, 2, 7, 7),), runs=2)
    assert not report.deterministic and report.culprits[0].path == "1"
