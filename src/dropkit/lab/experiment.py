"""Compare and sweep experiments: the plan of runs, the run folder, sequential / parallel / DDP execution.

A run folder (``--out``) holds ``config.json`` (the experiment's resolved configuration:
a folder made with another one is refused), ``command.txt``, ``env.json`` (versions,
machine), one sub-folder per run ``runs/<setting>/seed-<k>/`` (see :mod:`dropkit.lab.train`),
and the report (:mod:`dropkit.lab.report`). Running the same command again resumes: finished
runs are skipped and an interrupted one continues from its last completed epoch.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from dropkit.lab.train import RunSpec, atomic_write_text, check_config, dist_info, train_run

__all__ = ["Point", "plan", "run_experiment", "init_distributed", "environment", "IDENTITY_KEYS"]

#: Config keys that define an experiment (a run folder refuses a config that differs in any).
IDENTITY_KEYS = (
    "command", "dataset", "model", "variant", "schedule", "p", "rates", "input_p", "epochs", "epochs_factor", "seeds",
    "batch_size", "lr", "weight_decay", "val_fraction", "train_size", "val_size",
)


@dataclass(frozen=True)
class Point:
    """One dropout setting of an experiment (trained once per seed)."""

    label: str
    p: tuple[float, ...]
    input_p: float
    epochs: int

    @property
    def slug(self) -> str:
        s = "p" + ",".join(f"{r:g}" for r in sorted(set(self.p), key=self.p.index))
        return s + (f"-in{self.input_p:g}" if self.input_p else "")

    @property
    def rate(self) -> float:
        """The largest drop rate of the setting (the sweep's x axis)."""
        return max(self.p + (self.input_p,))


def _dropout_epochs(config: dict) -> int:
    return max(1, int(round(config["epochs"] * config["epochs_factor"])))


def plan(config: dict) -> list[Point]:
    """The settings of an experiment: compare = (no dropout, dropout), sweep = one per rate."""
    if config["command"] == "compare":
        p = tuple(config["p"])
        return [
            Point("no dropout", tuple(0.0 for _ in p), 0.0, config["epochs"]),
            Point("dropout p=" + ",".join(f"{r:g}" for r in p) + (f" in={config['input_p']:g}" if config["input_p"] else ""),
                  p, config["input_p"], _dropout_epochs(config)),
        ]
    points = []
    for r in config["rates"]:
        if r == 0:
            points.append(Point("p=0", (0.0,), 0.0, config["epochs"]))
        else:
            points.append(Point(f"p={r:g}", (float(r),), config["input_p"], _dropout_epochs(config)))
    return points


def environment(device: str) -> dict:
    """Versions and machine, recorded in ``env.json`` and the report."""
    import dropkit

    env = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dropkit": dropkit.__version__,
        "numpy": __import__("numpy").__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "world_size": dist_info()[1],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import sklearn

        env["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    return env


def init_distributed(device: str) -> str:
    """Join the ``torchrun`` process group if ``WORLD_SIZE`` > 1 (gloo on CPU, NCCL on CUDA).

    Returns the device this process trains on (``cuda:<local rank>`` on GPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return device
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, data_kwargs_json: str):
    from dropkit.lab.datasets import load_dataset

    return load_dataset(name, **json.loads(data_kwargs_json))


def _data_kwargs(config: dict, data_dir, cache_dir, download: bool) -> str:
    return json.dumps({
        "val_fraction": config["val_fraction"], "train_size": config["train_size"], "val_size": config["val_size"],
        "data_dir": None if data_dir is None else str(data_dir),
        "cache_dir": None if cache_dir is None else str(cache_dir), "download": download,
    }, sort_keys=True)


def _worker(spec_json: dict, run_dir: str, dataset: str, data_kwargs: str, device: str, threads: int) -> dict:
    """Run one training run in a worker process (``--jobs``)."""
    torch.set_num_threads(threads)
    spec_json = dict(spec_json, p=tuple(spec_json["p"]))
    data = _cached_dataset(dataset, data_kwargs)
    return train_run(RunSpec(**spec_json), data, run_dir, device=device)


class _Progress:
    """A rich progress bar over all epochs of the experiment (silent when quiet or not a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:  # pragma: no cover
                return
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"), transient=True,
            )
            self.task = self.bar.add_task("training", total=total, info="")
            self.bar.start()

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self, n: int = 1, info: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_experiment(
    config: dict,
    out: str | os.PathLike,
    *,
    device: str = "cpu",
    jobs: int = 1,
    quiet: bool = False,
    data_dir=None,
    cache_dir=None,
    download: bool = True,
    command: str | None = None,
) -> dict:
    """Run (or resume) every (setting, seed) of ``config`` into the folder ``out``; write the report.

    Returns ``{"out": path, "table": markdown table, "wall_s": seconds}`` (the report on rank 0 only).
    """
    from dropkit.lab.datasets import load_dataset
    from dropkit.lab.report import write_report

    out = Path(out)
    rank, world = dist_info()
    identity = {k: config.get(k) for k in IDENTITY_KEYS}
    if (out / "config.json").is_file():  # every process checks, so all refuse together
        check_config(out / "config.json", identity, "run folder")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        check_config(out / "config.json", identity, "run folder")
        lines = [command] if command else []
        if Path(sys.argv[0]).name in ("dropkit", "__main__.py"):  # as typed, when run from the command line
            typed = shlex.join(["dropkit", *sys.argv[1:]])
            if typed != command:
                lines.append(typed)
        if lines and not (out / "command.txt").is_file():
            atomic_write_text(out / "command.txt", "\n".join(lines) + "\n")
        env = environment(device)
        env["jobs"] = jobs
        atomic_write_text(out / "env.json", json.dumps(env, indent=2) + "\n")
    if world > 1:
        torch.distributed.barrier()
        jobs = 1

    data_kwargs = _data_kwargs(config, data_dir, cache_dir, download)
    data = load_dataset(config["dataset"], **json.loads(data_kwargs))
    # Validate the model against the data before any run starts (clear errors, no half-made folders).
    from dropkit.lab.models import build_model

    points = plan(config)
    for pt in points:
        build_model(config["model"], data.in_shape, data.num_classes, pt.p, variant=config["variant"], input_p=pt.input_p)

    tasks = []
    for pt in points:
        for seed in range(config["seeds"]):
            spec = RunSpec(
                dataset=config["dataset"], model=config["model"], p=pt.p, input_p=pt.input_p, variant=config["variant"],
                epochs=pt.epochs, batch_size=config["batch_size"], lr=config["lr"],
                weight_decay=config["weight_decay"], seed=seed,
                schedule=config.get("schedule") if any(pt.p) or pt.input_p else None,
            )
            tasks.append((pt, spec, out / "runs" / pt.slug / f"seed-{seed}"))

    show = not quiet and rank == 0 and sys.stderr.isatty()
    bar = _Progress(sum(s.epochs for _, s, _ in tasks), show)
    t0 = time.perf_counter()
    try:
        if jobs <= 1:
            for pt, spec, run_dir in tasks:
                bar.describe(f"{pt.label} seed {spec.seed}")
                done_before = _epochs_done(run_dir)
                bar.advance(done_before)
                train_run(spec, data, run_dir, device=device,
                          progress=lambda e, n, m: bar.advance(1, f"val acc {m['val_acc']:.3f}"))
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = {
                    pool.submit(_worker, spec.to_json(), str(run_dir), config["dataset"], data_kwargs, device, threads): spec
                    for _, spec, run_dir in tasks
                }
                bar.describe(f"{len(tasks)} runs in {jobs} processes")
                for fut in cf.as_completed(futures):
                    fut.result()
                    bar.advance(futures[fut].epochs)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    result = {"out": str(out), "wall_s": wall, "table": None}
    if rank == 0:
        result["table"] = write_report(out)
    return result


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if (run_dir / "result.json").is_file() or path.is_file():
        try:
            return sum(1 for line in path.read_text().splitlines() if line.strip())
        except OSError:
            return 0
    return 0
