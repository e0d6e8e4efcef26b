"""Issue 21: `dropkit guard` runs nothing from a file it was asked to inspect.

Each test builds the attack of the review (a .pt2 whose symbolic size runs Python under sympy, a
TorchScript model that writes a file, a zip bomb), shows where it matters that torch's own loader
runs it, and checks that dropkit refuses it before anything happens, with one line naming the field.
"""

import json
import zipfile

import pytest
import torch

from dropkit import _loading as loading
from dropkit.cli import main


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _dynamic_pt2(path):
    dim = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(Net().eval(), (torch.randn(5, 4),), dynamic_shapes=({0: dim},))
    torch.export.save(ep, path)
    return path


def _rewrite(src, dst, edit_json=None, extra=None):
    """A copy of the archive ``src`` with its graph JSON edited (``edit_json(dict) -> dict``) and members added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = zin.read(info)
            if edit_json and info.filename.endswith("/models/model.json"):
                data = json.dumps(edit_json(json.loads(data))).encode()
            zout.writestr(info, data)
        for inner, (data, method) in (extra or {}).items():
            zout.writestr(zipfile.ZipInfo(f"{root}/{inner}"), data, compress_type=method)
    return dst


def _set_all(obj, key, fn):
    """Apply ``fn`` to every value of ``key`` in a JSON tree (in place); returns how many were changed."""
    n = 0
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, str):
                obj[k] = fn(v)
                n += 1
            else:
                n += _set_all(v, key, fn)
    elif isinstance(obj, list):
        for v in obj:
            n += _set_all(v, key, fn)
    return n


def _one_line_refusal(capsys, argv, *needles):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_sympy_expression_in_pt2_runs_nothing(tmp_path, capsys):
    """HIGH: torch.export.load passes expr_str to sympy.sympify; a crafted one runs Python (proved with
    torch's loader), dropkit refuses it before torch sees the file and names the field."""
    marker = tmp_path / "marker"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')*0 + "
    evil = tmp_path / "evil.pt2"

    def edit(graph):
        assert _set_all(graph, "expr_str", lambda e: payload + e) > 0
        return graph

    _rewrite(_dynamic_pt2(tmp_path / "clean.pt2"), evil, edit)
    loading.check_pt2(tmp_path / "clean.pt2")  # torch's own expressions pass the grammar
    with pytest.raises(loading.UnsafeArchiveError, match="expr_str.*sympify"):
        loading.check_pt2(evil)
    _one_line_refusal(capsys, ["guard", str(evil)], "refused", "expr_str")
    assert not marker.exists()
    try:  # the attack is real: torch's loader writes the file
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001 - whatever happens after the payload ran
        pass
    assert marker.read_text() == "x"


@pytest.mark.parametrize(
    "expr",
    [
        "Symbol('s0').__class__",
        "Symbol('s0', integer=True)*(lambda: 0)()",
        "eval('1')",
        "s0 + __builtins__",
        "Symbol('s0'.join('ab'))",
        "Symbol('s0', integer=True)\n",
        "s0 + 1" + "+1" * 3000,
        "Pow(Integer(9), Pow(Integer(9), Integer(9)))",  # sympy would compute a number of 3.7e8 digits
        "9**9**9",
        "s0**(s1)",
        "PowByNatural(s0, 1000)",
    ],
)
def test_expression_grammar_refuses(expr):
    assert loading.check_sym_expr(expr) is not None


@pytest.mark.parametrize(
    "expr",
    ["s0", "2*s0 + 1", "Max(1, s0)", "FloorDiv(s0, 2)", "Eq(Mod(s1, 4), 0)", "Symbol('u0', integer=True) >= 0",
     "Mul(Integer(2), Symbol('s77', positive=True, integer=True))", "s0**2", "Rational(1, 2)*s0", "-oo",
     "Pow(Symbol('s0', integer=True), Integer(2))", "s0**(-1)", "PowByNatural(s1, 3)", "FloatPow(s0, 0.5)"],
)
def test_expression_grammar_accepts_torch_forms(expr):
    assert loading.check_sym_expr(expr) is None


def test_code_injection_through_names_and_stack_traces_is_refused(tmp_path):
    """Names become attribute paths in the generated module's code, and a carriage return ends a comment there."""
    src = _dynamic_pt2(tmp_path / "clean.pt2")
    cases = {
        "parameter_name": lambda g: _set_all(g, "parameter_name", lambda v: v + '")+print("x')
        and g,
        "stack_trace": lambda g: _set_all(g, "stack_trace", lambda v: v + "\rimport os") and g,
    }
    for field, edit in cases.items():
        with pytest.raises(loading.UnsafeArchiveError, match=field):
            loading.check_pt2(_rewrite(src, tmp_path / f"{field}.pt2", edit))


def test_treespec_that_imports_a_module_is_refused(tmp_path):
    src = _dynamic_pt2(tmp_path / "clean.pt2")

    def edit(graph):
        spec = [1, {"type": "collections.defaultdict", "context": json.dumps(
            {"default_factory_module": "antigravity", "default_factory_name": "x", "dict_context": []}),
            "children_spec": []}]
        assert _set_all(graph, "out_spec", lambda v: json.dumps(spec)) > 0
        return graph

    with pytest.raises(loading.UnsafeArchiveError, match="antigravity"):
        loading.check_pt2(_rewrite(src, tmp_path / "spec.pt2", edit))


def test_pt2_node_outside_the_allowlist_needs_trust(tmp_path):
    src = _dynamic_pt2(tmp_path / "clean.pt2")
    bad = _rewrite(src, tmp_path / "op.pt2",
                   lambda g: _set_all(g, "target", lambda t: t.replace("aten.relu", "myns.relu")) and g)
    with pytest.raises(loading.UnsafeArchiveError, match="myns.*--trust-model"):
        loading.check_pt2(bad)
    loading.check_pt2(bad, trust_model=True)  # the grammar still applies; the op list does not


class FileWriter(torch.nn.Module):
    """MEDIUM: a scripted forward that creates and overwrites a file the user can write."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        t = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
        return x + t.fill_(120).sum() * 0


def test_torchscript_that_writes_a_file_is_refused_unless_trusted(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "writer.ts"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2), FileWriter(str(marker)))), path)
    err = _one_line_refusal(capsys, ["guard", str(path), "--shape", "1,2"], "refused", "aten::from_file",
                            "--trust-model")
    assert "1.forward" in err
    assert not marker.exists()
    # with the flag the user takes responsibility: the model runs (and writes its file)
    assert main(["guard", str(path), "--shape", "1,2", "--runs", "2", "--trust-model"]) == 0
    assert marker.read_bytes() == b"xxxx"


class SetState(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.ones(2)

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.w = state[0]
        self.training = state[1]


def test_torchscript_setstate_is_refused_before_loading(tmp_path):
    path = tmp_path / "setstate.ts"
    torch.jit.save(torch.jit.script(SetState()), path)
    with pytest.raises(loading.UnsafeArchiveError, match="__setstate__.*--trust-model"):
        loading.load_program(str(path))
    kind, module = loading.load_program(str(path), trust_model=True)
    assert kind == "torchscript"


def test_clean_torchscript_passes(tmp_path):
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(Net(), torch.nn.Dropout(0.5)).eval()), path)
    assert loading.load_program(str(path))[0] == "torchscript"


def test_zip_bomb_member_gives_a_clear_error(tmp_path, capsys):
    """LOW: a small .pt2 whose member unpacks huge is refused from its header, not read (was 3.5 GB RSS,
    then "internal error")."""
    src = _dynamic_pt2(tmp_path / "clean.pt2")
    bomb = _rewrite(src, tmp_path / "bomb.pt2", extra={"extra/notes.txt": (b"\0" * (64 << 20), zipfile.ZIP_DEFLATED)})
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(loading.UnsafeArchiveError, match="zip bomb"):
        loading.check_pt2(bomb)
    _one_line_refusal(capsys, ["guard", str(bomb)], "extra/notes.txt", "unpacks to")


def test_lying_zip_header_is_not_trusted(tmp_path):
    """A member whose headers claim 100 bytes but that unpacks to 1 MiB: read no further than the claim, and
    refused as damaged (the CRC does not match), in one line naming it."""
    src = _dynamic_pt2(tmp_path / "clean.pt2")
    path = _rewrite(src, tmp_path / "liar.pt2", extra={"extra/liar.txt": (b"a" * (1 << 20), zipfile.ZIP_DEFLATED)})
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("extra/liar.txt"))
    data = bytearray(path.read_bytes())
    name = info.filename.encode()
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(sig + b"", 0)
        while at >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(name)] == name:
                data[at + size_at : at + size_at + 4] = (100).to_bytes(4, "little")
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(loading.UnsafeArchiveError, match="extra/liar.txt is damaged"):
        loading.check_pt2(path)
