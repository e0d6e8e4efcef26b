"""Loading models without unpickling: what ``dropkit guard`` (and every dropkit loader of models) accepts.

A ``.pt2`` archive (``torch.export.save``) is a zip of JSON, raw tensor bytes and a few
entries that ``torch.export.load`` unpickles: ``opaque_obj_*`` constants with plain
``pickle.loads``, tensors saved with ``use_pickle`` and the legacy format with
``torch.load(weights_only=False)``, ``custom_obj_*`` TorchScript objects, and sample inputs
with a fallback to ``weights_only=False`` when the weights-only load fails; an AOTInductor
package holds compiled code. :func:`check_pt2` reads the zip's table of contents and
its JSON configs **before torch sees the file** and accepts only:

* the archive's bookkeeping (``archive_format``, ``archive_version``, ``byteorder``,
  ``.data/*``) and ``extra/*`` files (read as text);
* ``models/<name>.json`` (the graph, JSON);
* raw tensor payloads ``data/weights/weight_<i>`` and ``data/constants/tensor_<i>`` whose
  entry in ``<name>_weights_config.json`` / ``<name>_constants_config.json`` says
  ``use_pickle: false``;
* ``data/sample_inputs/<name>.pt`` when ``torch.load(..., weights_only=True)`` reads it
  (so torch's fallback to full unpickling never runs).

Anything else is refused with :class:`UnsafeArchiveError`, one line naming the entry and why.

Before torch reads the graph (``models/<name>.json``), every string that torch's loader would
evaluate or turn into code is checked against a strict grammar (:func:`check_graph_json`):
symbolic expressions (``expr_str``, passed to ``sympy.sympify``, which evaluates Python) may
hold only integers, symbol names, the sympy / torch size functions and arithmetic; names that
become attribute paths of the generated module (``parameter_name``, ``buffer_name``, ``fqn``,
...) may hold no quote or backslash; no string may hold a control character (a carriage return ends a
comment of the generated code); pytree specs may not name a module to import (``__enum__``,
a ``defaultdict`` factory outside ``builtins``). Every node's target must be a pure tensor op
(:func:`op_refusal`) unless the caller trusts the model.

TorchScript files (any other name) are loaded with ``torch.jit.load``, whose unpickler
builds TorchScript types and tensors only, after :func:`check_torchscript_archive` (bounded
member sizes; no ``__setstate__``, which would run at load time); then every method of every
submodule is checked for ops outside the allowlist (:func:`check_torchscript_ops`).

Every zip member is bounded before it is read: uncompressed size at most
:data:`MAX_RATIO` times its compressed size, and the JSON / text members at most
:data:`MAX_TEXT_BYTES`; past a bound the file is refused with one line, not read.

Checking a model still **runs** it (``dropkit guard``): the ops its graph names execute, so
only pure tensor ops are accepted unless ``trust_model=True`` (``--trust-model``).

Example:
    >>> kind, program = load_program("model.pt2")      # ("pt2", ExportedProgram)
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import zipfile
import zlib
from typing import Any

import torch

__all__ = [
    "MAX_RATIO",
    "MAX_TEXT_BYTES",
    "UnsafeArchiveError",
    "check_graph_json",
    "check_pt2",
    "check_torchscript_archive",
    "check_torchscript_ops",
    "load_exported_program",
    "load_program",
    "load_torchscript",
    "op_refusal",
]

#: Largest uncompressed size of a JSON or text member of a model archive (graphs, configs, code).
MAX_TEXT_BYTES = 64 << 20
#: Largest ratio of a member's uncompressed to compressed size (a zip bomb unpacks far beyond it).
MAX_RATIO = 200
#: How ``--trust-model`` is spelled in the refusals (the CLI flag that lifts the op allowlist).
TRUST_FLAG = "--trust-model"

_BOOKKEEPING = {"archive_format", "archive_version", "byteorder", "version"}
_RAW = {"data/weights/": re.compile(r"weight_\d+"), "data/constants/": re.compile(r"tensor_\d+")}
_CONFIG = re.compile(r"data/(weights|constants)/(?P<model>[^/]+)_(weights|constants)_config\.json")
_MODEL = re.compile(r"models/[^/]+\.json")
_SAMPLE = re.compile(r"data/sample_inputs/[^/]+\.pt")


class UnsafeArchiveError(ValueError):
    """A model file holds an entry that loading it would unpickle (or compiled code): refused."""

    user_facing = True  # the CLI prints it as one line, not as a bug's traceback


def _refuse(path: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{path}: refused: {why}")


def _bounded_infos(path: str, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's file entries after the size checks: no member unpacks to more than :data:`MAX_RATIO`
    times its stored size (a stored member: exactly its size), whatever its header claims."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    for info in infos:
        stored = max(info.compress_size, 1)
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _refuse(
                path,
                f"{info.filename} claims {info.file_size} bytes but stores {info.compress_size}: a damaged "
                "archive or a zip bomb; it is not read",
            )
        if info.file_size > MAX_RATIO * stored:
            raise _refuse(
                path,
                f"{info.filename} unpacks to {info.file_size} bytes from {info.compress_size} (ratio "
                f"{info.file_size // stored}:1, more than the {MAX_RATIO}:1 a model file may have): a damaged "
                "archive or a zip bomb; it is not read",
            )
    return infos


def _read_text_member(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A JSON / text member, read only up to :data:`MAX_TEXT_BYTES` (the header's size is not trusted:
    zipfile stops at it, and data that does not match its CRC is a refusal naming the member)."""
    if info.file_size > MAX_TEXT_BYTES:
        raise _refuse(
            path,
            f"{info.filename} unpacks to {info.file_size} bytes, more than the {MAX_TEXT_BYTES} bytes a "
            "graph, config or code file of a model may have; it is not read",
        )
    try:
        with zf.open(info) as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _refuse(path, f"{info.filename} is damaged ({exc}); it is not used") from None
    if len(data) > MAX_TEXT_BYTES:
        raise _refuse(path, f"{info.filename} unpacks to more than {MAX_TEXT_BYTES} bytes; it is not read")
    return data


def _entries(path: str, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Entries by their name inside the archive's one root folder (after the size bounds)."""
    infos = _bounded_infos(path, zf)
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1 or any("/" not in i.filename for i in infos):
        raise _refuse(path, "not a torch.export archive (expected one root folder holding every entry)")
    return {i.filename.split("/", 1)[1]: i for i in infos}


def _check_config(path: str, name: str, data: bytes) -> set[str]:
    """The raw payload files a weights / constants config names; refuses any pickled entry."""
    try:
        config = json.loads(data)["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _refuse(path, f"{name} is not a payload config (JSON with a 'config' table)") from None
    prefix = name.rsplit("/", 1)[0] + "/"
    raw = set()
    for fqn, meta in items:
        if not _FQN.fullmatch(fqn):
            raise _refuse(path, f"{name}: {fqn[:80]!r} holds a quote or backslash; it would be written into code")
        file = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(file, str) or not _RAW[prefix].fullmatch(file):
            raise _refuse(
                path, f"{prefix}{file} ({fqn!r}) is a pickled object, not a raw tensor; loading it would run pickle"
            )
        if meta.get("use_pickle", True) is not False:
            raise _refuse(
                path,
                f"{prefix}{file} ({fqn!r}) is a pickled tensor; loading it would run torch.load(weights_only=False)",
            )
        raw.add(prefix + file)
    return raw


# ---------------------------------------------------------------------------
# The graph JSON: the strings torch's loader evaluates or turns into code
# ---------------------------------------------------------------------------
#: Functions a symbolic expression may call: sympy's printed forms (``srepr`` and ``str``) and the
#: size functions torch's deserializer passes to ``sympify`` (``torch.utils._sympy.functions``).
_SYMPY_FUNCTIONS = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Max Min Abs Mod floor ceiling sqrt "
    "Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan "
    "And Or Not Piecewise ExprCondPair "
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift "
    "PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat "
    "TruncToInt RoundToInt RoundDecimal ToFloat Identity".split()
)
#: Bare names an expression may hold besides symbols.
_SYMPY_CONSTANTS = frozenset("True False true false oo zoo nan int_oo S Zero One NegativeOne Half".split())
#: Keyword arguments of ``Symbol(...)`` (sympy assumptions).
_SYMPY_ASSUMPTIONS = frozenset(
    "positive negative nonnegative nonpositive integer real finite infinite zero nonzero even odd "
    "rational prime composite extended_real commutative".split()
)
_SYMBOL = re.compile(r"[a-z]{1,8}\d{1,9}")  # torch's symbols: s0, u3, zuf1, ...
_TOKEN = re.compile(
    r" +|(?P<num>\d{1,40}(?:\.\d{0,40})?(?:[eE][+-]?\d{1,4})?)|(?P<name>[A-Za-z_][A-Za-z0-9_]{0,63})"
    r"|(?P<str>'[A-Za-z_][A-Za-z0-9_]{0,63}')|(?P<op>\*\*|//|<=|>=|==|!=|[-+*/%(),<>&|~=])"
)
_MAX_EXPR = 4096
#: Names that become attribute paths of the generated module (``getattr(self, "<part>")`` in its code).
_FQN = re.compile(r"[^\"'\\`]*")  # no quote or backslash: it could close the string literal it is put in
_FQN_KEYS = frozenset(
    {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn", "name", "as_name"}
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")


def check_sym_expr(expr: str) -> str | None:
    """Why the symbolic expression ``expr`` is refused (``None``: it only holds integers, floats, symbol
    names, the functions of :data:`_SYMPY_FUNCTIONS`, ``Symbol('s0', integer=True)`` forms and arithmetic).

    No attribute access, subscript, string other than a symbol's name or name outside the lists can pass,
    so ``sympy.sympify`` of an accepted expression evaluates nothing but sympy constructors.

    Example:
        >>> check_sym_expr("Symbol('s77', positive=True, integer=True)") is None
        True
        >>> check_sym_expr("__import__('os').system('id')")
        "name '__import__' is not a symbol or an allowed function"
    """
    if len(expr) > _MAX_EXPR:
        return f"longer than {_MAX_EXPR} characters"
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            return f"character {expr[pos]!r} at {pos} is not allowed"
        pos = m.end()
        if m.lastgroup:
            tokens.append((m.lastgroup, m.group()))
    why = _check_powers([t for _, t in tokens])
    if why is not None:
        return why
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        before = tokens[i - 1][1] if i else ""
        if kind == "name":
            if after == "(":
                if text not in _SYMPY_FUNCTIONS:
                    return f"function {text!r} is not allowed"
            elif after == "=":
                if text not in _SYMPY_ASSUMPTIONS or before not in ("(", ","):
                    return f"keyword {text!r} is not a sympy assumption"
            elif text not in _SYMPY_CONSTANTS and not _SYMBOL.fullmatch(text):
                return f"name {text!r} is not a symbol or an allowed function"
        elif kind == "str":
            if i < 2 or tokens[i - 2][1] not in ("Symbol",) or before != "(":
                return f"string {text} is allowed only as the name in Symbol('...')"
        elif text == "=" and (i == 0 or tokens[i - 1][1] not in _SYMPY_ASSUMPTIONS):
            return "'=' is allowed only in a Symbol assumption"
        elif text == "(":
            depth += 1
            if depth > 64:
                return "nested deeper than 64 parentheses"
        elif text == ")":
            depth -= 1
            if depth < 0:
                return "unbalanced parentheses"
    return None


_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})
_SMALL_EXPONENT = re.compile(r"\d{1,2}(?:\.\d*)?")


def _small_exponent(tokens: list[str]) -> bool:
    """Whether ``tokens`` is a literal exponent below 100 (``7``, ``-2``, ``Integer(3)``, ``Rational(1, 2)``)."""
    if tokens[:1] == ["-"]:
        tokens = tokens[1:]
    if len(tokens) == 1:
        return bool(_SMALL_EXPONENT.fullmatch(tokens[0]))
    if len(tokens) >= 4 and tokens[0] in ("Integer", "Rational", "Float") and tokens[1] == "(" and tokens[-1] == ")":
        return all(_SMALL_EXPONENT.fullmatch(t) for t in tokens[2:-1] if t not in (",", "-"))
    return False


def _check_powers(tokens: list[str]) -> str | None:
    """A power's exponent must be a small literal: ``Pow(9, Pow(9, 9))`` would make sympy compute a number of
    hundreds of millions of digits while the file is loaded. At most two powers per expression (with a base of
    up to 40 digits that bounds any value below 10**400000)."""
    if sum(t == "**" or t in _POWERS for t in tokens) > 2:
        return "more than two powers"
    for i, text in enumerate(tokens):
        if text == "**":
            j = i + 1
            if j < len(tokens) and tokens[j] == "(":  # s0**(2): the parenthesised exponent
                end = _closing(tokens, j)
                exponent = tokens[j + 1 : end]
            else:
                exponent = tokens[j : j + 1] if j < len(tokens) and tokens[j] != "-" else tokens[j : j + 2]
            after = j + len(exponent) + (2 if exponent and tokens[j] == "(" else 0)
            if not exponent or not _small_exponent(exponent) or tokens[after : after + 1] == ["**"]:
                return "an exponent that is not a literal below 100 (a ** b ** c is a ** (b ** c))"
        elif text in _POWERS and i + 1 < len(tokens) and tokens[i + 1] == "(":
            end = _closing(tokens, i + 1)
            depth, comma = 0, None
            for k in range(i + 2, end):
                depth += tokens[k] == "("
                depth -= tokens[k] == ")"
                if tokens[k] == "," and depth == 0:
                    comma = k
                    break
            if comma is None or not _small_exponent(tokens[comma + 1 : end]):
                return f"{text}(...) with an exponent that is not a literal below 100"
    return None


def _closing(tokens: list[str], open_at: int) -> int:
    """Index of the ``)`` that closes the ``(`` at ``open_at`` (``len(tokens)`` when unbalanced)."""
    depth = 0
    for k in range(open_at, len(tokens)):
        depth += tokens[k] == "("
        depth -= tokens[k] == ")"
        if depth == 0:
            return k
    return len(tokens)


def _walk_json(obj: Any, where: str):
    """``(key path, key, value)`` of every string in a JSON value (dict keys included, with key ``None``)."""
    stack = [(obj, where, "")]
    while stack:
        o, at, key = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                yield at, None, k
                stack.append((v, f"{at}.{k}", k))
        elif isinstance(o, list):
            stack.extend((v, f"{at}[{i}]", key) for i, v in enumerate(o))
        elif isinstance(o, str):
            yield at, key, o


def _check_treespec(text: str) -> str | None:
    """Why a serialized pytree spec is refused: it names a module that torch's loader would import."""
    try:
        spec = json.loads(text)
    except ValueError:
        return None  # not JSON: torch fails on it without importing anything
    nested = [spec]
    while nested:
        for _, key, value in _walk_json(nested.pop(), ""):
            if key is None and value == "__enum__":
                return "an enum entry (torch would import the module its 'fqn' names)"
            if key == "default_factory_module" and value not in ("builtins", "collections"):
                return f"a defaultdict factory from module {value!r} (torch would import it)"
            if value[:1] in "[{":
                try:
                    nested.append(json.loads(value))
                except ValueError:
                    pass
    return None


def op_refusal(target: str) -> str | None:
    """Why the graph op ``target`` is outside the allowlist of pure tensor ops (``None``: allowed).

    ``target`` is a TorchScript kind (``aten::linear``) or an exported program's node target
    (``torch.ops.aten.linear.default``, ``_operator.getitem``). Allowed: the ``aten``, ``prims`` and
    ``dropkit`` ops except those that open a file (an argument named ``filename``: ``aten::from_file``,
    ``aten::save``), TorchScript's constant / control-flow / container ``prim::`` ops, Python's ``operator``
    and ``math`` functions on sizes, ``torch.sym_*`` and the control-flow higher-order ops.
    Refused: every other namespace (custom ops of loaded libraries, ``c10d``, RPC, ``prim::fork``, ...).
    """
    if target.startswith("torch.ops."):
        parts = target.split(".")
        if len(parts) < 4:
            return "not an operator"
        ns, op = parts[2], parts[3]
        if ns == "higher_order":
            return None if op in _HIGHER_ORDER else f"higher-order op {op!r} is not in the allowlist"
        target = f"{ns}::{op}"
    elif target.startswith("_operator."):
        return None if target[len("_operator.") :] in _OPERATOR else "Python operator outside the allowlist"
    elif target.startswith("math."):
        return None if target[len("math.") :] in _MATH else "math function outside the allowlist"
    elif target.startswith("torch."):
        return None if target[len("torch.") :] in _TORCH_SYM else "torch function outside the allowlist"
    ns, sep, op = target.partition("::")
    if not sep:
        return "not an operator of a known namespace"
    if ns == "prim":
        return None if op in _PRIM else f"TorchScript op prim::{op} is not in the allowlist"
    if ns not in ("aten", "prims", "dropkit"):
        return f"namespace {ns!r} is not in the allowlist (aten, prims, dropkit)"
    if ns == "aten" and op in _file_ops():
        return "it opens a file"
    return None


_HIGHER_ORDER = frozenset(
    {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"}
)
_OPERATOR = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert "
    "lshift rshift".split()
)
_MATH = frozenset("ceil floor trunc sqrt exp log isnan isinf".split())
_TORCH_SYM = frozenset("sym_float sym_int sym_max sym_min sym_not sym_sqrt sym_ite _sym_sqrt sym_sum".split())
_PRIM = frozenset(
    "Constant GetAttr SetAttr CallMethod ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex "
    "DictConstruct If Loop NumToTensor device dtype layout shape data requires_grad is_cuda is_cpu "
    "RaiseException Uninitialized unchecked_cast isinstance min max abs Print dtype name "
    "ConstantChunk AutogradZero BroadcastSizes ListIndex TupleSlice".split()
)


@functools.lru_cache(maxsize=1)
def _file_ops() -> frozenset[str]:
    """aten ops with an argument named ``filename`` (they open files: ``from_file``, ``save``)."""
    return frozenset(
        s.name.split("::", 1)[1]
        for s in torch._C._jit_get_all_schemas()  # no public API lists the registered op schemas
        if s.name.startswith("aten::") and any(a.name == "filename" for a in s.arguments)
    )


def _untrusted(path: str, what: str, why: str) -> UnsafeArchiveError:
    return _refuse(
        path,
        f"{what}: {why}. Checking a model runs it, so only pure tensor ops are accepted; "
        f"pass {TRUST_FLAG} to run this model anyway (only if you trust who made it)",
    )


def check_graph_json(path: str, name: str, data: bytes, *, trust_model: bool = False) -> None:
    """Refuse the exported graph ``name`` (``models/<name>.json`` of the archive at ``path``) unless every
    string torch's loader evaluates or turns into code passes the checks of the module docstring, and every
    node target is allowed by :func:`op_refusal` (skipped with ``trust_model``)."""
    try:
        graph = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(path, f"{name} is not valid JSON ({exc})") from None
    for at, key, value in _walk_json(graph, name):
        field = f"{at} ({key or 'key'})"
        if _CONTROL.search(value):
            raise _refuse(path, f"{field} holds a control character; loading it could inject code")
        if key == "expr_str":
            why = check_sym_expr(value)
            if why is not None:
                raise _refuse(
                    path,
                    f"{field} = {value[:80]!r} is not a plain symbolic expression ({why}); "
                    "torch would evaluate it with sympy.sympify, which runs Python",
                )
        elif key in _FQN_KEYS and not _FQN.fullmatch(value):
            raise _refuse(
                path,
                f"{field} = {value[:80]!r} holds a quote or backslash; "
                "it would be written into the generated module's code",
            )
        elif key in ("in_spec", "out_spec"):
            why = _check_treespec(value)
            if why is not None:
                raise _refuse(path, f"{field} holds {why}")
        elif key == "target" and not trust_model:
            why = op_refusal(value)
            if why is not None:
                raise _untrusted(path, f"{field} calls {value}", why)
    ranges = graph.get("range_constraints") if isinstance(graph, dict) else None
    for sym in ranges if isinstance(ranges, dict) else ():
        if not _SYMBOL.fullmatch(sym):
            raise _refuse(path, f"{name}: range_constraints key {sym[:80]!r} is not a symbol name")


def check_pt2(path: str | os.PathLike, *, trust_model: bool = False) -> None:
    """Raise :class:`UnsafeArchiveError` unless the ``.pt2`` at ``path`` loads without unpickling or
    evaluating anything from the file and its graph calls only allowed ops (see the module docstring);
    ``ValueError`` for a file that is not a zip."""
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a .pt2 exported program (not a zip archive: {exc})") from None
    with zf:
        entries = _entries(path, zf)
        raw: set[str] = set()
        for name in sorted(entries):
            if _CONFIG.fullmatch(name):
                raw |= _check_config(path, name, _read_text_member(path, zf, entries[name]))
            elif _MODEL.fullmatch(name):
                check_graph_json(path, name, _read_text_member(path, zf, entries[name]), trust_model=trust_model)
            elif name in _BOOKKEEPING or name.startswith((".data/", "extra/")):
                _read_text_member(path, zf, entries[name])  # torch reads these whole: bounded here first
        for name in sorted(entries):
            if (
                name in _BOOKKEEPING
                or name.startswith((".data/", "extra/"))
                or _MODEL.fullmatch(name)
                or _CONFIG.fullmatch(name)
                or name in raw
            ):
                continue
            if _SAMPLE.fullmatch(name):
                try:
                    data = _read_text_member(path, zf, entries[name])
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                except UnsafeArchiveError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure means torch would unpickle fully
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise _refuse(path, f"{name} needs full unpickling (a weights-only load fails: {first})") from None
                continue
            why = (
                "compiled AOTInductor code"
                if name.startswith("data/aotinductor/")
                else "a pickled object"
                if "_obj_" in name or name.endswith((".pt", ".pkl"))
                else "an entry with no use_pickle=false config"
                if name.startswith(tuple(_RAW))
                else "not a data entry of a torch.export archive"
            )
            raise _refuse(path, f"{name} is {why}; loading it could run code")


def load_exported_program(path: str | os.PathLike, *, trust_model: bool = False) -> Any:
    """``torch.export.load(path)`` after :func:`check_pt2` (nothing in the archive is unpickled or evaluated)."""
    check_pt2(path, trust_model=trust_model)
    try:
        return torch.export.load(os.fspath(path))
    except (RuntimeError, AssertionError, KeyError, ValueError) as exc:  # a damaged archive: torch's message
        raise ValueError(
            f"{os.fspath(path)}: cannot load the exported program ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from exc


_SETSTATE = re.compile(rb"^\s*def __setstate__\(", re.M)


def check_torchscript_archive(path: str | os.PathLike, *, trust_model: bool = False) -> None:
    """Before ``torch.jit.load``: the zip's members are within the size bounds, and (unless
    ``trust_model``) no class of its code defines ``__setstate__``, which TorchScript runs while loading."""
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(
            f"{path}: not a TorchScript file or .pt2 exported program (not a zip archive: {exc})"
        ) from None
    with zf:
        for info in _bounded_infos(path, zf):
            if "/code/" in info.filename and info.filename.endswith(".py"):
                code = _read_text_member(path, zf, info)
                if not trust_model and _SETSTATE.search(code):
                    raise _untrusted(
                        path, f"{info.filename} defines __setstate__", "TorchScript runs it while loading the file"
                    )


def _graph_kinds(block, out: set[str], receivers: set[str]) -> None:
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::CallMethod":
            receivers.add(next(iter(node.inputs())).type().str())
        out.add(kind)
        for sub in node.blocks():
            _graph_kinds(sub, out, receivers)


def check_torchscript_ops(module: Any, path: str | os.PathLike = "<module>") -> None:
    """Refuse a loaded TorchScript module one of whose methods (of any submodule, with the functions and
    methods it calls inlined) calls an op outside :func:`op_refusal`'s allowlist, or calls a method of an
    object that is not one of its modules (a custom class of a loaded library)."""
    path = os.fspath(path)
    modules = {name or "<root>": m for name, m in module.named_modules()}
    own = {m._c._type().qualified_name() for m in modules.values()}
    for name, m in reversed(modules.items()):  # the innermost module that calls it is named
        for method in m._c._method_names():
            kinds: set[str] = set()
            receivers: set[str] = set()
            _graph_kinds(m._c._get_method(method).inlined_graph, kinds, receivers)
            for kind in sorted(kinds):
                why = op_refusal(kind)
                if why is not None:
                    raise _untrusted(path, f"{name}.{method} calls {kind}", why)
            for receiver in sorted(receivers - own):
                raise _untrusted(
                    path, f"{name}.{method} calls a method of {receiver}", "it is not a module of this model"
                )


def load_torchscript(path: str | os.PathLike, *, trust_model: bool = False) -> Any:
    """``torch.jit.load(path, map_location="cpu")`` after :func:`check_torchscript_archive`, then
    :func:`check_torchscript_ops` unless ``trust_model``; a file it cannot read is a ``ValueError`` naming it."""
    path = os.fspath(path)
    check_torchscript_archive(path, trust_model=trust_model)
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: not a TorchScript file or .pt2 exported program ({str(exc).splitlines()[0]})"
        ) from None
    if not trust_model:
        check_torchscript_ops(module, path)
    return module


def load_program(path: str | os.PathLike, *, trust_model: bool = False) -> tuple[str, Any]:
    """``("pt2", ExportedProgram)`` for a ``.pt2`` file, else ``("torchscript", ScriptModule)``; never unpickles.

    ``trust_model=True`` lifts the op allowlist (the file is still never unpickled or evaluated).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path!r}")
    if path.endswith(".pt2"):
        return "pt2", load_exported_program(path, trust_model=trust_model)
    return "torchscript", load_torchscript(path, trust_model=trust_model)
