"""Tables, verdicts, the Markdown report and the PNG plots of a lab run folder.

:func:`write_report(folder)` (also ``dropkit report DIR``) reads ``config.json``,
``env.json``, ``command.txt`` and every ``runs/<setting>/seed-<k>/metrics.jsonl`` and
writes ``report.md``, ``summary.json`` and ``plots/*.png`` (matplotlib's Agg canvas, no
display needed). Accuracies are in percent, ``mean ± std`` over the seeds (sample std).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dropkit.lab.experiment import Point, plan
from dropkit.lab.train import summarise

__all__ = ["load_folder", "aggregate", "format_table", "sweep_verdicts", "write_report", "plot_curves", "plot_gap"]

#: Columns of the table: (key in the per-run summary, header, percent?).
COLUMNS = (
    ("final_train_acc", "train acc", True),
    ("best_train_acc", "best train acc", True),
    ("final_val_acc", "val acc", True),
    ("best_val_acc", "best val acc", True),
    ("final_gap", "gap (train-val)", True),
    ("best_epoch", "best epoch", False),
    ("final_train_loss", "train loss", False),
    ("final_val_loss", "val loss", False),
)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_folder(folder: str | Path) -> tuple[dict, list[tuple[Point, list[list[dict]]]]]:
    """The experiment config and, per setting, the per-seed metric histories found on disk."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{folder} is not a lab run folder (no config.json); run `dropkit compare --out {folder}` first")
    config = json.loads(cfg_path.read_text())
    out = []
    for pt in plan(config):
        histories = []
        for seed in range(config["seeds"]):
            m = folder / "runs" / pt.slug / f"seed-{seed}" / "metrics.jsonl"
            if m.is_file():
                h = _read_jsonl(m)
                if h:
                    histories.append(h)
        out.append((pt, histories))
    return config, out


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def aggregate(points: list[tuple[Point, list[list[dict]]]]) -> list[dict]:
    """One row per setting: mean and std over seeds of each summary metric (complete runs only)."""
    rows = []
    for pt, histories in points:
        complete = [h for h in histories if len(h) >= pt.epochs]
        row = {"label": pt.label, "slug": pt.slug, "rate": pt.rate, "p": list(pt.p), "input_p": pt.input_p,
               "epochs": pt.epochs, "seeds": len(complete), "partial": len(histories) - len(complete)}
        if complete:
            sums = [summarise(h) for h in complete]
            for key, _, _ in COLUMNS:
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
    head = ["setting", "epochs", "seeds"] + [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        seeds = f"{r['seeds']}" + (f" (+{r['partial']} running)" if r["partial"] else "")
        cells = [r["label"], str(r["epochs"]), seeds] + [_fmt(r.get(k), pct, r["seeds"]) for k, _, pct in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_verdicts(rows: list[dict], gap_threshold: float = 0.05, underfit_threshold: float = 0.02) -> list[str]:
    """Plain-language findings of a sweep or comparison.

    * overfitting: final train-validation gap above ``gap_threshold``;
    * underfitting: training accuracy falls as p grows -- more than ``underfit_threshold``
      below the highest training accuracy of a lower rate -- and validation accuracy is
      below the best;
    * the best rate by mean final validation accuracy.
    """
    done = [r for r in rows if "final_val_acc" in r]
    if not done:
        return ["no finished runs yet"]
    out = []
    best = max(done, key=lambda r: r["final_val_acc"][0])
    best_val = best["final_val_acc"][0]
    ordered = sorted(done, key=lambda r: r["rate"])
    for i, r in enumerate(ordered):
        gap = r["final_gap"][0]
        train = r["final_train_acc"][0]
        lower = [q["final_train_acc"][0] for q in ordered[:i]]
        notes = []
        if gap > gap_threshold:
            notes.append(f"overfits: gap {100 * gap:.1f} points > {100 * gap_threshold:.0f}")
        if lower and max(lower) - train > underfit_threshold and r["final_val_acc"][0] < best_val:
            notes.append(
                f"underfits: train acc {100 * train:.1f} % is {100 * (max(lower) - train):.1f} points below a lower rate's"
            )
        out.append(f"{r['label']}: " + ("; ".join(notes) if notes else "no over- or underfitting flag"))
    std = best["final_val_acc"][1]
    out.append(
        f"best by validation accuracy: {best['label']} ({100 * best_val:.1f} ± {100 * std:.1f} %)"
    )
    return out


def _curves(histories: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    n = min(len(h) for h in histories)
    xs = list(range(1, n + 1))
    ys = [sum(h[i][key] for h in histories) / len(histories) for i in range(n)]
    return xs, ys


def _figure(ncols: int, width: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(points, path: Path, title: str) -> None:
    """Train (dashed) vs validation (solid) accuracy and loss per epoch, mean over seeds, one colour per setting."""
    fig = _figure(2)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, (pt, hs) in enumerate(points):
        if not hs:
            continue
        color = f"C{i % 10}"
        for key, ax, style, what in (
            ("train_acc", ax_acc, "--", "train"), ("val_acc", ax_acc, "-", "val"),
            ("train_loss", ax_loss, "--", "train"), ("val_loss", ax_loss, "-", "val"),
        ):
            xs, ys = _curves(hs, key)
            ax.plot(xs, ys, style, color=color, label=f"{pt.label} ({what})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (eval mode)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="loss (eval mode)", title="loss")
    ax_acc.legend(fontsize=7)
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def plot_gap(rows: list[dict], path: Path, title: str) -> None:
    """Final train-validation gap and accuracies against the drop rate (error bars: std over seeds)."""
    rows = [r for r in rows if "final_gap" in r]
    fig = _figure(2)
    ax_gap, ax_acc = fig.subplots(1, 2)
    xs = [r["rate"] for r in rows]
    ax_gap.errorbar(xs, [100 * r["final_gap"][0] for r in rows], yerr=[100 * r["final_gap"][1] for r in rows],
                    marker="o", capsize=3)
    ax_gap.set(xlabel="drop rate p", ylabel="train - val accuracy (points)", title="generalisation gap")
    for key, label in (("final_train_acc", "train"), ("final_val_acc", "val")):
        ax_acc.errorbar(xs, [100 * r[key][0] for r in rows], yerr=[100 * r[key][1] for r in rows],
                        marker="o", capsize=3, label=label)
    ax_acc.set(xlabel="drop rate p", ylabel="accuracy (%)", title="final accuracy")
    ax_acc.legend()
    ax_gap.grid(alpha=0.3)
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)


def write_report(folder: str | Path) -> str:
    """(Re)build ``report.md``, ``summary.json`` and ``plots/`` of a run folder; return the table."""
    folder = Path(folder)
    config, points = load_folder(folder)
    rows = aggregate(points)
    table = format_table(rows)
    verdicts = sweep_verdicts(rows)
    env = json.loads((folder / "env.json").read_text()) if (folder / "env.json").is_file() else {}
    commands = (folder / "command.txt").read_text().strip().splitlines() if (folder / "command.txt").is_file() else []
    command = commands[0] if commands else "?"
    if len(commands) > 1:
        command += "\n# as typed:\n" + "\n".join(commands[1:])
    title = f"{config['command']}: {config['dataset']} / {config['model']}"
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    figures = []
    if any(hs for _, hs in points):
        plot_curves(points, plots / "curves.png", title)
        figures.append("curves.png")
        if sum(1 for r in rows if "final_gap" in r) >= 2:
            plot_gap(rows, plots / "gap.png", title)
            figures.append("gap.png")
    total_wall = 0.0
    for pt, _ in points:
        for seed in range(config["seeds"]):
            res = folder / "runs" / pt.slug / f"seed-{seed}" / "result.json"
            if res.is_file():
                total_wall += json.loads(res.read_text()).get("wall_s", 0.0)
    machine = (
        f"{env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, device {env.get('device', '?')}"
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
        f"- training time (sum over runs): {total_wall:.1f} s",
        "",
        "Accuracies in %, mean ± std over seeds; train metrics measured in eval mode after each epoch; "
        "gap = train acc - val acc at the last epoch; best epoch = epoch of the best validation accuracy.",
        "",
        table,
        "",
        "## Findings",
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    if figures:
        md += ["## Plots", ""] + [f"![{f}](plots/{f})" for f in figures] + [""]
    (folder / "report.md").write_text("\n".join(md))
    (folder / "summary.json").write_text(json.dumps({"config": config, "rows": rows, "findings": verdicts}, indent=1))
    return table + "\n\n" + "\n".join(verdicts)
