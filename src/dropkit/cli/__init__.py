"""The ``dropkit`` command line: one module per subcommand, each with ``register(subparsers)``.

``dropkit`` with no subcommand runs ``dropkit demo``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Subcommand modules under dropkit.cli, in the order ``--help`` lists them.
SUBCOMMANDS = ["demo", "guard", "mc", "lint", "masks", "compare", "sweep", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropkit",
        description="dropkit: dropout regularization for PyTorch. p is always the probability of DROPPING a unit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from dropkit import __version__

    parser.add_argument("--version", action="version", version=f"dropkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dropkit.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv) or ["demo"])
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:  # bad user input: a clear message, no traceback
        parser.exit(2, f"dropkit {args.command}: error: {exc}\n")
    except BrokenPipeError:  # output piped into `head`
        return 0
