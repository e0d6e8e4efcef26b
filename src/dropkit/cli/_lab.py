"""Flags shared by ``dropkit compare``, ``dropkit sweep`` and ``dropkit tune``, and the code that runs them.

Flag names mirror the library: ``--p`` and ``--input-p`` are drop probabilities as in
``dropkit.nn.Dropout(p)``; ``--variant`` is a ``dropkit.nn`` class name. Every flag is
validated here, before anything is created or written.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time

from dropkit.cli._errors import UsageError, user_input
from dropkit.lab._names import DATASETS, MODELS, VARIANTS

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
TASKS = ("classification", "regression")


def _model_arg(text: str) -> str:
    if text in MODELS or ":" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(MODELS)}); or your own model as MODULE:FACTORY "
        "or FILE.py:FACTORY"
    )


def _dataset_arg(text: str) -> str:
    if text in DATASETS or ":" in text or text.endswith(".npz"):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(DATASETS)}); or your own data as FILE.npz or MODULE:FACTORY"
    )


def add_common(parser: argparse.ArgumentParser, command: str) -> None:
    g = parser.add_argument_group("data and model")
    g.add_argument(
        "--dataset",
        default="digits",
        type=_dataset_arg,
        metavar="NAME|FILE.npz|MODULE:FACTORY",
        help=f"dataset (default: digits): {', '.join(DATASETS)}; a .npz file with x_train, y_train, x_val, y_val; or a "
        "factory returning (train, val) map-style datasets of (input, target)",
    )
    g.add_argument(
        "--model",
        default="mlp",
        type=_model_arg,
        metavar="NAME|MODULE:FACTORY",
        help=f"model (default: mlp): {', '.join(MODELS)} (see docs/lab.md); or a factory returning a torch.nn.Module "
        "(mypkg.nets:make_net or ./nets.py:make_net; it gets in_shape= and num_classes= if it names them)",
    )
    g.add_argument(
        "--task",
        default="classification",
        choices=TASKS,
        help="classification: cross-entropy and accuracy; regression: MSE, loss only (your own data)",
    )
    g.add_argument(
        "--replace",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="your own model: swap torch's dropout modules for dropkit's (dropkit.nn.replace_dropout)",
    )
    g.add_argument(
        "--variant",
        default=None,
        choices=VARIANTS,
        help="dropkit.nn dropout class to use where it fits (default: the model's own: "
        "Dropout for mlp, Dropout2d+Dropout for cnn, LockedDropout for lstm)",
    )
    g.add_argument(
        "--hidden",
        default=None,
        metavar="W1,W2,...",
        help="hidden layer widths of mlp / overfit-mlp, e.g. 1024,1024 (default: 256,256 / 256,256,256)",
    )
    g.add_argument("--input-p", type=str, default="0", help="dropout rate on the inputs (mlp, overfit-mlp, lstm)")
    g.add_argument("--train-size", type=int, default=None, help="use a random subset of this many training samples")
    g.add_argument("--val-size", type=int, default=None, help="use a random subset of this many validation samples")
    g.add_argument(
        "--val-fraction", type=float, default=0.2, help="validation share (digits; others have fixed splits)"
    )
    g.add_argument("--data-dir", default=None, help="folder with the IDX files (.gz or raw) of mnist / fashion-mnist")
    g.add_argument("--cache-dir", default=None, help="download folder (default: ~/.cache/dropkit/datasets/<dataset>)")
    g.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=30, help="epochs of the runs without dropout")
    t.add_argument(
        "--epochs-factor",
        type=float,
        default=1.0,
        help="the dropout runs train for round(epochs * factor) epochs (dropout often needs 1.5-2x)",
    )
    t.add_argument(
        "--seeds",
        type=int,
        default=3 if command != "tune" else 1,
        help="seeds per setting (0 .. seeds-1): mean ± std in the table",
    )
    t.add_argument("--batch-size", type=int, default=64, help="global batch size")
    t.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="optimiser")
    t.add_argument("--lr", type=float, default=1e-3, help="(initial) learning rate")
    t.add_argument(
        "--lr-schedule",
        default="constant",
        choices=LR_SCHEDULES,
        help="learning rate per step: constant, cosine to 0 over the run, or step (x0.1 at 50%% and 75%%)",
    )
    t.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    t.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    t.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (AdamW: decoupled)")
    t.add_argument(
        "--max-norm",
        type=float,
        default=None,
        metavar="C",
        help="after each step, rescale each unit's incoming weight vector to L2 norm <= C "
        "(Srivastava et al. 2014; 3 is typical)",
    )
    t.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="stop a run when validation accuracy (loss: regression) has not improved for PATIENCE "
        "epochs; best.pt keeps the best epoch's model",
    )
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to train on")
    t.add_argument(
        "--schedule",
        default=None,
        metavar="SPEC",
        help="schedule the dropout runs' rates, stepped once per optimiser step (dropkit.schedules."
        "from_spec): early:linear:K | early:constant:K | late:S | linear:K[:START:END] | "
        "cosine:K[:START:END] | dropblock:K",
    )
    if command != "tune":
        t.add_argument("--jobs", type=int, default=1, help="run this many (setting, seed) runs in parallel processes")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, help=f"run folder (default: runs/{command}-<dataset>-<model>)")
    o.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (on a terminal: a progress bar; otherwise one line per finished run)",
    )


def parse_rates(text: str, flag: str) -> list[float]:
    """``"0.5"`` or ``"0.2,0.5"`` -> a list of drop rates, each checked to be in [0, 1]."""
    from dropkit._validation import check_p

    rates = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(
                f"Invalid value for `{flag}`: expected numbers in [0, 1] separated by commas. Received: {flag}={text}"
            ) from None
        rates.append(check_p(value, flag))
    return rates


def _number(args, name: str, *, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    value = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    ok = (
        math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open or high == math.inf else "]")
        raise UsageError(
            f"Invalid value for `{flag}`: expected a finite number in {lo}, {hi}. Received: {flag}={value}"
        )


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric and recipe flag, before anything is created or written."""
    from dropkit._validation import check_int

    for name in ("epochs", "seeds", "batch_size", "jobs", "trials"):
        if hasattr(args, name):
            check_int(getattr(args, name), "--" + name.replace("_", "-"), minimum=1)
    for name in ("train_size", "val_size", "early_stopping"):
        if getattr(args, name) is not None:
            check_int(getattr(args, name), "--" + name.replace("_", "-"), minimum=1)
    _number(args, "epochs_factor", low=0, low_open=True)
    _number(args, "lr", low=0, low_open=True)
    _number(args, "weight_decay", low=0)
    _number(args, "val_fraction", low=0, high=1, low_open=True, high_open=True)
    _number(args, "momentum", low=0, high=1, high_open=True)
    if args.max_norm is not None:
        _number(args, "max_norm", low=0, low_open=True)
    if args.optimizer != "sgd" and (args.momentum or args.nesterov):
        raise UsageError(
            f"Invalid value for `--momentum`/`--nesterov`: they apply to --optimizer sgd only. "
            f"Received: --optimizer {args.optimizer} --momentum {args.momentum:g}"
            + (" --nesterov" if args.nesterov else "")
        )
    if args.nesterov and not args.momentum > 0:
        raise UsageError(
            "Invalid value for `--nesterov`: Nesterov momentum needs --momentum > 0. "
            f"Received: --momentum {args.momentum:g}"
        )
    user_model = ":" in args.model
    if user_model and args.variant is not None:
        raise UsageError(
            f"Invalid value for `--variant`: it applies to the built-in models; for your own model "
            f"use --replace / --no-replace. Received: --model {args.model} --variant {args.variant}"
        )
    if not args.replace and not user_model:
        raise UsageError(
            "Invalid value for `--no-replace`: it applies to your own model (--model MODULE:FACTORY); "
            "the built-in models are built from dropkit's modules"
        )
    if args.task == "regression" and not (":" in args.dataset or args.dataset.endswith(".npz")):
        raise UsageError(
            f"Invalid value for `--task`: the built-in dataset {args.dataset!r} is a classification task; "
            "regression needs your own data (--dataset FILE.npz or MODULE:FACTORY)"
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("Invalid value for `--device`: cuda requested but torch.cuda.is_available() is False")


def parse_hidden(text: str | None, model: str) -> list[int] | None:
    if text is None:
        return None
    if model not in ("mlp", "overfit-mlp"):
        raise UsageError(
            f"Invalid value for `--hidden`: it sets the widths of the built-in mlp / overfit-mlp. "
            f"Received: --hidden {text} with --model {model}"
        )
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise UsageError(
            f"Invalid value for `--hidden`: expected widths >= 1 separated by commas, e.g. 1024,1024. "
            f"Received: --hidden {text}"
        )
    return widths


def base_config(args: argparse.Namespace, command: str) -> dict:
    """The experiment config of the shared flags (``p`` / ``rates`` left to the command); every flag checked."""
    with user_input():
        return _base_config(args, command)


def _base_config(args: argparse.Namespace, command: str) -> dict:
    from dropkit.lab.plan import apply_limits

    check_flags(args)
    apply_limits(args)  # DROPKIT_LAB_MAX_EPOCHS / _SEEDS / _TRIALS (docs/lab.md)
    input_p = parse_rates(args.input_p, "--input-p")
    if len(input_p) != 1:
        raise UsageError(f"Invalid value for `--input-p`: expected one rate. Received: --input-p={args.input_p}")
    if input_p[0] and ":" in args.model:
        raise UsageError(
            "Invalid value for `--input-p`: your own model sets its input dropout itself (give it a "
            f"dropout module and a rate per module with --p). Received: --input-p={args.input_p}"
        )
    if args.schedule is not None:
        import torch

        from dropkit.schedules import from_spec

        from_spec(args.schedule, [torch.nn.Dropout(0.5)])  # a bad spec fails now, naming the accepted forms
    from dropkit.lab.datasets import dataset_fingerprint

    return {
        "command": command,
        "dataset": args.dataset,
        "model": args.model,
        "variant": args.variant,
        "schedule": args.schedule,
        "p": None,
        "rates": None,
        "input_p": input_p[0],
        "epochs": args.epochs,
        "epochs_factor": args.epochs_factor,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "val_fraction": args.val_fraction,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "optimizer": args.optimizer,
        "momentum": args.momentum,
        "nesterov": args.nesterov,
        "lr_schedule": args.lr_schedule,
        "max_norm": args.max_norm,
        "hidden": parse_hidden(args.hidden, args.model),
        "early_stopping": args.early_stopping,
        "task": args.task,
        "replace": args.replace,
        "dataset_sha256": dataset_fingerprint(args.dataset),
    }


def full_command(args: argparse.Namespace, config: dict, out: str) -> str:
    """The command with every flag spelled out (what reproduces the run, whatever the defaults become)."""
    import shlex

    parts = ["dropkit", config["command"], "--dataset", config["dataset"], "--model", config["model"]]
    if config["command"] == "compare":
        parts += ["--p", ",".join(f"{r:g}" for r in config["p"])]
    elif config["command"] == "sweep":
        parts += ["--rates", *(f"{r:g}" for r in config["rates"])]
    for key in ("variant", "schedule", "task"):
        if config.get(key):
            parts += ["--" + key, config[key]]
    if config.get("hidden"):
        parts += ["--hidden", ",".join(str(h) for h in config["hidden"])]
    if ":" in config["model"]:
        parts.append("--replace" if config["replace"] else "--no-replace")
    for key in (
        "input_p",
        "epochs",
        "epochs_factor",
        "seeds",
        "batch_size",
        "optimizer",
        "lr",
        "lr_schedule",
        "momentum",
        "weight_decay",
        "max_norm",
        "early_stopping",
        "val_fraction",
        "train_size",
        "val_size",
    ):
        if config.get(key) is not None:
            parts += [
                "--" + key.replace("_", "-"),
                f"{config[key]:g}" if isinstance(config[key], float) else str(config[key]),
            ]
    if config.get("nesterov"):
        parts.append("--nesterov")
    for key in ("data_dir", "cache_dir"):
        if getattr(args, key):
            parts += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    if args.no_download:
        parts.append("--no-download")
    if args.device != "cpu":
        parts += ["--device", args.device]
    if getattr(args, "jobs", 1) != 1:
        parts += ["--jobs", str(args.jobs)]
    return shlex.join(parts + ["--out", out])


def slug(name: str) -> str:
    """A folder-name form of a dataset / model argument (``./nets.py:make_net`` -> ``nets-make_net``)."""
    if ":" in name:
        module, _, attr = name.rpartition(":")
        module = re.sub(r"\.py$", "", module.rstrip("/").split("/")[-1])
        name = f"{module}-{attr}"
    elif name.endswith(".npz"):
        name = name.rstrip("/").split("/")[-1][: -len(".npz")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


def default_out(config: dict) -> str:
    return f"runs/{config['command']}-{slug(config['dataset'])}-{slug(config['model'])}"


def cpu_text() -> str:
    import os

    from dropkit.lab.experiment import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs"


def run(args: argparse.Namespace, config: dict) -> int:
    from dropkit.lab.experiment import init_distributed, run_experiment
    from dropkit.lab.models import resolve_rates
    from dropkit.lab.report import require_matplotlib
    from dropkit.lab.train import dist_info

    require_matplotlib()  # before hours of training, not after
    if config["p"] is not None and ":" not in config["model"]:
        with user_input():  # one rate or one per site
            resolve_rates(config["model"], config["p"], "--p", hidden=config.get("hidden"))
    device = init_distributed(args.device)
    out = args.out or default_out(config)
    t0 = time.perf_counter()
    result = run_experiment(
        config,
        out,
        device=device,
        jobs=args.jobs,
        quiet=args.quiet,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        download=not args.no_download,
        command=full_command(args, config, out),
    )
    if dist_info()[0] == 0:
        rates = ",".join(f"{r:g}" for r in (config["p"] or config["rates"]))
        what = (
            "accuracy in %, mean ± std over seeds"
            if config["task"] == "classification"
            else "MSE, mean ± std over seeds"
        )
        print(
            f"dropkit {config['command']}: {config['dataset']} / {config['model']}, p={rates}, "
            f"{config['seeds']} seeds ({what})\n"
        )
        print(result["table"])
        print(f"\nreport: {out}/report.md (plots in {out}/plots/); {time.perf_counter() - t0:.1f} s on {cpu_text()}")
        sys.stdout.flush()
    return 0
