"""dropkit.guard: culprits found by watching and by comparing runs; inference(), freeze(), the CLI."""

import ast
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dropkit
from dropkit import guard
from dropkit.cli import main
from dropkit import _loading as loading


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
    assert "dropkit::dropout(p=0.5)" in str(report)


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
    """Unpickling it runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _pt2(tmp_path, name="model.pt2"):
    path = tmp_path / name
    torch.export.save(torch.export.export(mlp().eval(), X), path)
    return path


def _doctor(src, dst, add=(), config=None, replace=None):
    """A copy of the .pt2 ``src`` with entries added (``{name: bytes}``, names inside the root folder),
    ``config`` merged into the constants config and ``replace`` = ``{name: bytes}`` swapped in."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = zin.read(info)
            inner = info.filename.split("/", 1)[1]
            if replace and inner in replace:
                data = replace[inner]
            if config and inner.endswith("_constants_config.json"):
                cfg = json.loads(data)
                cfg["config"].update(config)
                data = json.dumps(cfg).encode()
            zout.writestr(info.filename, data)
        for inner, data in dict(add).items():
            zout.writestr(f"{root}/{inner}", data)
    return dst


def test_pt2_with_an_opaque_object_is_refused_before_it_runs(tmp_path, capsys):
    """issue #13: torch.export.load unpickles opaque_obj_* constants with plain pickle.loads."""
    marker = tmp_path / "marker"
    evil = _doctor(_pt2(tmp_path), tmp_path / "evil.pt2",
                   add={"data/constants/opaque_obj_0": pickle.dumps(Evil(marker))},
                   config={"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                    "tensor_meta": None}})
    with pytest.raises(loading.UnsafeArchiveError, match="opaque_obj_0"):
        loading.load_program(str(evil))
    with pytest.raises(SystemExit) as info:
        main(["guard", str(evil)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "refused" in err and "opaque_obj_0" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    # the payload is real: torch's own loader runs it (what the check prevents)
    try:
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001 - the unknown constant may fail later; the payload already ran
        pass
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("case", ["pickled-weight", "custom-obj", "sample-inputs", "legacy", "legacy-weights", "aoti"])
def test_every_entry_that_would_be_unpickled_is_refused(tmp_path, case):
    marker = tmp_path / "marker"
    buf = io.BytesIO()
    torch.save({"x": Evil(marker)}, buf)
    payload = buf.getvalue()
    src = _pt2(tmp_path)
    with zipfile.ZipFile(src) as z:
        names = [n.split("/", 1)[1] for n in z.namelist()]
        weights_config = next(n for n in names if n.endswith("_weights_config.json"))
        sample = next(n for n in names if n.startswith("data/sample_inputs/"))
        wcfg = json.loads(z.read(f"{z.namelist()[0].split('/', 1)[0]}/{weights_config}"))
    kwargs = {}
    if case == "pickled-weight":
        first = next(iter(wcfg["config"]))
        wcfg["config"][first]["use_pickle"] = True
        kwargs = {"replace": {weights_config: json.dumps(wcfg).encode(),
                              "data/weights/" + wcfg["config"][first]["path_name"]: payload}}
    elif case == "custom-obj":
        kwargs = {"add": {"data/constants/custom_obj_0": payload},
                  "config": {"obj": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True}}}
    elif case == "sample-inputs":
        kwargs = {"replace": {sample: payload}}
    elif case == "legacy":
        kwargs = {"add": {"serialized_state_dict.pt": payload}}
    elif case == "legacy-weights":  # torch reads data/weights/<model>.pt before the config when it exists
        kwargs = {"add": {"data/weights/model.pt": payload}}
    else:
        kwargs = {"add": {"data/aotinductor/model/model.so": b"\x7fELF"}}
    bad = _doctor(src, tmp_path / "bad.pt2", **kwargs)
    with pytest.raises(loading.UnsafeArchiveError, match="refused"):
        loading.check_pt2(bad)
    assert not marker.exists()


def test_a_clean_pt2_passes_the_check_and_loads(tmp_path):
    path = _pt2(tmp_path)
    loading.check_pt2(path)
    kind, ep = loading.load_program(str(path))
    assert kind == "pt2" and isinstance(ep, torch.export.ExportedProgram)
    with pytest.raises(ValueError, match="not a zip"):
        loading.check_pt2(Path(__file__))


def test_no_loader_patches_torch_and_torch_load_is_weights_only():
    """No unittest.mock in dropkit; every torch.load call passes weights_only=True explicitly."""
    src = Path(dropkit.__file__).parent
    for file in src.rglob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("unittest") for n in names), file
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, f"{file}:{node.lineno}"


@pytest.mark.parametrize("layer", [lambda: dropkit.nn.DropBlock2d(0.3, 3), lambda: dropkit.nn.GaussianDropout(0.3)])
def test_dropkit_noise_without_a_single_rate_is_reported(layer):
    """Ops whose noise carries no `p` (DropBlock's block starts, Gaussian noise) are reported, not a crash."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), layer())
    report = guard.check_inference(model, (torch.randn(2, 2, 7, 7),), runs=2)
    assert not report.deterministic and report.culprits[0].path == "1"


_VARIANTS = {
    "Dropout": (lambda: dropkit.nn.Dropout(0.5), (4, 8)),
    "Dropout1d": (lambda: dropkit.nn.Dropout1d(0.5), (4, 8, 5)),
    "Dropout2d": (lambda: dropkit.nn.Dropout2d(0.5), (2, 4, 5, 5)),
    "Dropout3d": (lambda: dropkit.nn.Dropout3d(0.5), (2, 4, 3, 3, 3)),
    "AlphaDropout": (lambda: dropkit.nn.AlphaDropout(0.3), (4, 8)),
    "FeatureAlphaDropout": (lambda: dropkit.nn.FeatureAlphaDropout(0.3), (2, 4, 5)),
    "GaussianDropout": (lambda: dropkit.nn.GaussianDropout(0.3), (4, 8)),
    "GaussianNoise": (lambda: dropkit.nn.GaussianNoise(0.3), (4, 8)),
    "DropBlock2d": (lambda: dropkit.nn.DropBlock2d(0.2, 2), (2, 4, 6, 6)),
    "DropBlock3d": (lambda: dropkit.nn.DropBlock3d(0.2, 2), (2, 3, 4, 4, 4)),
    "DropPath": (lambda: dropkit.nn.DropPath(0.3), (4, 8)),
    "LockedDropout": (lambda: dropkit.nn.LockedDropout(0.3), (5, 4, 8)),
    "ConcreteDropout": (lambda: dropkit.nn.ConcreteDropout(0.2), (4, 8)),
}


@pytest.mark.parametrize("name", sorted(_VARIANTS))
def test_check_inference_names_every_variant_in_training_mode(name):
    make, shape = _VARIANTS[name]
    model = torch.nn.Sequential(torch.nn.Identity(), make()).train()
    report = guard.check_inference(model, (torch.randn(shape),))
    assert not report.deterministic
    assert ("1", "module-in-training") in kinds(report)
    assert name in str(report)
    model.eval()
    assert guard.check_inference(model, (torch.randn(shape),)).deterministic


@pytest.mark.parametrize("op", ["dropout", "gaussian_dropout", "drop_block2d", "alpha_dropout", "gaussian_noise"])
def test_functional_variants_are_seen_through_the_dispatch_mode(op):
    call = {
        "dropout": lambda t: dropkit.functional.dropout(t, 0.5),
        "gaussian_dropout": lambda t: dropkit.functional.gaussian_dropout(t, 0.5),
        "drop_block2d": lambda t: dropkit.functional.drop_block2d(t, 0.2, 2),
        "alpha_dropout": lambda t: dropkit.functional.alpha_dropout(t, 0.5),
        "gaussian_noise": lambda t: dropkit.functional.gaussian_noise(t, 0.5),
    }[op]

    class Net(torch.nn.Module):
        def forward(self, x):
            return call(x)

    report = guard.check_inference(Net(), (torch.randn(2, 3, 6, 6),))
    assert ("", "dropkit-op") in kinds(report), str(report)
