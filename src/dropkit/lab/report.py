"""Tables, verdicts, the Markdown report and the PNG plots of a lab run folder.

:func:`write_report(folder)` (also ``dropkit report DIR``) reads ``config.json``,
``env.json``, ``command.txt`` and every ``runs/<setting>/seed-<k>/metrics.jsonl`` and
writes ``report.md``, ``summary.json`` and ``plots/*.png`` (matplotlib's Agg canvas, no
display needed). Accuracies are in percent, ``mean ± std`` over the seeds (sample std).
"""

from __future__ import annotations

import math
from pathlib import Path

from dropkit._io import (
    CorruptFileError,
    atomic_write_json,
    atomic_write_text,
    atomic_write_verified,
    atomic_write_with,
    load_torch_verified,
    read_json,
    read_jsonl,
    read_verified,
)
from dropkit._secrets import mask_credentials
from dropkit.lab.plan import Point, plan
from dropkit.lab.train import metrics_text, summarise

__all__ = ["aggregate", "format_table", "load_folder", "plot_curves", "plot_gap", "sweep_verdicts", "write_report"]

#: Columns of the table: (key in the per-run summary, header, percent?). "train ..." is measured in eval mode after
#: the epoch; "running train ..." is Keras's ``fit`` number: the mean over the epoch's batches with dropout active.
COLUMNS = (
    ("final_train_acc", "train acc", True),
    ("final_train_acc_running", "running train acc", True),
    ("best_train_acc", "best train acc", True),
    ("final_val_acc", "val acc", True),
    ("best_val_acc", "best val acc", True),
    ("final_gap", "gap (train-val)", True),
    ("final_gap_running", "gap (running-val)", True),
    ("best_epoch", "best epoch", False),
    ("final_train_loss", "train loss", False),
    ("final_train_loss_running", "running train loss", False),
    ("final_val_loss", "val loss", False),
)


class NotARunFolder(ValueError):
    """The folder has no lab ``config.json``."""

    user_facing = True


def load_folder(folder: str | Path) -> tuple[dict, list[tuple[Point, list[list[dict]]]]]:
    """The experiment config and, per setting, the per-seed metric histories found on disk.

    A run that stopped early (``--early-stopping``) counts as complete: its history is
    padded with ``None`` up to the setting's epochs, which :func:`aggregate` and the plots skip.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise NotARunFolder(
            f"{folder} is not a lab run folder (no config.json); run `dropkit compare --out {folder}` first"
        )
    config = read_json(cfg_path, fix=f"delete the folder {folder} to start over")
    fix = "delete it and run the same command again: it is rewritten from the run's checkpoint"
    out = []
    for pt in plan(config):
        histories = []
        for seed in range(config["seeds"]):
            run = folder / "runs" / pt.slug / f"seed-{seed}"
            m = run / "metrics.jsonl"
            if m.is_file():
                h = _verified_history(run, read_jsonl(m, fix=fix))
                if h and len(h) < pt.epochs and (run / "result.json").is_file():
                    h = h + [None] * (pt.epochs - len(h))  # stopped early: finished
                if h:
                    histories.append(h)
        out.append((pt, histories))
    return config, out


def _verified_history(run: Path, history: list) -> list:
    """The run's metrics, verified: ``metrics.jsonl`` when it matches its SHA-256 sidecar; else (a flipped digit,
    a file from before the sidecar) the history of the run's SHA-256-verified ``checkpoint.pt``, which is
    written in the same epoch -- the file is then rewritten from it, with one line on stderr naming it.
    Without a checkpoint that verifies, a mismatch is a :class:`~dropkit._io.CorruptFileError` naming the file.
    A finished run's ``result.json`` must hold the same history."""
    import sys

    path = run / "metrics.jsonl"
    try:
        read_verified(path)
        verified = history
    except CorruptFileError as exc:
        ckpt_path = run / "checkpoint.pt"
        try:
            ckpt = load_torch_verified(ckpt_path) if ckpt_path.is_file() else None
        except CorruptFileError:
            ckpt = None
        saved = ckpt.get("history") if isinstance(ckpt, dict) else None
        if not isinstance(saved, list):
            raise CorruptFileError(
                f"{exc}, and the run has no checkpoint that verifies to recompute it from; delete the run folder "
                f"{run} and run the same command again"
            ) from None
        verified = list(saved)
        if verified != history:
            print(
                f"dropkit: {exc.args[0].split(';')[0]}; recomputed it from {ckpt_path} (SHA-256 verified)",
                file=sys.stderr,
            )
        atomic_write_verified(path, metrics_text(verified).encode())
    result = run / "result.json"
    if result.is_file():
        done = read_json(result, fix="delete it and run the same command again")
        if isinstance(done, dict) and done.get("history") not in (None, verified):
            raise CorruptFileError(
                f"{result} disagrees with the run's verified metrics ({path}); delete it and run the same command "
                "again (the run is finished again from its checkpoint)"
            )
    return verified


def _epochs(h: list) -> list[dict]:
    return [m for m in h if m is not None]


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def aggregate(points: list[tuple[Point, list[list[dict]]]]) -> list[dict]:
    """One row per setting: mean and std over seeds of each summary metric (complete runs only)."""
    rows = []
    for pt, histories in points:
        complete = [h for h in histories if len(h) >= pt.epochs]
        row = {
            "label": pt.label,
            "slug": pt.slug,
            "rate": pt.rate,
            "p": list(pt.p),
            "input_p": pt.input_p,
            "epochs": pt.epochs,
            "seeds": len(complete),
            "partial": len(histories) - len(complete),
        }
        if complete:
            sums = [summarise(_epochs(h)) for h in complete]
            for key in sums[0]:
                if key != "epochs" and all(key in s for s in sums):
                    row[key] = _mean_std([s[key] for s in sums])
        rows.append(row)
    return rows


def _fmt(ms: tuple[float, float] | None, percent: bool, seeds: int) -> str:
    if ms is None:
        return "-"
    m, s = ms
    if percent:
        return f"{100 * m:.1f} ± {100 * s:.1f}" if seeds > 1 else f"{100 * m:.1f}"
    if abs(m) >= 10 or float(m).is_integer():
        return f"{m:.1f} ± {s:.1f}" if seeds > 1 else f"{m:.1f}"
    return f"{m:.3f} ± {s:.3f}" if seeds > 1 else f"{m:.3f}"


def format_table(rows: list[dict]) -> str:
    """A Markdown table (also readable as plain text) of the rows of :func:`aggregate`."""
    regression = any(r["seeds"] for r in rows) and not any("final_val_acc" in r for r in rows)
    columns = [c for c in COLUMNS if not (regression and c[2])]
    head = ["setting", "epochs", "seeds"] + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        seeds = f"{r['seeds']}" + (f" (+{r['partial']} running)" if r["partial"] else "")
        cells = [r["label"], str(r["epochs"]), seeds] + [_fmt(r.get(k), pct, r["seeds"]) for k, _, pct in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_verdicts(rows: list[dict], gap_threshold: float = 0.05, underfit_threshold: float = 0.02) -> list[str]:
    """Plain-language findings of a sweep or comparison: one verdict per setting, then the best setting.

    Each setting (means over seeds) gets the first verdict that applies (the rule of docs/lab.md):

    1. *overfits*: its final train - validation gap exceeds ``gap_threshold``;
    2. *underfits*: its final training accuracy is more than ``underfit_threshold`` below the best
       final validation accuracy of any setting (it fits its own training data worse than the best
       setting predicts unseen data);
    3. otherwise no flag.

    The best setting has the highest mean final validation accuracy (lowest validation loss for regression).
    """
    done = [r for r in rows if "final_val_acc" in r]
    if not done:
        reg = [r for r in rows if "final_val_loss" in r]
        if not reg:
            return ["no finished runs yet"]
        best = min(reg, key=lambda r: r["final_val_loss"][0])
        m, sd = best["final_val_loss"]
        return [f"best by validation loss: {best['label']} ({m:.4g} ± {sd:.2g})"]
    out = []
    best = max(done, key=lambda r: r["final_val_acc"][0])
    best_val = best["final_val_acc"][0]
    for r in sorted(done, key=lambda r: r["rate"]):
        gap = r["final_gap"][0]
        train = r["final_train_acc"][0]
        if gap > gap_threshold:
            verdict = f"overfits: gap {100 * gap:.1f} points > {100 * gap_threshold:g}"
        elif best_val - train > underfit_threshold:
            verdict = (
                f"underfits: train acc {100 * train:.1f} % is {100 * (best_val - train):.1f} points below the best "
                f"val acc ({100 * best_val:.1f} %, {best['label']})"
            )
        else:
            verdict = "no over- or underfitting flag"
        out.append(f"{r['label']}: {verdict}")
    std = best["final_val_acc"][1]
    out.append(f"best by validation accuracy: {best['label']} ({100 * best_val:.1f} ± {100 * std:.1f} %)")
    return out


def _curves(histories: list[list[dict]], key: str, scale: float = 1.0):
    """Epochs, mean, min and max over seeds of ``key`` (epochs every seed has)."""
    hs = [_epochs(h) for h in histories]
    n = min(len(h) for h in hs)
    xs = list(range(1, n + 1))
    cols = [[scale * h[i][key] for h in hs] for i in range(n)]
    return xs, [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def _figure(ncols: int, width: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> None:
    """``fig.savefig`` as PNG through :func:`dropkit._io.atomic_write_with`, cropped to what is drawn
    (``bbox_inches="tight"``: a legend or label outside the axes is never cut off)."""
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))


def plot_curves(points, path: Path, title: str) -> None:
    """Train (dashed, eval mode after the epoch), running train (dotted: the mean over the epoch's batches with
    dropout active, Keras's ``fit`` number) and validation (solid) accuracy (%) and loss per epoch: mean over
    seeds, the band spans the seeds' min to max; one colour per setting."""
    has_acc = any("val_acc" in _epochs(h)[0] for _, hs in points for h in hs)
    fig = _figure(2 if has_acc else 1)
    axes = fig.subplots(1, 2) if has_acc else [None, fig.subplots()]
    ax_acc, ax_loss = axes
    seeds = max((len(hs) for _, hs in points), default=0)
    for i, (pt, hs) in enumerate(points):
        if not hs:
            continue
        color = f"C{i % 10}"
        panels = [
            ("train_loss", ax_loss, "--", "train", 1.0),
            ("train_loss_running", ax_loss, ":", "running train", 1.0),
            ("val_loss", ax_loss, "-", "val", 1.0),
        ]
        if has_acc:
            panels = [
                ("train_acc", ax_acc, "--", "train", 100.0),
                ("train_acc_running", ax_acc, ":", "running train", 100.0),
                ("val_acc", ax_acc, "-", "val", 100.0),
            ] + panels
        for key, ax, style, what, scale in panels:
            if not all(key in m for h in hs for m in _epochs(h)):
                continue  # a history written before the running metrics existed
            xs, mean, lo, hi = _curves(hs, key, scale)
            ax.plot(xs, mean, style, color=color, label=f"{pt.label} ({what})")
            if len(hs) > 1:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    spread = f"; band: min-max over {seeds} seeds" if seeds > 1 else ""
    if has_acc:
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%; dotted: running, dropout on)", title="accuracy" + spread)
        ax_acc.legend(fontsize=7)
        ax_acc.grid(alpha=0.3)
    ax_loss.set(xlabel="epoch", ylabel="loss (dotted: running, dropout on)", title="loss" + spread)
    ax_loss.legend(fontsize=7)
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_gap(rows: list[dict], path: Path, title: str) -> None:
    """Final train-validation gap and accuracies (%) against the drop rate, error bars = std over
    seeds; the gap axis always includes zero, and the accuracy panel says when the best and the
    worst validation accuracies are within one std of each other."""
    rows = [r for r in rows if "final_gap" in r]
    fig = _figure(2)
    ax_gap, ax_acc = fig.subplots(1, 2)
    xs = [r["rate"] for r in rows]
    gaps = [100 * r["final_gap"][0] for r in rows]
    errs = [100 * r["final_gap"][1] for r in rows]
    ax_gap.errorbar(xs, gaps, yerr=errs, marker="o", capsize=3)
    ax_gap.axhline(0, color="black", linewidth=0.8)
    top = max(g + e for g, e in zip(gaps, errs))
    bottom = min(g - e for g, e in zip(gaps, errs))
    ax_gap.set_ylim(min(0.0, bottom) - 0.5, max(0.0, top) + 0.5)
    ax_gap.set(xlabel="drop rate p", ylabel="train - val accuracy (points)", title="generalisation gap (0 = none)")
    for key, label in (("final_train_acc", "train"), ("final_val_acc", "val")):
        ax_acc.errorbar(
            xs,
            [100 * r[key][0] for r in rows],
            yerr=[100 * r[key][1] for r in rows],
            marker="o",
            capsize=3,
            label=label,
        )
    vals = [(100 * r["final_val_acc"][0], 100 * r["final_val_acc"][1]) for r in rows]
    hi, lo = max(vals), min(vals)
    noise = max(hi[1], lo[1])
    verdict = (
        f"val acc spread {hi[0] - lo[0]:.1f} points: within seed noise (std up to {noise:.1f})"
        if hi[0] - lo[0] <= noise
        else f"val acc spread {hi[0] - lo[0]:.1f} points > seed std {noise:.1f}"
    )
    ax_acc.set(xlabel="drop rate p", ylabel="accuracy (%)", title="final accuracy\n" + verdict)
    ax_acc.title.set_fontsize(9)
    ax_acc.legend()
    ax_gap.grid(alpha=0.3)
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def require_matplotlib() -> None:
    """Raise a user-facing ImportError-like error with the install hint when matplotlib is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra("the lab's plots need matplotlib, which is not installed: pip install 'dropkit[lab]'")


class MissingExtra(RuntimeError):
    """An optional dependency of the lab is missing (the message has the pip command)."""

    user_facing = True


def _lint_lines(folder: Path, model: str) -> list[str]:
    """The report's *Lint* section; a finding about the whole model (path ``""``) names ``model``."""
    path = folder / "lint.json"
    if not path.is_file():
        return []
    findings = read_json(path)
    head = ["## Lint", "", "`dropkit.lint` on the model of the dropout setting, before training:", ""]
    if not findings:
        return head + ["- no finding", ""]
    return (
        head
        + [
            f"- {f.get('code')} {f.get('severity')} `{f.get('path') or f'model {model}'}`: {f.get('message')}"
            for f in findings
        ]
        + [""]
    )


def write_report(folder: str | Path) -> str:
    """(Re)build ``report.md``, ``summary.json`` and ``plots/`` of a run folder; return the table."""
    folder = Path(folder)
    config, points = load_folder(folder)
    rows = aggregate(points)
    table = format_table(rows)
    verdicts = sweep_verdicts(rows)
    env = read_json(folder / "env.json") if (folder / "env.json").is_file() else {}
    commands = (folder / "command.txt").read_text().strip().splitlines() if (folder / "command.txt").is_file() else []
    command = commands[0] if commands else "?"
    if len(commands) > 1:
        command += "\n# as typed:\n" + "\n".join(commands[1:])
    title = f"{config['command']}: {config['dataset']} / {config['model']}"
    plots = folder / "plots"
    figures = []
    if any(hs for _, hs in points):
        require_matplotlib()
        plot_curves(points, plots / "curves.png", title)
        figures.append("curves.png")
        if sum(1 for r in rows if "final_gap" in r) >= 2:
            plot_gap(rows, plots / "gap.png", title)
            figures.append("gap.png")
    total_wall = 0.0
    restarted = []
    for pt, _ in points:
        for seed in range(config["seeds"]):
            res = folder / "runs" / pt.slug / f"seed-{seed}" / "result.json"
            if res.is_file():
                result = read_json(res, fix="delete it and run the same command again")
                total_wall += result.get("wall_s", 0.0)
                if result.get("restarted"):
                    restarted.append(f"{pt.slug}/seed-{seed}")
    machine = (
        f"{env.get('cpu', env.get('processor', '?'))}, {env.get('cpu_count', '?')} CPUs, {env.get('platform', '?')}, "
        f"device {env.get('device', '?')}"
        + (f" ({env['gpu']})" if "gpu" in env else "")
        + f", {env.get('world_size', 1)} process(es), --jobs {env.get('jobs', 1)}"
    )
    versions = ", ".join(f"{k} {env[k]}" for k in ("dropkit", "torch", "numpy", "scikit-learn", "python") if k in env)
    cfg = ", ".join(f"{k}={v}" for k, v in config.items() if v is not None)
    md = [
        f"# dropkit lab report: {title}",
        "",
        "Command (every flag spelled out):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- date: {env.get('date', '?')}",
        f"- machine: {machine}",
        f"- versions: {versions}",
        f"- config: {cfg}",
        f"- training time (sum over runs, on the machine above): {total_wall:.1f} s",
    ]
    if restarted:
        md.append(f"- restarted from scratch after a corrupt checkpoint: {', '.join(restarted)}")
    md += [
        "",
        "Accuracies in %, mean ± std over seeds; train acc / loss measured in eval mode after each epoch; "
        "running train acc / loss = what Keras's `fit` logs: the mean over the epoch's mini-batches (weighted by "
        "batch size) of the training-mode forward passes, dropout active, that the optimiser steps used; "
        "gap = train acc - val acc and running gap = running train acc - val acc at the last epoch; "
        "best epoch = epoch of the best validation accuracy.",
        "",
        table,
        "",
        "## Findings",
        "",
        *[f"- {v}" for v in verdicts],
        "",
        *_lint_lines(folder, config["model"]),
    ]
    if figures:
        md += ["## Plots", ""] + [f"![{f}](plots/{f})" for f in figures] + [""]
    atomic_write_text(folder / "report.md", mask_credentials("\n".join(md)))
    atomic_write_json(folder / "summary.json", {"config": config, "rows": rows, "findings": verdicts})
    return table + "\n\n" + "\n".join(verdicts)
