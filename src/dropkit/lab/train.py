"""One training run of the lab: resumable, reproducible, optionally data-parallel.

:func:`train_run` trains one model (one dropout setting, one seed) with Adam and writes
its run folder:

* ``config.json`` -- the resolved :class:`RunSpec` (a folder made with another config is refused);
* ``metrics.jsonl`` -- one JSON object per completed epoch (train / validation loss and
  accuracy measured in eval mode, the gap, and the mean training loss under dropout);
* ``checkpoint.pt`` -- after every epoch: model, optimiser, epoch, history, torch's global
  RNG state (dropout masks draw their keys from it) and the data-order generator's state,
  written atomically (temporary file + ``os.replace``) and loaded with
  ``torch.load(weights_only=True)``;
* ``model.pt`` and ``result.json`` -- written last; a run with ``result.json`` is finished
  and skipped.

A run killed at any moment (SIGKILL included) and started again continues from its last
completed epoch and ends with the same metrics as an uninterrupted run: everything random
is a function of the seed and the checkpointed generator states.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each global batch is split across the processes
and the model is wrapped in ``DistributedDataParallel``; each process runs its shard inside
:func:`dropkit.rng.batch_shard` (its first global sample index), so the dropout masks are
those a single process would draw for the whole batch, and the loss is scaled so that the
averaged gradient equals the single-process one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dropkit.lab.models import build_model
from dropkit.schedules import from_spec

__all__ = ["RunSpec", "ConfigMismatch", "train_run", "atomic_write_text", "atomic_torch_save", "load_result",
           "dist_info", "evaluate", "summarise", "shard_bounds"]

#: Testing hook: seconds to sleep in every epoch before its checkpoint (makes kill tests deterministic).
_SLOWDOWN_ENV = "DROPKIT_LAB_EPOCH_DELAY"


class ConfigMismatch(ValueError):
    """A run folder exists with a different configuration."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one training run (and nothing that does not)."""

    dataset: str
    model: str
    p: tuple[float, ...]
    input_p: float = 0.0
    variant: str | None = None
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    #: a dropkit.schedules.from_spec string, stepped once per optimiser step (None: fixed rates)
    schedule: str | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["p"] = list(self.p)
        return d


# ---------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------
def _atomic(path: Path, write: Callable[[object], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    _atomic(path, lambda f: f.write(text), "w")


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    _atomic(path, lambda f: torch.save(obj, f), "wb")


def check_config(path: Path, config: dict, what: str = "run folder") -> None:
    """Write ``config`` to ``path``, or refuse if ``path`` holds a different one."""
    path = Path(path)
    if path.is_file():
        old = json.loads(path.read_text())
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            changes = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff)
            raise ConfigMismatch(
                f"{what} {path.parent} was created with a different configuration ({changes}); "
                "use another --out, or delete the folder to start over"
            )
        return
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_result(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when not running under an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist_info()[1] > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def _loss_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.to(out.dtype), reduction="sum")
    return F.cross_entropy(out, y, reduction="sum")


def _correct(out: torch.Tensor, y: torch.Tensor) -> int:
    pred = (out.reshape(-1) > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
    return int((pred == y).sum())


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` in eval mode (mode restored afterwards)."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(x[i : i + batch])
        loss += float(_loss_sum(out, y[i : i + batch]))
        correct += _correct(out, y[i : i + batch])
    model.train(was)
    return loss / len(y), correct / len(y)


def summarise(history: list[dict]) -> dict:
    """Final and best metrics of a run's per-epoch history (best = highest validation accuracy)."""
    best = max(history, key=lambda m: (m["val_acc"], -m["epoch"]))
    last = history[-1]
    return {
        "epochs": len(history),
        "final_train_acc": last["train_acc"],
        "final_val_acc": last["val_acc"],
        "final_gap": last["gap"],
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "best_train_acc": max(m["train_acc"] for m in history),
        "best_val_acc": best["val_acc"],
        "best_epoch": best["epoch"],
        "min_val_loss": min(m["val_loss"] for m in history),
    }


def shard_bounds(batch: int, world: int) -> list[int]:
    """Where each process's shard of a global batch of ``batch`` samples starts (``world + 1`` bounds, an even split)."""
    return [batch * r // world for r in range(world + 1)]


def train_run(
    spec: RunSpec,
    data,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train (or resume, or skip) the run ``spec`` on ``data`` (a :class:`~dropkit.lab.datasets.Dataset`).

    Returns the run's result (``result.json``): the summary metrics, the history and the
    wall time. ``progress(epoch, epochs, metrics)`` is called after each epoch.
    """
    run_dir = Path(run_dir)
    rank, world = dist_info()
    config = spec.to_json()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_config(run_dir / "config.json", config)
    _barrier()
    done = load_result(run_dir)
    if done is not None:
        return done

    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.in_shape, data.num_classes, spec.p, variant=spec.variant, input_p=spec.input_p)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = from_spec(spec.schedule, model) if spec.schedule else None
    order = torch.Generator().manual_seed(spec.seed)
    history: list[dict] = []
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        history = list(ckpt["history"])
        torch.set_rng_state(ckpt["torch_rng"])
        order.set_state(ckpt["order_rng"])
        if sched is not None:
            sched.load_state_dict(ckpt["schedule"])
    if rank == 0:  # metrics.jsonl mirrors the checkpoint (a line written after it may have been lost)
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))

    train_model = model
    if world > 1:
        dev = torch.device(device)
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    xs_tr, ys_tr = data.x_train.to(device), data.y_train.to(device)
    xs_va, ys_va = data.x_val.to(device), data.y_val.to(device)
    n = len(ys_tr)
    delay = float(os.environ.get(_SLOWDOWN_ENV, "0") or 0)
    t0 = time.perf_counter()
    for epoch in range(len(history) + 1, spec.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=order).to(device)
        loss_total = torch.zeros((), dtype=torch.float64)
        for i in range(0, n, spec.batch_size):
            idx = perm[i : i + spec.batch_size]
            b = len(idx)
            lo, hi = shard_bounds(b, world)[rank : rank + 2]
            with dropkit_batch_shard(lo):
                out = train_model(xs_tr[idx[lo:hi]])
            loss_sum = _loss_sum(out, ys_tr[idx[lo:hi]])
            opt.zero_grad(set_to_none=True)
            (loss_sum * (world / b)).backward()  # DDP averages over processes: the gradient of sum / b
            opt.step()
            if sched is not None:
                sched.step()
            batch_loss = loss_sum.detach().to("cpu", torch.float64)
            if world > 1:
                torch.distributed.all_reduce(batch_loss)
            loss_total += batch_loss
        if delay:
            time.sleep(delay)
        train_loss, train_acc = evaluate(model, xs_tr, ys_tr)
        val_loss, val_acc = evaluate(model, xs_va, ys_va)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "gap": train_acc - val_acc,
            "dropout_loss": float(loss_total) / n,
        }
        history.append(metrics)
        if rank == 0:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "history": history,
                    "torch_rng": torch.get_rng_state(),
                    "order_rng": order.get_state(),
                    "schedule": sched.state_dict() if sched is not None else None,
                },
                ckpt_path,
            )
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
        if progress is not None:
            progress(epoch, spec.epochs, metrics)
    result = {
        "spec": config,
        "summary": summarise(history),
        "history": history,
        "wall_s": time.perf_counter() - t0,
        "world_size": world,
    }
    if rank == 0:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "build": {
                    "name": spec.model, "in_shape": list(data.in_shape), "num_classes": data.num_classes,
                    "p": list(spec.p), "variant": spec.variant, "input_p": spec.input_p,
                },
            },
            run_dir / "model.pt",
        )
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1) + "\n")
    _barrier()
    return result


def dropkit_batch_shard(start: int):
    """:func:`dropkit.rng.batch_shard` (a no-op shard start of 0 outside data parallelism)."""
    from dropkit.rng import batch_shard

    return batch_shard(start)


def load_model(run_dir: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """Rebuild the trained model of a finished run folder (``model.pt``), in eval mode."""
    ckpt = torch.load(Path(run_dir) / "model.pt", map_location=device, weights_only=True)
    b = ckpt["build"]
    model = build_model(b["name"], b["in_shape"], b["num_classes"], b["p"], variant=b["variant"], input_p=b["input_p"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


__all__ += ["load_model", "check_config"]
