"""Compare and sweep experiments: the plan of runs, the run folder, sequential / parallel / DDP execution.

A run folder (``--out``) holds ``config.json`` (the experiment's resolved configuration:
a folder made with another one is refused), ``command.txt``, ``env.json`` (versions,
machine), ``lint.json`` (``dropkit.lint`` findings on the model), one sub-folder per run
``runs/<setting>/seed-<k>/`` (see :mod:`dropkit.lab.train`), and the report
(:mod:`dropkit.lab.report`). Running the same command again resumes: finished runs are
skipped and an interrupted one continues from its last completed epoch.

Everything is validated (flags, data, the model built for every setting) before the folder
is created or written. While a process works in the folder it holds an exclusive lock on
``.lock`` (the one file not replaced atomically: it holds the holder's pid); a second
process exits with :class:`RunFolderBusy` naming that pid.
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import functools
import json
import multiprocessing
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from dropkit._io import FILE_MODE, atomic_write_json, atomic_write_text
from dropkit._secrets import mask_credentials
from dropkit.lab.cores import passive_wait_env, thread_share, usable_cores
from dropkit.lab.errors import ConfigError, reraise_as
from dropkit.lab.plan import IDENTITY_KEYS, Point, identity, plan
from dropkit.lab.report import write_report
from dropkit.lab.train import RunSpec, check_config, dist_info, train_run

__all__ = [
    "IDENTITY_KEYS",
    "ConfigError",
    "Point",
    "RunFolderBusy",
    "config_checks",
    "environment",
    "folder_lock",
    "init_distributed",
    "lint_findings",
    "load_experiment_data",
    "plan",
    "run_experiment",
    "run_specs",
]


def config_checks():
    """Inside: a ``ValueError`` / ``TypeError`` is the configuration not fitting its data or model: a :class:`ConfigError`."""
    return reraise_as(ConfigError)


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""

    user_facing = True


@contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive ``flock`` on ``folder/.lock`` (pid inside) or raise :class:`RunFolderBusy` at once."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunFolderBusy(
                f"run folder {folder} is in use by process {holder} (lock file {path}); wait for it to finish, "
                "or use another --out"
            ) from None
        os.fchmod(fd, FILE_MODE)  # one mode for every file of the folder, whatever the umask
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


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
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
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


def cpu_model() -> str:
    """The CPU's model name and its widest x86 SIMD (``/proc/cpuinfo`` on Linux), for timings:
    ``"AMD EPYC (AVX2, no AVX-512)"``. Machines of one name differ by up to 3x between AVX2 and AVX-512."""
    name, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    if "avx512f" in flags:
        return f"{name} (AVX-512)"
    if "avx2" in flags:
        return f"{name} (AVX2, no AVX-512)"
    return name


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
    torch.set_num_threads(thread_share(int(os.environ.get("LOCAL_WORLD_SIZE", world))))  # ranks on this machine
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def load_experiment_data(config: dict, data_dir=None, cache_dir=None, download: bool = True):
    """The dataset of an experiment config (cached per process: a second call with the same settings is free)."""
    return _cached_dataset(config["dataset"], _data_kwargs(config, data_dir, cache_dir, download))


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, data_kwargs_json: str):
    """The dataset; a ``train_size`` / ``val_size`` larger than its split is refused (a subset cannot grow it)."""
    from dropkit.lab.datasets import load_data
    from dropkit.lab.plan import size_cap

    kwargs = json.loads(data_kwargs_json)
    data = load_data(name, **kwargs)
    for split, flag in (("train", "--train-size"), ("val", "--val-size")):
        size, have = kwargs.get(f"{split}_size"), len(getattr(data, f"y_{split}"))
        if size is not None and size > have and size == size_cap(f"{split}_size"):
            kwargs[f"{split}_size"] = None  # an environment cap above the split's size keeps the whole split
            data = load_data(name, **kwargs)
        elif size is not None and size > have:
            raise ValueError(
                f"Invalid value for `{flag}`: the {split} split of {name} has {have} samples, so a subset of "
                f"{size} cannot be drawn; pass at most {have}, or leave {flag} out to use them all. Received: {size}"
            )
    return data


def _data_kwargs(config: dict, data_dir, cache_dir, download: bool) -> str:
    kwargs = {
        "val_fraction": config["val_fraction"],
        "train_size": config["train_size"],
        "val_size": config["val_size"],
        "data_dir": None if data_dir is None else str(data_dir),
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "download": download,
    }
    if config.get("task", "classification") != "classification":
        kwargs["task"] = config["task"]
    return json.dumps(kwargs, sort_keys=True)


def _worker_init() -> None:
    """A ``--jobs`` worker leaves Ctrl-C to the parent, which stops every worker and prints one line (a
    terminal's Ctrl-C reaches the whole process group: each worker would print its own traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored now: the parent's block is not needed


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold SIGINT back while workers start, so that none is interrupted before ``_worker_init`` runs (they inherit
    the mask); a Ctrl-C in that window is delivered to the parent when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Ctrl-C with ``--jobs``: terminate the workers (their runs resume from their last saved epoch), drop queued runs."""
    for proc in multiprocessing.active_children():  # the pool's workers: this process starts no other children
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _worker(spec_json: dict, run_dir: str, dataset: str, data_kwargs: str, device: str, threads: int) -> dict:
    """Run one training run in a worker process (``--jobs``)."""
    torch.set_num_threads(threads)
    data = _cached_dataset(dataset, data_kwargs)
    return train_run(RunSpec.from_json(spec_json), data, run_dir, device=device)


class _Progress:
    """A rich progress bar over all epochs on a terminal; off a terminal, one plain line per finished run."""

    def __init__(self, total: int, runs: int, enabled: bool):
        self.bar = None
        self.lines = enabled and not sys.stderr.isatty()
        self.runs, self.finished, self.t0 = runs, 0, time.perf_counter()
        if enabled and not self.lines:
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )
            except ImportError:  # pragma: no cover
                return
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self.task = self.bar.add_task("training", total=total, info="")
            self.bar.start()

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self, n: int = 1, info: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, info=info)

    def run_done(self, label: str, seed: int, result: dict, skipped: bool) -> None:
        self.finished += 1
        if not self.lines:
            return
        s = result["summary"]
        score = (
            f"val acc {100 * s['final_val_acc']:.1f} %"
            if "final_val_acc" in s
            else f"val loss {s['final_val_loss']:.4g}"
        )
        how = "already finished" if skipped else f"{result['wall_s']:.1f} s"
        print(
            f"[{self.finished}/{self.runs}] {label}, seed {seed}: {score} after {s['epochs']} epochs ({how}; "
            f"{time.perf_counter() - self.t0:.0f} s so far)",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_specs(config: dict, points: list[Point] | None = None) -> list[tuple[Point, RunSpec]]:
    """Every (setting, seed) run of ``config`` as a :class:`RunSpec`."""
    recipe = {
        k: config[k]
        for k in ("optimizer", "momentum", "nesterov", "lr_schedule", "max_norm", "early_stopping", "task", "replace")
        if config.get(k) is not None
    }
    if config.get("hidden") is not None:
        recipe["hidden"] = tuple(config["hidden"])
    out = []
    for pt in points or plan(config):
        for seed in range(config["seeds"]):
            out.append(
                (
                    pt,
                    RunSpec(
                        dataset=config["dataset"],
                        model=config["model"],
                        p=pt.p,
                        input_p=pt.input_p,
                        variant=config["variant"],
                        epochs=pt.epochs,
                        batch_size=config["batch_size"],
                        lr=config["lr"],
                        weight_decay=config["weight_decay"],
                        seed=seed,
                        schedule=config.get("schedule") if any(pt.p) or pt.input_p else None,
                        **recipe,
                    ),
                )
            )
    return out


def _model_for(spec, data):
    """The model of one run spec on ``data`` (built the same way for validation and lint)."""
    from dropkit.lab.models import make_model

    return make_model(
        spec.model,
        data.in_shape,
        data.num_classes,
        spec.p,
        variant=spec.variant,
        input_p=spec.input_p,
        hidden=spec.hidden,
        replace=spec.replace,
    )


def lint_findings(config: dict, data) -> list[dict]:
    """``dropkit.lint`` findings on the model of the experiment's dropout setting (example: 2 training inputs)."""
    from dropkit.lint import lint

    pt = plan(config)[-1]
    spec = run_specs(config, [pt])[0][1]
    torch.manual_seed(0)
    model = _model_for(spec, data)
    return [f.to_dict() for f in lint(model, (data.x_train[:2],))]


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
    out = Path(out)
    rank, world = dist_info()
    if world == 1:  # under torchrun, init_distributed gave each rank its share
        torch.set_num_threads(thread_share(1))
    ident = identity(config)
    if (out / "config.json").is_file():  # every process checks, so all refuse together, before any work
        check_config(out / "config.json", ident, "run folder")

    # Validate the data and the model of every setting before anything is created or written.
    data_kwargs = _data_kwargs(config, data_dir, cache_dir, download)
    with config_checks():
        data = _cached_dataset(config["dataset"], data_kwargs)
        tasks = [(pt, spec, out / "runs" / pt.slug / f"seed-{spec.seed}") for pt, spec in run_specs(config)]
        # The dropout settings first: a wrong number of rates is reported with the rates typed, not the baseline's 0s.
        for _pt, spec, _ in sorted(tasks[:: config["seeds"]], key=lambda t: not (any(t[1].p) or t[1].input_p)):
            _model_for(spec, data)
    findings = lint_findings(config, data) if rank == 0 else []

    with folder_lock(out) if rank == 0 else _nothing():
        if rank == 0:
            check_config(out / "config.json", ident, "run folder")
            lines = [command] if command else []
            if Path(sys.argv[0]).name in ("dropkit", "__main__.py"):  # as typed, when run from the command line
                typed = shlex.join(["dropkit", *sys.argv[1:]])
                if typed != command:
                    lines.append(typed)
            if lines and not (out / "command.txt").is_file():
                atomic_write_text(out / "command.txt", mask_credentials("\n".join(lines) + "\n"))
            env = environment(device)
            env["jobs"] = jobs
            env["threads_per_run"] = thread_share(jobs) if jobs > 1 and world == 1 else torch.get_num_threads()
            atomic_write_json(out / "env.json", env, indent=2)
            atomic_write_json(out / "lint.json", findings)
        if world > 1:
            torch.distributed.barrier()
            jobs = 1

        bar = _Progress(sum(s.epochs for _, s, _ in tasks), len(tasks), not quiet and rank == 0)
        t0 = time.perf_counter()
        try:
            if jobs <= 1:
                for pt, spec, run_dir in tasks:
                    bar.describe(f"{pt.label} seed {spec.seed}")
                    skipped = (run_dir / "result.json").is_file()
                    bar.advance(_epochs_done(run_dir))
                    res = train_run(
                        spec, data, run_dir, device=device, progress=lambda e, n, m: bar.advance(1, _progress_info(m))
                    )
                    bar.run_done(pt.label, spec.seed, res, skipped)
            else:
                threads = thread_share(jobs)  # each worker its share of the cores
                ctx = multiprocessing.get_context("spawn")
                pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
                try:
                    with _sigint_blocked(), passive_wait_env(threads):  # every worker is started by these submits
                        futures = {
                            pool.submit(
                                _worker, spec.to_json(), str(run_dir), config["dataset"], data_kwargs, device, threads
                            ): (pt, spec, (run_dir / "result.json").is_file())
                            for pt, spec, run_dir in tasks
                        }
                    bar.describe(f"{len(tasks)} runs in {jobs} processes")
                    for fut in cf.as_completed(futures):
                        res = fut.result()
                        pt, spec, skipped = futures[fut]
                        bar.advance(spec.epochs)
                        bar.run_done(pt.label, spec.seed, res, skipped)
                except KeyboardInterrupt:
                    _stop_workers(pool)
                    raise
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # a failed run: let the running ones finish
                    raise
                pool.shutdown()
        finally:
            bar.close()
        wall = time.perf_counter() - t0
        result = {"out": str(out), "wall_s": wall, "table": None}
        if rank == 0:
            result["table"] = write_report(out)
    return result


@contextmanager
def _nothing():
    yield


def _progress_info(m: dict) -> str:
    return f"val acc {100 * m['val_acc']:.1f} %" if "val_acc" in m else f"val loss {m['val_loss']:.4g}"


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if (run_dir / "result.json").is_file() or path.is_file():
        try:
            return sum(1 for line in path.read_text().splitlines() if line.strip())
        except OSError:
            return 0
    return 0
