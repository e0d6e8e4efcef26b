"""Flags shared by ``dropkit compare`` and ``dropkit sweep``, and the code that runs them.

Flag names mirror the library: ``--p`` and ``--input-p`` are drop probabilities as in
``dropkit.nn.Dropout(p)``; ``--variant`` is a ``dropkit.nn`` class name.
"""

from __future__ import annotations

import argparse
import sys
import time

# Kept in sync with dropkit.lab.datasets.DATASETS / dropkit.lab.models (not imported here so
# that `dropkit --help` stays fast); test_lab_cli checks they match.
DATASETS = ("digits", "overfit", "mnist1d", "fashion-mnist", "mnist")
MODELS = ("mlp", "overfit-mlp", "cnn", "lstm")
VARIANTS = ("Dropout", "GaussianDropout", "AlphaDropout", "Dropout2d", "DropBlock2d", "LockedDropout")


def add_common(parser: argparse.ArgumentParser, command: str) -> None:
    g = parser.add_argument_group("data and model")
    g.add_argument("--dataset", default="digits", choices=DATASETS, help="dataset")
    g.add_argument("--model", default="mlp", choices=MODELS, help="model (see docs/lab.md)")
    g.add_argument("--variant", default=None, choices=VARIANTS,
                   help="dropkit.nn dropout class to use where it fits (default: the model's own: "
                        "Dropout for mlp, Dropout2d+Dropout for cnn, LockedDropout for lstm)")
    g.add_argument("--input-p", type=str, default="0", help="dropout rate on the inputs (mlp, overfit-mlp, lstm)")
    g.add_argument("--train-size", type=int, default=None, help="use a random subset of this many training samples")
    g.add_argument("--val-size", type=int, default=None, help="use a random subset of this many validation samples")
    g.add_argument("--val-fraction", type=float, default=0.2, help="validation share (digits; others have fixed splits)")
    g.add_argument("--data-dir", default=None, help="folder with the IDX files (.gz or raw) of mnist / fashion-mnist")
    g.add_argument("--cache-dir", default=None, help="download folder (default: ~/.cache/dropkit/datasets/<dataset>)")
    g.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=30, help="epochs of the runs without dropout")
    t.add_argument("--epochs-factor", type=float, default=1.0,
                   help="the dropout runs train for round(epochs * factor) epochs (dropout often needs 1.5-2x)")
    t.add_argument("--seeds", type=int, default=3, help="seeds per setting (0 .. seeds-1): mean ± std in the table")
    t.add_argument("--batch-size", type=int, default=64, help="global batch size")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to train on")
    t.add_argument("--schedule", default=None, metavar="SPEC",
                   help="schedule the dropout runs' rates, stepped once per optimiser step (dropkit.schedules."
                        "from_spec): early:linear:K | early:constant:K | late:S | linear:K[:START:END] | "
                        "cosine:K[:START:END] | dropblock:K")
    t.add_argument("--jobs", type=int, default=1, help="run this many (setting, seed) runs in parallel processes")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, help=f"run folder (default: runs/{command}-<dataset>-<model>)")
    o.add_argument("--quiet", action="store_true", help="no progress bar (also off when stderr is not a terminal)")


def parse_rates(text: str, flag: str) -> list[float]:
    """``"0.5"`` or ``"0.2,0.5"`` -> a list of drop rates, each checked to be in [0, 1]."""
    from dropkit._validation import check_p

    rates = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"Invalid value for `{flag}`: expected numbers in [0, 1] separated by commas. "
                             f"Received: {flag}={text}") from None
        rates.append(check_p(value, flag))
    return rates


def _check_positive(args: argparse.Namespace) -> None:
    from dropkit._validation import check_int

    for name in ("epochs", "seeds", "batch_size", "jobs"):
        check_int(getattr(args, name), "--" + name.replace("_", "-"), minimum=1)
    for name in ("train_size", "val_size"):
        if getattr(args, name) is not None:
            check_int(getattr(args, name), "--" + name.replace("_", "-"), minimum=1)
    if not args.epochs_factor > 0:
        raise ValueError(f"Invalid value for `--epochs-factor`: expected a number > 0. Received: {args.epochs_factor}")
    if not args.lr > 0:
        raise ValueError(f"Invalid value for `--lr`: expected a number > 0. Received: {args.lr}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("Invalid value for `--device`: cuda requested but torch.cuda.is_available() is False")


def base_config(args: argparse.Namespace, command: str) -> dict:
    _check_positive(args)
    input_p = parse_rates(args.input_p, "--input-p")
    if len(input_p) != 1:
        raise ValueError(f"Invalid value for `--input-p`: expected one rate. Received: --input-p={args.input_p}")
    if args.schedule is not None:
        import torch

        from dropkit.schedules import from_spec

        from_spec(args.schedule, [torch.nn.Dropout(0.5)])  # a bad spec fails now, naming the accepted forms
    return {
        "command": command, "dataset": args.dataset, "model": args.model, "variant": args.variant,
        "schedule": args.schedule,
        "p": None, "rates": None, "input_p": input_p[0], "epochs": args.epochs, "epochs_factor": args.epochs_factor,
        "seeds": args.seeds, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "val_fraction": args.val_fraction, "train_size": args.train_size, "val_size": args.val_size,
    }


def full_command(args: argparse.Namespace, config: dict, out: str) -> str:
    """The command with every flag spelled out (what reproduces the run, whatever the defaults become)."""
    import shlex

    rates = config["p"] if config["command"] == "compare" else config["rates"]
    parts = ["dropkit", config["command"], "--dataset", config["dataset"], "--model", config["model"]]
    if config["command"] == "compare":
        parts += ["--p", ",".join(f"{r:g}" for r in rates)]
    else:
        parts += ["--rates", *(f"{r:g}" for r in rates)]
    if config["variant"]:
        parts += ["--variant", config["variant"]]
    if config.get("schedule"):
        parts += ["--schedule", config["schedule"]]
    for key in ("input_p", "epochs", "epochs_factor", "seeds", "batch_size", "lr", "weight_decay", "val_fraction",
                "train_size", "val_size"):
        if config[key] is not None:
            parts += ["--" + key.replace("_", "-"), f"{config[key]:g}" if isinstance(config[key], float) else str(config[key])]
    for key in ("data_dir", "cache_dir"):
        if getattr(args, key):
            parts += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    if args.no_download:
        parts.append("--no-download")
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    return shlex.join(parts + ["--out", out])


def run(args: argparse.Namespace, config: dict) -> int:
    from dropkit.lab.experiment import init_distributed, run_experiment
    from dropkit.lab.models import resolve_rates
    from dropkit.lab.train import dist_info

    for key, flag in (("p", "--p"), ("rates", "--rates")):
        if config[key] is not None and key == "p":
            resolve_rates(config["model"], config["p"], flag)  # one rate or one per site
    device = init_distributed(args.device)
    out = args.out or f"runs/{config['command']}-{config['dataset']}-{config['model']}"
    t0 = time.perf_counter()
    result = run_experiment(
        config, out, device=device, jobs=args.jobs, quiet=args.quiet,
        data_dir=args.data_dir, cache_dir=args.cache_dir, download=not args.no_download,
        command=full_command(args, config, out),
    )
    if dist_info()[0] == 0:
        rates = ",".join(f"{r:g}" for r in (config["p"] or config["rates"]))
        print(f"dropkit {config['command']}: {config['dataset']} / {config['model']}, p={rates}, "
              f"{config['seeds']} seeds (accuracy in %, mean ± std over seeds)\n")
        print(result["table"])
        print(f"\nreport: {out}/report.md (plots in {out}/plots/); {time.perf_counter() - t0:.1f} s")
        sys.stdout.flush()
    return 0
