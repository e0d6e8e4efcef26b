"""``dropkit sweep``: one row per drop rate; flags over- and underfitting, names the best rate."""

from __future__ import annotations

import argparse

from dropkit.cli import _lab


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train the model at several drop rates; flag under/overfitting and name the best rate",
        description="Train the same model at each drop rate (the same rate at every dropout layer), several seeds "
        "each; print one row per rate, flag overfitting (train-validation gap) and underfitting (training "
        "accuracy falling as p grows), and name the best rate by validation accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rates", nargs="+", default=["0", "0.1", "0.3", "0.5", "0.8"], help="drop rates to train")
    _lab.add_common(p, "sweep")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = _lab.base_config(args, "sweep")
    rates = [r for text in args.rates for r in _lab.parse_rates(text, "--rates")]
    if len(set(rates)) != len(rates):
        raise ValueError(f"Invalid value for `--rates`: each rate once. Received: --rates={' '.join(args.rates)}")
    config["rates"] = rates
    return _lab.run(args, config)
