"""``dropkit compare``: the same model trained without and with dropout, over several seeds."""

from __future__ import annotations

import argparse

from dropkit.cli import _lab


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train a model without and with dropout and compare train/validation accuracy (the lab's main command)",
        description="Train the same model without dropout and with dropout (p = probability of DROPPING a unit), "
        "several seeds each; print the table of train and validation accuracy, gap, best epoch and loss "
        "(mean ± std over seeds) and write a run folder with metrics, checkpoints, report.md and plots. "
        "Running the same command again resumes an interrupted run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--p", default="0.5", help="drop rate of the dropout run: one rate, or one per dropout layer (mlp: '0.2,0.5')"
    )
    _lab.add_common(p, "compare")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = _lab.base_config(args, "compare")
    config["p"] = _lab.parse_rates(args.p, "--p")
    return _lab.run(args, config)
