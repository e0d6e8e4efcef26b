"""The ``dropkit`` command line: one module per subcommand, each with ``register(subparsers)``.

``dropkit`` with no subcommand runs ``dropkit demo``. Bad input ends with one line and exit
status 2 (see :mod:`dropkit.cli._errors`); a bug keeps its traceback; Ctrl-C ends with one
line saying how to resume (exit status 130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Sequence

#: Subcommand modules under dropkit.cli, in the order ``--help`` lists them.
SUBCOMMANDS = ["demo", "guard", "mc", "lint", "masks", "compare", "sweep", "tune", "report"]

#: Commands that train or sample for seconds to hours: they run with OpenMP's passive wait policy.
COMPUTE_COMMANDS = frozenset({"compare", "sweep", "tune", "mc"})


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped paragraph by paragraph (bullet lists and indented lines kept as lines);
    ``(default: X)`` added once, only where there is a default to show, with lists shown as
    typed (``0 0.1 0.5``, not ``['0', '0.1', '0.5']``)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        out = []
        for para in re.split(r"\n\s*\n", text.strip("\n")):
            lines = para.splitlines()
            if any(ln.lstrip().startswith(("* ", "- ")) or ln.startswith("    ") for ln in lines):
                items: list[str] = []
                for ln in lines:  # a bullet starts an item; its continuation lines join it
                    if ln.lstrip().startswith(("* ", "- ")) or not items:
                        items.append(ln.rstrip())
                    else:
                        items[-1] += " " + ln.strip()
                for item in items:
                    lead = len(item) - len(item.lstrip())
                    sub = " " * (lead + 2) if item.lstrip().startswith(("* ", "- ")) else " " * lead
                    out.append(
                        textwrap.fill(
                            item.strip(), width, initial_indent=indent + " " * lead, subsequent_indent=indent + sub
                        )
                    )
            else:
                out.append(
                    textwrap.fill(
                        " ".join(ln.strip() for ln in lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
            out.append("")
        return "\n".join(out).rstrip("\n")

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            return help_text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(d) for d in default)
        return f"{help_text} (default: {str(default).replace('%', '%%')})"


_ROLE = re.compile(r":(?:func|mod|class|meth|data|attr|exc|obj):`~?([^`]+)`")


def plain(text: str | None) -> str | None:
    """Docstring markup as plain text: ``:mod:`x``` -> x, ````x```` -> x, ``**x**`` -> x."""
    if not text:
        return text
    text = _ROLE.sub(r"\1", text)
    return text.replace("``", "").replace("**", "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropkit",
        description="dropkit: dropout regularization for PyTorch. p is always the probability of DROPPING a unit.",
        formatter_class=HelpFormatter,
    )
    from dropkit import __version__

    parser.add_argument("--version", action="version", version=f"dropkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dropkit.cli.{name}").register(sub)
    for sp in sub.choices.values():  # one look for every subcommand's --help
        sp.formatter_class = HelpFormatter
        sp.description = plain(
            sp.description or next((a.help for a in sub._choices_actions if a.dest == sp.prog.split()[-1]), None)
        )
        for action in sp._actions:
            action.help = plain(action.help)
    return parser


def _rerun_with_passive_openmp(command: str | None) -> None:
    """Run a compute command again in this process (``os.execv``, same pid) with ``OMP_WAIT_POLICY=PASSIVE``.

    libgomp reads the variable once, when ``import dropkit`` loads torch, which is before this code
    can run; without it torch's threads spin at every barrier and, when another process holds a
    core, a training run slows down 10-20x (see :mod:`dropkit.lab.cores`). A user's own
    ``OMP_WAIT_POLICY`` is kept, and nothing is re-run when torch's parallel backend is not OpenMP.
    """
    from dropkit.lab.cores import WAIT_POLICY

    if command not in COMPUTE_COMMANDS or WAIT_POLICY in os.environ:
        return
    os.environ[WAIT_POLICY] = "PASSIVE"
    torch = sys.modules.get("torch")
    if torch is None or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return  # read when torch is loaded, or not read at all
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dropkit`` command; ``argv`` (default ``sys.argv[1:]``, where a compute command may re-run
    itself with ``OMP_WAIT_POLICY=PASSIVE``, see :func:`_rerun_with_passive_openmp`)."""
    from dropkit._secrets import mask_credentials
    from dropkit.cli._errors import is_user_error

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv) or ["demo"])
    if argv is None:
        _rerun_with_passive_openmp(args.command)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print(
            f"\ndropkit {args.command}: interrupted; finished work is kept: run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into bad input and bugs below
        if is_user_error(exc):
            parser.exit(2, mask_credentials(f"dropkit {args.command}: error: {exc}\n"))
        print(mask_credentials("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
        print(
            f"\ndropkit {args.command}: internal error ({type(exc).__name__}). If it does not come from your own "
            "model or data code, please report it with the command and the traceback above.",
            file=sys.stderr,
        )
        return 1
