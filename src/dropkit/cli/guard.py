"""``dropkit guard FILE ...``: gate a deployment on deterministic inference of exported models.

Each file is an exported program (``.pt2``, loaded with ``torch.export.load``) or a
TorchScript file (anything else, loaded with ``torch.jit.load``). Nothing is unpickled:
a ``.pt2`` is checked before torch reads it, and an archive with any entry that torch
would unpickle (``opaque_obj_*`` / ``custom_obj_*`` constants, pickled tensors, sample
inputs that need more than a weights-only load, the legacy format) or compiled code is
refused with a one-line reason (see :mod:`dropkit._loading`); TorchScript's own
unpickler only builds TorchScript types. Nothing in a file is evaluated either: a ``.pt2``'s
symbolic expressions and names are checked against a strict grammar first, a TorchScript
file whose code defines ``__setstate__`` (run while loading) is refused, and every zip member
is size-bounded before it is read. The model is then run, so its graph may call only pure
tensor ops (``aten`` / ``prims`` / ``dropkit`` ops that open no file, TorchScript's control
flow): a model calling anything else (``torch.from_file``, ops of other libraries, RPC) is
refused unless you pass ``--trust-model``.

Example inputs: a ``.pt2`` file carries its input specs, so the tensors are made from
the saved example inputs or, failing that, from the shapes and dtypes of the graph's
inputs (dynamic dimensions take their hint). A TorchScript file has no input specs:
pass one ``--shape`` per positional input (``--shape 1,784``); ``--shape`` also
overrides a ``.pt2``'s shapes. Values are standard normal (integers: zeros), drawn with
``--seed``.

The command runs each model ``--runs`` times, compares the outputs bit for bit and scans
the graph for random ops; it prints ``bit-identical in N/N runs`` or the culprits and
exits 1 when any file fails (2 on bad input).
"""

from __future__ import annotations

import argparse

import torch

from dropkit._loading import load_program

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "guard",
        help="check that exported models (.pt2 / TorchScript) infer bit-identically",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".pt2 exported program or TorchScript file")
    p.add_argument("--runs", type=int, default=5, help="forwards compared bit for bit (default: 5)")
    p.add_argument(
        "--shape",
        action="append",
        default=None,
        help="shape of one positional input, e.g. 1,3,32,32; repeat for several inputs",
    )
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="dtype of --shape inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the example inputs (default: 0)")
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="run models whose graph calls ops outside the allowlist of pure tensor ops (file, process or "
        "library ops) or whose TorchScript code runs at load time; only for models you trust",
    )
    p.set_defaults(func=run)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise ValueError(
            f"Invalid value for `--shape`: expected comma-separated ints like 1,784. Received: {text!r}"
        ) from None
    if not dims or any(d < 0 for d in dims):
        raise ValueError(f"Invalid value for `--shape`: expected comma-separated ints >= 0. Received: {text!r}")
    return dims


def _make(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    return torch.zeros(shape, dtype=dtype)


def _pt2_inputs(ep) -> tuple:
    """Example inputs of an exported program: the saved ones, else tensors from its input specs."""
    saved = getattr(ep, "example_inputs", None)
    if saved is not None and not saved[1]:
        return tuple(saved[0])
    specs = []
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for name in ep.graph_signature.user_inputs:
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"input {name!r} is not a tensor; pass --shape")
        shape = tuple(
            int(getattr(getattr(d, "node", None), "hint", None) or d) if not isinstance(d, int) else d
            for d in val.shape
        )
        specs.append((shape, val.dtype))
    return tuple(specs)


def check_file(path: str, args: argparse.Namespace) -> tuple[bool, str]:
    from dropkit.guard import Culprit, check_inference, random_ops

    from dropkit.cli._errors import user_input

    with user_input():  # a refused or unreadable file is the user's input, not a bug
        kind, prog = load_program(path, trust_model=args.trust_model)
    gen = torch.Generator().manual_seed(args.seed)
    if args.shape:
        inputs = tuple(_make(_parse_shape(s), _DTYPES[args.dtype], gen) for s in args.shape)
    elif kind == "pt2":
        inputs = tuple(x if isinstance(x, torch.Tensor) else _make(x[0], x[1], gen) for x in _pt2_inputs(prog))
    else:
        raise ValueError(f"{path}: a TorchScript file has no input specs; pass --shape (e.g. --shape 1,784)")
    if kind == "pt2":
        module, ops = prog.module(), random_ops(prog)
    else:
        module = prog
        graph = torch.jit.freeze(prog) if not prog.training else prog  # folds `training` flags
        ops = random_ops(graph)
    report = check_inference(module, inputs, runs=args.runs)
    if ops:  # the graph names the random ops that a Python-level watch cannot see
        report.culprits = [c for c in report.culprits if c.kind != "output-differs"]
        report.culprits += [Culprit("", "graph-op", f"{op} (random op in the graph)") for op in ops]
    ok = report.deterministic
    lines = [f"{path}: {report.summary()}", "  PASS" if ok else "  FAIL"]
    return ok, "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dropkit._validation import check_int

    check_int(args.runs, "runs", minimum=2)
    failed = 0
    for path in args.files:
        ok, text = check_file(path, args)
        print(text)
        failed += not ok
    if len(args.files) > 1:
        print(f"{len(args.files) - failed}/{len(args.files)} files deterministic")
    return 1 if failed else 0
