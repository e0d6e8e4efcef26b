"""``dropkit tune``: per-layer drop rates searched with Optuna (TPE) on a persistent study.

Each trial trains the experiment's model (``--seeds`` seeds, default 1) with rates sampled
for every dropout site -- the built-in model's sites (``hidden1``, ``hidden2``, ...) or each
dropout module of the user's model -- optionally the input rate (``tune_input``) and a
``dropkit.schedules`` schedule (``tune_schedule``: none, ``early:linear:K`` or
``linear:K`` with K half of the run's optimiser steps). It is scored on the final
validation accuracy (``score="acc"``, maximised) or loss (``"loss"``, minimised), mean
over seeds. Trial runs live in ``<out>/trials/trial-<number>/seed-<k>/`` (:mod:`dropkit.lab.train`).

The study lives in ``storage`` (default ``sqlite:///<out>/study.db``; a
``postgresql://`` URL lets workers on several machines share it). Running the same command
again continues the study. Every worker writes a heartbeat for its running trial; a trial
whose worker died (SIGKILL) is marked FAIL by the next worker after the grace period
(2 x ``heartbeat`` seconds). Workers stop when the study holds exactly ``trials``
COMPLETE trials: before training, a trial whose number is not among the first ``trials``
COMPLETE-or-RUNNING ones is PRUNED (user attribute ``surplus``), and a worker waits while
the running trials of others can still complete the study.

:func:`write_tune_report` writes ``report.md`` (best rates, the trials table),
``trials.json``, the history plot (scores in %, the best so far) and Optuna's parameter-importance plot.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Literal
from pathlib import Path

import torch

from dropkit._io import atomic_write_json, atomic_write_text
from dropkit.lab.plan import Point
from dropkit.lab.train import ConfigMismatch, train_run

__all__ = ["SCORES", "open_study", "plot_history", "run_tune", "site_names", "write_tune_report"]

SCORES = ("acc", "loss")
STUDY_NAME = "dropkit-tune"


def site_names(config: dict, data) -> list[str]:
    """Names of the dropout sites whose rates are searched (one parameter ``p_<site>`` each)."""
    from dropkit.lab.models import _sites
    from dropkit.lab.user import build_user_model, is_user_target

    if is_user_target(config["model"]):
        torch.manual_seed(0)
        return build_user_model(config["model"], data.in_shape, data.num_classes, 0.0, replace=config["replace"])[1]
    return [name for name, _, _ in _sites(config["model"], config.get("hidden"))]


class StorageError(RuntimeError):
    """The study storage cannot be opened or used (driver missing, database down, wrong password); one line
    naming the storage (password masked), the host and the cause."""

    user_facing = True


#: Database errors that no retry fixes: the server is down or unreachable, or it refused the login.
_CONNECT_FAILURES = (
    "connection refused",
    "could not connect",
    "connection to server",
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "could not translate host name",
    "name or service not known",
    "timeout expired",
    "fatal:",  # PostgreSQL refuses a connection (unknown database or role, too many clients) with FATAL
    "no pg_hba.conf entry",
    "server closed the connection",
    "unable to open database file",
)


def storage_error(storage: str, exc: BaseException) -> StorageError:
    """One line for a database failure: the storage URL (password masked), its host and the driver's first line."""
    from dropkit._secrets import mask_credentials, url_host

    cause = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(cause).__name__
    where = "the SQLite file" if storage.startswith("sqlite") else f"the database server {url_host(storage)}"
    return StorageError(mask_credentials(f"--storage {storage}: cannot use {where} ({type(cause).__name__}: {first})"))


def is_connect_failure(exc: BaseException) -> bool:
    """Whether a database error says the server cannot be reached or refused the login (no retry helps)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(marker in text for marker in _CONNECT_FAILURES)


def open_study(
    storage: str,
    direction: Literal["minimize", "maximize"],
    heartbeat: int,
    study_name: str = STUDY_NAME,
    attempts: int = 8,
):
    """The Optuna study in ``storage`` (created if new) with heartbeats every ``heartbeat`` seconds.

    Workers started at the same moment on a new database race to create its tables; the loser
    sees a database error and tries again (up to ``attempts`` times, with a growing pause).
    """
    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = RDBStorage(
                    storage, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat
                )
            return optuna.create_study(
                study_name=study_name,
                storage=rdb,
                direction=direction,
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(),
            )
        except ImportError as exc:
            from dropkit._secrets import mask_credentials

            raise StorageError(
                mask_credentials(
                    f"--storage {storage}: no database driver for it ({exc}); for PostgreSQL: pip install "
                    "'psycopg[binary]' (postgresql://...) or psycopg2-binary (postgresql+psycopg2://...)"
                )
            ) from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if attempt == attempts - 1 or is_connect_failure(exc):
                raise storage_error(storage, exc) from None
            time.sleep(0.2 * (attempt + 1) + 0.1 * (os.getpid() % 7))


def _counts(study) -> tuple[int, list[int]]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, sorted(t.number for t in trials)


def run_tune(
    config: dict,
    data,
    out: Path,
    *,
    storage: str,
    trials: int,
    score: str = "acc",
    tune_input: bool = False,
    tune_schedule: bool = False,
    max_rate: float = 0.8,
    heartbeat: int = 10,
    device: str = "cpu",
    log=print,
) -> object:
    """Run trials into the study until it holds exactly ``trials`` COMPLETE trials; return the study."""
    import optuna

    from dropkit.lab.cores import thread_share

    torch.set_num_threads(thread_share(1))  # the cores this process may use; OMP_NUM_THREADS caps it
    direction: Literal["minimize", "maximize"] = "maximize" if score == "acc" else "minimize"
    study = open_study(storage, direction, heartbeat)
    ident = {k: v for k, v in config.items() if k not in ("trials",)}
    old = study.user_attrs.get("config")
    if old is None:
        study.set_user_attr("config", ident)
    elif old != ident:
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        from dropkit._secrets import mask_credentials

        raise ConfigMismatch(
            f"the study in {mask_credentials(storage)} was created with a different configuration ("
            + "; ".join(f"{k}: {old.get(k)!r} -> {ident.get(k)!r}" for k in diff)
            + "); use another --out / --storage"
        )
    sites = site_names(config, data)
    steps = config["epochs"] * -(-len(data.y_train) // config["batch_size"])
    schedules = ["none", f"early:linear:{max(1, steps // 2)}", f"linear:{max(1, steps // 2)}"]

    def objective(trial):
        complete, numbers = _counts(study)
        if trial.number not in numbers[:trials]:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("surplus: the study already has its trials running or complete")
        p = tuple(trial.suggest_float(f"p_{s}", 0.0, max_rate) for s in sites)
        input_p = trial.suggest_float("input_p", 0.0, max_rate) if tune_input else 0.0
        schedule = trial.suggest_categorical("schedule", schedules) if tune_schedule else "none"
        from dropkit.lab.experiment import run_specs

        cfg = dict(
            config, command="compare", p=list(p), input_p=input_p, schedule=None if schedule == "none" else schedule
        )
        pt = Point(f"trial {trial.number}", p, input_p, config["epochs"])
        values = []
        t0 = time.perf_counter()
        for _, spec in run_specs(cfg, [pt]):
            res = train_run(spec, data, out / "trials" / f"trial-{trial.number}" / f"seed-{spec.seed}", device=device)
            s = res["summary"]
            values.append(s["final_val_acc"] if score == "acc" else s["final_val_loss"])
        value = sum(values) / len(values)
        trial.set_user_attr("seeds", len(values))
        log(
            f"trial {trial.number}: {', '.join(f'{n}={r:.3f}' for n, r in zip(sites, p))}"
            + (f", input={input_p:.3f}" if tune_input else "")
            + (f", schedule={schedule}" if tune_schedule else "")
            + f" -> val {score} {100 * value if score == 'acc' else value:.4g}{' %' if score == 'acc' else ''} "
            f"({time.perf_counter() - t0:.1f} s; {complete + 1}/{trials} complete)"
        )
        return value

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        complete, numbers = _counts(study)
        if complete >= trials:
            break
        if len(numbers) >= trials:  # the others' running trials can finish the study: wait for them
            time.sleep(min(heartbeat, 2))
            continue
        study.optimize(objective, n_trials=1, catch=())
    return study


def _trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start
                else None,
                "surplus": bool(t.user_attrs.get("surplus")),
            }
        )
    return rows


def write_tune_report(study, out: Path, score: str, command: str) -> str:
    """``report.md``, ``trials.json`` and ``plots/history.png`` / ``plots/importance.png``; returns the text printed."""
    from optuna.trial import TrialState

    from dropkit.lab.report import require_matplotlib, save_figure

    rows = _trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fmt = (lambda v: f"{100 * v:.2f}") if score == "acc" else (lambda v: f"{v:.4g}")
    unit = "val acc (%)" if score == "acc" else "val loss"
    params = sorted({k for r in done for k in r["params"]})
    head = ["trial", "state", unit, *params, "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if r["surplus"]:
            continue
        cells = [str(r["number"]), r["state"], fmt(r["value"]) if r["value"] is not None else "-"]
        cells += [
            (f"{r['params'][k]:.3f}" if isinstance(r["params"].get(k), float) else str(r["params"].get(k, "-")))
            for k in params
        ]
        cells.append(f"{r['seconds']:.1f}" if r["seconds"] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    best = study.best_trial if done else None
    best_text = (
        "best: trial "
        + str(best.number)
        + f", {unit} {fmt(best.value)}: "
        + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        if best
        else "best: no complete trial yet"
    )
    counts = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    state_text = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    figures = []
    if len(done) >= 1:
        require_matplotlib()
        import matplotlib

        matplotlib.use("Agg")
        from optuna.visualization import matplotlib as ovm

        plot_history(done, score, out / "plots" / "history.png", study.study_name)
        figures.append("history.png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's "experimental" warnings
            if len(done) >= 2 and len(params) >= 2:
                try:
                    ax = ovm.plot_param_importances(study)
                except (RuntimeError, ValueError) as exc:  # e.g. every trial scored the same
                    print(f"dropkit tune: no importance plot ({exc})")
                else:
                    _figure(ax).tight_layout()  # room for the parameter names
                    save_figure(_figure(ax), out / "plots" / "importance.png")
                    figures.append("importance.png")
            import matplotlib.pyplot as plt

            plt.close("all")
    md = [
        f"# dropkit tune: {study.study_name}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- trials: {state_text} (surplus trials, pruned before training, are not listed)",
        f"- {best_text}",
        "",
        table,
        "",
    ]
    if figures:
        md += ["## Plots", ""] + [f"![{f}](plots/{f})" for f in figures] + [""]
    from dropkit._secrets import mask_credentials

    atomic_write_text(out / "report.md", mask_credentials("\n".join(md)))
    atomic_write_json(out / "trials.json", rows)
    return f"{table}\n\n{best_text}\ntrials: {state_text}"


def plot_history(done: list[dict], score: str, path: Path, name: str):
    """The complete trials' scores against the trial number (accuracy in %), and the best so far;
    saved to ``path`` and returned (a matplotlib Figure). ``done``: rows of ``number`` and ``value``."""
    from dropkit.lab.report import _figure, save_figure

    scale, unit = (100.0, "val acc (%)") if score == "acc" else (1.0, "val loss")
    pick = max if score == "acc" else min
    xs = [r["number"] for r in sorted(done, key=lambda r: r["number"])]
    ys = [scale * r["value"] for r in sorted(done, key=lambda r: r["number"])]
    best = [pick(ys[: i + 1]) for i in range(len(ys))]
    fig = _figure(1, width=6.0)
    ax = fig.subplots()
    ax.plot(xs, ys, "o", label="complete trial")
    ax.step(xs, best, where="post", color="C3", label=f"best so far ({'highest' if score == 'acc' else 'lowest'})")
    ax.set(xlabel="trial", ylabel=unit, title=f"{name}: optimisation history ({unit})")
    ax.xaxis.get_major_locator().set_params(integer=True)  # trial numbers
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def default_storage(out: Path) -> str:
    """``sqlite:///<out>/study.db`` (absolute path)."""
    return "sqlite:///" + str((Path(out) / "study.db").resolve())


def _figure(ax):
    """The top-level Figure of an optuna plot's axes (matplotlib types ``ax.figure`` as Figure | SubFigure)."""
    from matplotlib.figure import Figure

    fig = ax.figure
    while not isinstance(fig, Figure):  # a SubFigure: its `figure` is the Figure it belongs to
        fig = fig.figure
    return fig
