"""`dropkit lint` takes what the lab takes: ./file.py:factory, package.module:factory, and a lab model factory
(in_shape, num_classes) built from --dataset or --shape; bad input is one line naming it, never "internal error"."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from dropkit.cli import main

NETS = textwrap.dedent('''
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2), nn.Dropout(0.2))

    def make_net(in_shape, num_classes):
        n = 1
        for s in in_shape:
            n *= s
        return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, num_classes))

    def classes_only(num_classes):
        return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, num_classes))

    def boom():
        raise RuntimeError("no GPU here")

    def needs(depth, width):
        return nn.Linear(1, 1)

    def not_a_model():
        return 42
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "lintnets_mod.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("lintnets_mod", None)


def _lint(argv, capsys):
    code = main(["lint", *argv, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("target", ["./lintnets_mod.py:build", "lintnets_mod:build"])
def test_file_and_module_forms_find_the_output_dropout(nets, capsys, target):
    code, findings = _lint([target], capsys)
    assert code == 1 and [f["code"] for f in findings] == ["DK101"] and findings[0]["path"] == "4"


def test_lab_factory_with_dataset_gets_its_shape_and_classes(nets, capsys):
    code, findings = _lint(["./lintnets_mod.py:make_net", "--dataset", "digits"], capsys)
    assert code == 0 and findings == []  # 64 inputs, 10 classes: the forward on two digits ran


def test_lab_factory_with_shape_gets_in_shape_without_the_batch(nets, capsys):
    assert _lint(["lintnets_mod:make_net", "--shape", "2,1,8,8"], capsys) == (0, [])
    assert _lint(["lintnets_mod:classes_only", "--shape", "3,6", "--num-classes", "4"], capsys) == (0, [])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["./missing.py:build"], "Invalid value for `TARGET`: file ./missing.py not found"),
        (["lintnets_mod:nope"], "lintnets_mod has no attribute 'nope'"),
        (["no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["lintnets_mod"], "expected MODULE:FACTORY or FILE.py:FACTORY"),
        (["lintnets_mod:boom"], "lintnets_mod:boom raised RuntimeError: no GPU here (at "),
        (["lintnets_mod:needs"], "lintnets_mod:needs requires depth, width, but it is called with no arguments"),
        (["lintnets_mod:not_a_model"], "must return a torch.nn.Module or (model, example_inputs). Received: int"),
        (["lintnets_mod:make_net"], "is a lab model factory (it takes in_shape, num_classes); pass --dataset"),
        (["lintnets_mod:make_net", "--dataset", "digits", "--shape", "2,64"], "pass one of them"),
        (["lintnets_mod:make_net", "--shape", "2,a"], "Invalid value for `--shape`"),
        (["lintnets_mod:make_net", "--shape", "64"], "needs a batch dimension and at least one more"),
        (["lintnets_mod:classes_only", "--shape", "3,6", "--num-classes", "0"], "Invalid value for `--num-classes`"),
        (["lintnets_mod:make_net", "--shape", "2,64", "--shape", "2,5", "--num-classes", "3"], None),
        (["lintnets_mod:build", "--shape", "2,5"], "the model's forward on the example inputs ((2, 5)) raised"),
    ],
)
def test_bad_input_is_one_line_naming_it(nets, capsys, argv, message):
    try:
        code = main(["lint", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    if message is None:  # two inputs for a one-input model: the forward fails, reported as the user's
        assert code == 2 and "raised TypeError" in err
        return
    assert code == 2 and message in err, err
