"""``dropkit tune``: search per-layer drop rates with Optuna (TPE) on a persistent study."""

from __future__ import annotations

import argparse
import sys
import time

from dropkit.cli import _lab
from dropkit.cli._errors import UsageError, user_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="search per-layer drop rates with Optuna (TPE); the study is saved and shared by workers",
        description="Train the model with drop rates sampled by Optuna's TPE sampler for every dropout layer "
        "(optionally the input rate and a rate schedule), scored on validation accuracy or loss, until the study "
        "holds --trials complete trials. The study is stored in SQLite in the run folder (or --storage "
        "postgresql://...): the same command again continues it, several workers can share it, and a worker "
        "killed mid-trial loses only that trial. Writes report.md (best rates, trials table), trials.json and "
        "plots/history.png, plots/importance.png. Needs optuna: pip install 'dropkit[lab]'.",
    )
    t = p.add_argument_group("search")
    t.add_argument("--trials", type=int, default=20, help="complete trials the study ends with")
    t.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage URL (default: sqlite:///<out>/study.db; postgresql://user@host/db to share "
        "a study between machines)",
    )
    t.add_argument(
        "--score",
        default="acc",
        choices=("acc", "loss"),
        help="final validation accuracy (maximised) or loss (minimised), mean over --seeds",
    )
    t.add_argument("--max-rate", type=float, default=0.8, help="rates are searched in [0, max-rate]")
    t.add_argument("--tune-input", action="store_true", help="also search the input dropout rate (built-in mlp/lstm)")
    t.add_argument(
        "--tune-schedule",
        action="store_true",
        help="also search a rate schedule: none, early:linear:K or linear:K (K = half the run's steps)",
    )
    t.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a worker's heartbeats; a trial silent for twice this is failed",
    )
    _lab.add_common(p, "tune")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from dropkit.lab.report import require_matplotlib

    if importlib.util.find_spec("optuna") is None:
        raise UsageError("dropkit tune needs optuna, which is not installed: pip install 'dropkit[lab]'")
    require_matplotlib()
    config = _lab.base_config(args, "tune")
    with user_input():
        from dropkit._validation import check_int, check_p

        check_int(args.heartbeat, "--heartbeat", minimum=1)
        check_p(args.max_rate, "--max-rate")
        if args.score == "acc" and args.task == "regression":
            raise UsageError("Invalid value for `--score`: regression has no accuracy; use --score loss")
        if args.tune_input and (":" in args.model or args.model in ("cnn",)):
            raise UsageError(f"Invalid value for `--tune-input`: model {args.model} has no input dropout site")
    config.update(
        trials=args.trials,
        score=args.score,
        max_rate=args.max_rate,
        tune_input=args.tune_input,
        tune_schedule=args.tune_schedule,
    )
    out = Path(args.out or _lab.default_out(config))
    import json

    from dropkit.lab.experiment import config_checks, load_experiment_data
    from dropkit.lab.train import check_config
    from dropkit.lab.tune import (
        default_storage,
        run_tune,
        site_names,
        storage_error,
        write_tune_report,
    )

    with config_checks():  # data and model checked before anything is written
        data = load_experiment_data(config, args.data_dir, args.cache_dir, not args.no_download)
        site_names(config, data)
    storage = args.storage or default_storage(out)
    out.mkdir(parents=True, exist_ok=True)
    ident = {k: v for k, v in config.items() if k != "trials"}
    check_config(out / "config.json", json.loads(json.dumps(ident)), "tune folder")
    from dropkit._secrets import mask_credentials

    command = (
        _lab.full_command(args, config, str(out))
        + f" --trials {args.trials} --score {args.score}"
        + (f" --storage {mask_credentials(args.storage)}" if args.storage else "")
        + (" --tune-input" if args.tune_input else "")
        + (" --tune-schedule" if args.tune_schedule else "")
    )
    t0 = time.perf_counter()
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if not args.quiet else (lambda line: None)
    import sqlalchemy.exc

    try:
        study = run_tune(
            json.loads(json.dumps(config)),
            data,
            out,
            storage=storage,
            trials=args.trials,
            score=args.score,
            tune_input=args.tune_input,
            tune_schedule=args.tune_schedule,
            max_rate=args.max_rate,
            heartbeat=args.heartbeat,
            device=args.device,
            log=log,
        )
        text = write_tune_report(study, out, args.score, command)
    except sqlalchemy.exc.OperationalError as exc:  # the database went away mid-study: one line, trials kept
        raise storage_error(storage, exc) from None
    print(f"dropkit tune: {config['dataset']} / {config['model']}, study in {mask_credentials(storage)}\n")
    print(text)
    print(f"\nreport: {out}/report.md (plots in {out}/plots/); {time.perf_counter() - t0:.1f} s on {_lab.cpu_text()}")
    return 0
