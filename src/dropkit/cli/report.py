"""``dropkit report DIR``: rebuild the Markdown report and the plots of a lab run folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild report.md and plots/ from a compare/sweep run folder",
        description="Read a run folder written by `dropkit compare` or `dropkit sweep` (config.json, "
        "runs/*/seed-*/metrics.jsonl) and rebuild report.md, summary.json and plots/*.png; print the table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder", metavar="DIR", help="the run folder (--out of compare or sweep)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dropkit.lab.report import write_report

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} does not exist or is not a folder")
    print(write_report(folder))
    print(f"\nreport: {folder}/report.md")
    return 0
