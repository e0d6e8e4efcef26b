"""``dropkit lint TARGET``: check a model for dropout pitfalls (codes DK101-DK109).

``TARGET`` names a factory as the lab's ``--model`` does: ``package.module:factory`` (the current
folder importable, as with ``python -m``) or ``./file.py:factory``. The factory returns a
``torch.nn.Module`` or a pair ``(model, example_inputs)``. It is called with no arguments, or, a
lab model factory, with those of ``in_shape`` (per-sample input shape) and ``num_classes`` that
it names: from ``--dataset`` (its shapes and classes; two training inputs are the example) or
from ``--shape`` (the first shape without its batch dimension, and ``--num-classes``).
``--shape`` gives example inputs (standard normal) in every case. Text or JSON output; exit
status 1 when any finding is an error, else 0.

This imports the module (or runs the file) and calls the factory, so it runs that code: use it
on code you would run anyway.
"""

from __future__ import annotations

import argparse
import json

import torch

from dropkit.cli._errors import UsageError, user_input

#: What a lab model factory may name (dropkit.lab.user.build_user_model passes the same).
LAB_ARGUMENTS = ("in_shape", "num_classes")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lint",
        help="check a model for dropout pitfalls (DK101-DK109)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="package.module:factory or ./file.py:factory, returning the model (or (model, example_inputs))",
    )
    p.add_argument(
        "--shape",
        action="append",
        default=None,
        help="shape of one positional example input with its batch dimension, e.g. 2,784 (repeat for several)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="a lab dataset (digits, ..., FILE.npz, MODULE:FACTORY): in_shape and num_classes for a lab "
        "model factory, two training inputs as the example",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="num_classes for a lab model factory with --shape (default: 10)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--ignore", default="", help="comma-separated codes to leave out, e.g. DK109")
    p.set_defaults(func=run)


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple | None]:
    """The model of ``args.target`` and its example inputs, as ``dropkit lint`` checks them."""
    from dropkit.cli.guard import _parse_shape
    from dropkit.lab.user import call_with_known, load_callable, named_arguments

    with user_input():
        factory = load_callable(args.target, "TARGET")
        shapes = [_parse_shape(s) for s in args.shape or ()]
        if args.dataset is not None and shapes:
            raise UsageError(
                f"Invalid value for `--dataset`/`--shape`: pass one of them. Received: --dataset {args.dataset} "
                + " ".join(f"--shape {s}" for s in args.shape)
            )
        if args.num_classes is not None:
            if args.dataset is not None:
                raise UsageError(
                    f"Invalid value for `--num-classes`: --dataset {args.dataset} sets it. "
                    f"Received: --num-classes {args.num_classes}"
                )
            from dropkit._validation import check_int

            check_int(args.num_classes, "--num-classes", minimum=1)
        wanted = named_arguments(factory, LAB_ARGUMENTS)
        available: dict = {}
        inputs: tuple | None = None
        if args.dataset is not None:
            from dropkit.lab.datasets import load_data

            data = load_data(args.dataset)
            available = {"in_shape": tuple(data.in_shape), "num_classes": data.num_classes}
            inputs = (data.x_train[:2],)
        elif wanted:
            if not shapes:
                raise UsageError(
                    f"Invalid value for `TARGET`: {args.target} is a lab model factory (it takes "
                    f"{', '.join(sorted(wanted))}); pass --dataset NAME (e.g. --dataset digits) or --shape with "
                    "the batch dimension (e.g. --shape 2,1,8,8)"
                )
            if len(shapes[0]) < 2:
                raise UsageError(
                    f"Invalid value for `--shape`: a lab model factory gets the shape of one sample, so the first "
                    f"--shape needs a batch dimension and at least one more, e.g. 2,784. Received: --shape {args.shape[0]}"
                )
            num_classes = 10 if args.num_classes is None else args.num_classes
            available = {"in_shape": tuple(shapes[0][1:]), "num_classes": num_classes}
        made = call_with_known(factory, args.target, **available)
        model, example = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
        if not isinstance(model, torch.nn.Module):
            raise UsageError(
                f"Invalid value for `TARGET`: {args.target} must return a torch.nn.Module or (model, example_inputs). "
                f"Received: {type(made).__name__}"
            )
    if shapes:
        gen = torch.Generator().manual_seed(0)
        inputs = tuple(torch.randn(s, generator=gen) for s in shapes)
    elif inputs is None and example is not None:
        inputs = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    return model, inputs


def run(args: argparse.Namespace) -> int:
    from dropkit.lab.user import UserCodeError
    from dropkit.lint import lint

    model, inputs = build(args)
    ignore = {c.strip().upper() for c in args.ignore.split(",") if c.strip()}
    try:
        findings = [f for f in lint(model, inputs) if f.code not in ignore]
    except Exception as exc:  # the user's model's forward on the example inputs
        if inputs is None or getattr(exc, "user_facing", False):
            raise
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, torch.Tensor))
        raise UserCodeError(
            f"{args.target}: the model's forward on the example inputs ({shapes}) raised {type(exc).__name__}: "
            f"{exc}; check --shape / --dataset"
        ) from exc
    if args.format == "json":
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
        counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
        print(f"{args.target}: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info")
    return 1 if any(f.severity == "error" for f in findings) else 0
