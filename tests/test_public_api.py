"""dropkit names few private torch APIs (issue 20): at most 8 lines of ``src/``, each with a comment naming the
public API that is missing, and none of them in the modules every eager call runs through.

A private API is a module of torch whose dotted name has a component starting with ``_`` (``torch._C``,
``torch._ops``, ``torch._subclasses``, ``torch._functorch``, ``torch.utils._python_dispatch``,
``torch.utils._pytree``, ``torch.distributed.tensor._utils``, ...) or an underscore attribute of a torch
module or class (``torch.autograd.forward_ad._current_level``). The count reads the code (``ast``), not
docstrings or comments.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

import dropkit

SRC = Path(dropkit.__file__).resolve().parent
MAX_LINES = 8

def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "torch" and any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def _scan(code: str) -> dict[int, str]:
    """``line -> the private name`` for each line of ``code`` naming a private torch API (imports, attribute
    chains; a chain names its prefixes too, one entry per line)."""
    found: dict[int, str] = {}
    for node in ast.walk(ast.parse(code)):
        name = None
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            name = dotted if dotted and _private(dotted) else None
        elif isinstance(node, ast.ImportFrom) and node.module and _private(node.module):
            name = node.module
        elif isinstance(node, ast.Import):
            name = next((a.name for a in node.names if _private(a.name)), None)
        if name is not None:
            found.setdefault(node.lineno, name)
    return found


def private_api_lines() -> dict[tuple[str, int], str]:
    """``(file, line) -> the private name`` for every line of ``src/dropkit`` that names a private torch API."""
    return {
        (str(path.relative_to(SRC.parent)), line): name
        for path in sorted(SRC.rglob("*.py"))
        for line, name in _scan(path.read_text()).items()
    }


def _comments(path: Path) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def test_at_most_eight_lines_name_a_private_torch_api():
    lines = private_api_lines()
    listing = "\n".join(f"{f}:{n}: {name}" for (f, n), name in sorted(lines.items()))
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines name a private torch API (at most {MAX_LINES}):\n{listing}"


def test_each_private_api_line_says_which_public_api_is_missing():
    missing = []
    for (rel, lineno), name in private_api_lines().items():
        comment = _comments(SRC.parent / rel).get(lineno, "")
        if "public" not in comment.lower():
            missing.append(f"{rel}:{lineno}: {name}")
    assert not missing, "private torch APIs without a comment naming the missing public API:\n" + "\n".join(missing)


def test_the_ops_package_and_its_callers_comment_each_private_name():
    """The lines of the ops work (ops/, kernels/, functional/, nn/, distributed.py, _introspect.py): at most 4,
    each with its comment."""
    mine = ("dropkit/ops/", "dropkit/kernels/", "dropkit/functional/", "dropkit/nn/", "dropkit/distributed.py",
            "dropkit/_introspect.py")  # fmt: skip
    lines = {k: v for k, v in private_api_lines().items() if k[0].startswith(mine)}
    assert len(lines) <= 4, lines
    for rel, lineno in lines:
        assert "public" in _comments(SRC.parent / rel).get(lineno, "").lower(), (rel, lineno)


def test_the_eager_entry_points_name_no_private_api():
    """The functional API and the ops' implementations: what every eager call runs."""
    hot = ("dropkit/functional/", "dropkit/ops/kernels.py", "dropkit/ops/schemas.py", "dropkit/ops/__init__.py",
           "dropkit/kernels/__init__.py", "dropkit/kernels/reference.py")  # fmt: skip
    assert not [k for k in private_api_lines() if k[0].startswith(hot)]


def test_the_counter_sees_each_kind_of_private_name():
    """The scan itself: an import, a from-import, an attribute chain and a bound name, but no docstring."""
    code = (
        '"""torch._C in a docstring is not code."""\n'
        "import torch._dynamo\n"
        "from torch._subclasses import FakeTensor\n"
        "x = torch._C._get_tracing_state  # a comment naming torch._ops\n"
        "y = torch.autograd.forward_ad._current_level\n"
        "z = torch.nn.functional.dropout\n"
    )
    assert set(_scan(code)) == {2, 3, 4, 5}
