"""``dropkit mc DIR``: Monte-Carlo dropout on the validation set of a lab run folder.

``DIR`` is one finished run (``model.pt`` + ``config.json``, see :mod:`dropkit.lab.train`)
or an experiment folder, whose finished runs (``runs/*/seed-*/``) with dropout are all
evaluated. The validation split is reloaded with the dataset settings found in the run's
or the experiment's ``config.json`` (``val_fraction``, ``train_size``, ``val_size``).

For each run it prints the eval-mode and MC accuracy, NLL, Brier score and ECE, the
mean predictive entropy of correctly vs wrongly classified examples and its AUROC (how well
entropy ranks the misclassified above the correct ones; 0.5 = chance), and the mutual
information (BALD) of both; it writes ``mc.json`` and ``mc_uncertainty.png`` (histograms of the predictive
entropy, correct vs misclassified) into the run's folder.

A run folder is data: ``mc`` imports no code that it names. A run made with your own model
(``--model MODULE:FACTORY``) or dataset factory is evaluated only when you name the same
factory again (``dropkit mc DIR --model ./nets.py:make_net``); otherwise it is refused with
the flag to pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dropkit.cli._errors import user_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mc",
        help="MC-dropout uncertainty of a lab run folder's validation set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        default="runs/compare-digits-mlp",
        help="a lab run folder, or an experiment folder with runs/ (default: runs/compare-digits-mlp, "
        "the folder of a plain `dropkit compare`)",
    )
    p.add_argument("--samples", type=int, default=50, help="MC samples T (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the MC masks (default: 0)")
    p.add_argument("--bins", type=int, default=15, help="ECE bins (default: 15)")
    p.add_argument("--batch", type=int, default=512, help="validation examples per predict call (default: 512)")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="FILE",
        help="runs trained on your own data: the data set (FILE.npz, or MODULE:FACTORY, which is imported and "
        "called); a .npz must match the SHA-256 recorded with the run (default: the run's FILE.npz, as typed)",
    )
    p.add_argument("--data-dir", default=None, help="folder with IDX files (mnist, fashion-mnist)")
    p.add_argument("--no-download", action="store_true", help="never download a dataset")
    p.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="the model factory of runs made with your own model: imported only when named here, never from the folder",
    )
    p.set_defaults(func=run)


def _runs(root: Path) -> list[Path]:
    if (root / "model.pt").is_file():
        return [root]
    runs = sorted(p.parent for p in root.glob("runs/*/seed-*/model.pt"))
    if not runs:
        raise ValueError(f"{root}: no finished lab run (model.pt) here or under runs/*/seed-*/")
    return runs


def _data_settings(run: Path) -> dict:
    """Dataset keyword arguments from the nearest config.json that has them."""
    settings: dict = {}
    for folder in [run, *run.parents][:4]:
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{cfg}: not valid JSON ({exc}); restore it or rerun the experiment") from None
            if not isinstance(data, dict):
                raise ValueError(f"{cfg}: expected a JSON object with the run's settings; found {type(data).__name__}")
            for key in ("val_fraction", "train_size", "val_size"):
                if key in data and key not in settings and data[key] is not None:
                    settings[key] = data[key]
            settings.setdefault("dataset", data.get("dataset"))
            for key in ("dataset_sha256", "task"):
                if data.get(key) is not None:
                    settings.setdefault(key, data[key])
    if not settings.get("dataset"):
        raise ValueError(f"{run}: no dataset named in config.json")
    return settings


def _resolve_data(run: Path, args: argparse.Namespace) -> dict:
    """The run's dataset settings with the data set to load (``--dataset`` for the user's own data),
    checked before anything is computed: the file exists and is the one the run was trained on."""
    from dropkit.lab.datasets import dataset_fingerprint
    from dropkit.lab.user import is_user_target

    settings = _data_settings(run)
    name = settings["dataset"]
    if settings.pop("task", "classification") != "classification":
        raise ValueError(f"{run}: a {name} regression run has no class probabilities for MC dropout to calibrate")
    own = is_user_target(name) or name.endswith(".npz")
    sha = settings.pop("dataset_sha256", None)
    if not own:
        if args.dataset is not None:
            raise ValueError(
                f"Invalid value for `--dataset`: it names your own data; {run} was trained on the built-in "
                f"{name!r}, which mc reloads itself. Received: --dataset {args.dataset}"
            )
        return settings
    if args.dataset is None and is_user_target(name):
        raise ValueError(
            f"{run} was trained on the data of {name} (named in its config.json); mc does not import code named "
            f"by a run folder: pass --dataset {name} to import and call it (only if you trust it)"
        )
    given = args.dataset or name
    if given.endswith(".npz") != name.endswith(".npz"):
        raise ValueError(
            f"Invalid value for `--dataset`: {run} was trained on {name}; pass the same kind of data set "
            f"({'a FILE.npz' if name.endswith('.npz') else 'MODULE:FACTORY'}). Received: --dataset {given}"
        )
    if given.endswith(".npz"):
        if not Path(given).is_file():
            raise ValueError(
                f"{run} was trained on your own data {name}; {given} is not a file (from {Path.cwd()}): "
                "pass --dataset FILE with the run's .npz file"
            )
        if sha is not None and dataset_fingerprint(given) != sha:
            raise ValueError(
                f"{given} is not the data {run} was trained on (its SHA-256 differs from the one recorded with "
                "the run): pass --dataset FILE with the run's .npz file"
            )
    settings["dataset"] = given
    return settings


def _has_dropout(run: Path) -> bool:
    """Whether the run's own config sets a dropout rate (the no-dropout runs of compare and sweep do not)."""
    cfg = run / "config.json"
    try:
        spec = json.loads(cfg.read_text())
        return bool(any(spec["p"]) or spec.get("input_p"))
    except (OSError, ValueError, KeyError, TypeError):
        return True  # not a lab run config: let MC dropout find out


def _histogram(path: Path, entropy: torch.Tensor, correct: torch.Tensor, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    top = max(float(entropy.max()), 1e-3)
    bins = torch.linspace(0, top, 31).tolist()
    ax.hist(entropy[correct].tolist(), bins=bins, alpha=0.6, density=True, label=f"correct ({int(correct.sum())})")
    ax.hist(
        entropy[~correct].tolist(), bins=bins, alpha=0.6, density=True, label=f"misclassified ({int((~correct).sum())})"
    )
    ax.set_xlabel("predictive entropy (nats)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    from dropkit.lab.report import save_figure

    save_figure(fig, path)


def _auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a random positive (misclassified) example scores higher than a random
    negative (correct) one, ties counting 1/2 (Mann-Whitney U / (n+ n-)); NaN without both kinds."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    _, inverse, counts = torch.unique(score.double(), return_inverse=True, return_counts=True)
    end = torch.cumsum(counts, 0).double()
    ranks = ((end - counts + 1 + end) / 2)[inverse]  # 1-based ranks, ties get their average
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate_run(run: Path, args: argparse.Namespace) -> dict:
    from dropkit import metrics
    from dropkit.lab.datasets import load_data
    from dropkit.lab.models import probabilities
    from dropkit.lab.train import load_model
    from dropkit.mc import predict

    with user_input():
        settings = _resolve_data(run, args)
        name = settings.pop("dataset")
        data = load_data(name, data_dir=args.data_dir, download=not args.no_download, **settings)
    model = load_model(run, factory=args.model)  # refuses a model factory the user did not name
    x, y = data.x_val, data.y_val
    with torch.inference_mode():
        eval_probs = torch.cat(
            [probabilities(model, model(x[i : i + args.batch])) for i in range(0, len(y), args.batch)]
        )
    parts = [
        predict(model, x[i : i + args.batch], samples=args.samples, seed=args.seed + i)
        for i in range(0, len(y), args.batch)
    ]
    mean = torch.cat([r.mean for r in parts])
    entropy = torch.cat([r.entropy for r in parts])
    mi = torch.cat([r.mutual_information for r in parts])
    correct = mean.argmax(1) == y
    row = {"run": str(run), "dataset": name, "samples": args.samples, "n": len(y)}
    for label, probs in (("eval", eval_probs), ("mc", mean)):
        row[f"{label}_acc"] = float((probs.argmax(1) == y).double().mean())
        row[f"{label}_nll"] = metrics.nll(probs, y)
        row[f"{label}_brier"] = metrics.brier_score(probs, y)
        row[f"{label}_ece"] = metrics.expected_calibration_error(probs, y, bins=args.bins)
    for label, mask in (("correct", correct), ("wrong", ~correct)):
        row[f"entropy_{label}"] = float(entropy[mask].mean()) if mask.any() else float("nan")
        row[f"mi_{label}"] = float(mi[mask].mean()) if mask.any() else float("nan")
    row["entropy_auroc"] = _auroc(entropy, ~correct)
    row["accuracy_coverage"] = metrics.accuracy_coverage(mean, y, entropy)
    from dropkit._io import atomic_write_json

    atomic_write_json(run / "mc.json", row)
    setting = f"{run.parent.name} {run.name}" if run.name.startswith("seed-") else run.name
    _histogram(
        run / "mc_uncertainty.png",
        entropy,
        correct,
        f"{name}, {setting}: MC dropout, T={args.samples} (eval acc {100 * row['eval_acc']:.1f} %, "
        f"MC acc {100 * row['mc_acc']:.1f} %)",
    )
    return row


def run(args: argparse.Namespace) -> int:
    from dropkit._validation import check_int
    from dropkit.mc import NoDropoutError

    check_int(args.samples, "samples", minimum=1)
    from dropkit.lab.plan import apply_limits

    apply_limits(args)  # DROPKIT_LAB_MAX_SAMPLES (docs/lab.md)
    root = Path(args.dir)
    if not root.is_dir():
        raise ValueError(
            f"{root}: no such folder; pass the --out folder of a `dropkit compare` or `dropkit sweep` "
            "run (a plain `dropkit compare` writes runs/compare-digits-mlp)"
        )
    from dropkit.lab.report import require_matplotlib

    require_matplotlib()
    runs = _runs(root)
    with user_input():
        for r in runs:
            _resolve_data(r, args)  # every run's data found and checked before the table starts
    plain = [r for r in runs if not _has_dropout(r)]
    runs = [r for r in runs if r not in plain]
    print(
        f"{'run':<40} {'acc eval %':>10} {'acc MC %':>8} {'NLL eval':>8} {'NLL MC':>7} {'Brier eval':>10} {'Brier MC':>8} "
        f"{'ECE eval':>8} {'ECE MC':>7} {'H right':>7} {'H wrong':>7} {'AUROC H':>7} {'MI right':>8} {'MI wrong':>8}",
        flush=True,
    )
    for r in plain:
        print(f"{str(r.relative_to(root)) if r != root else r.name:<40} (trained without dropout: nothing to sample)")
    done = 0
    for r in runs:
        try:
            row = evaluate_run(r, args)
        except NoDropoutError:
            print(f"{str(r.relative_to(root)) or '.':<40} (no dropout module in the model: skipped)")
            continue
        done += 1
        label = str(r.relative_to(root)) if r != root else r.name
        print(
            f"{label:<40} {100 * row['eval_acc']:10.1f} {100 * row['mc_acc']:8.1f} {row['eval_nll']:8.3f} {row['mc_nll']:7.3f} "
            f"{row['eval_brier']:10.3f} {row['mc_brier']:8.3f} {row['eval_ece']:8.3f} {row['mc_ece']:7.3f} "
            f"{row['entropy_correct']:7.3f} {row['entropy_wrong']:7.3f} {row['entropy_auroc']:7.3f} "
            f"{row['mi_correct']:8.4f} {row['mi_wrong']:8.4f}"
        )
        print(
            f"{'':<40} wrote {r / 'mc.json'} and {r / 'mc_uncertainty.png'} ({done}/{len(runs)} runs with dropout)",
            flush=True,
        )
    if plain:
        print(f"{len(plain)} run(s) trained without dropout (the baseline) skipped by design: MC dropout needs dropout")
    if not done:
        raise ValueError(f"{root}: no run with dropout to sample")
    return 0
