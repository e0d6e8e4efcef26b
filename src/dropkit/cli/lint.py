"""``dropkit lint package.module:factory``: check a model for dropout pitfalls (codes DK101-DK109).

``factory`` is a callable with no arguments returning a ``torch.nn.Module`` or a pair
``(model, example_inputs)``; ``--shape`` gives example inputs (standard normal) instead.
Text or JSON output; exit status 1 when any finding is an error, else 0.

This imports ``package.module`` (with the current folder first on ``sys.path``, as
``python -m`` does) and calls the factory, so it runs that code: use it on code you would
run anyway.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lint",
        help="check a model for dropout pitfalls (DK101-DK109)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="package.module:factory", help="callable returning the model")
    p.add_argument(
        "--shape",
        action="append",
        default=None,
        help="shape of one positional example input, e.g. 2,784 (repeat for several)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--ignore", default="", help="comma-separated codes to leave out, e.g. DK109")
    p.set_defaults(func=run)


def load_factory(target: str):
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected package.module:factory; received {target!r}")
    sys.path.insert(0, "")  # like `python -m`: the current folder is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    finally:
        sys.path.remove("")
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def run(args: argparse.Namespace) -> int:
    from dropkit.cli.guard import _parse_shape
    from dropkit.lint import lint

    made = load_factory(args.target)()
    model, inputs = made if isinstance(made, tuple) else (made, None)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"{args.target} must return a torch.nn.Module or (model, example_inputs); got {type(model).__name__}"
        )
    if args.shape:
        gen = torch.Generator().manual_seed(0)
        inputs = tuple(torch.randn(_parse_shape(s), generator=gen) for s in args.shape)
    ignore = {c.strip().upper() for c in args.ignore.split(",") if c.strip()}
    findings = [f for f in lint(model, inputs) if f.code not in ignore]
    if args.format == "json":
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
        counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
        print(f"{args.target}: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info")
    return 1 if any(f.severity == "error" for f in findings) else 0
