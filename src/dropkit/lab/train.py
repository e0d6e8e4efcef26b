"""One training run of the lab: resumable, reproducible, optionally data-parallel.

:func:`train_run` trains one model (one dropout setting, one seed) and writes its run folder
(every file through :mod:`dropkit._io`: atomic, mode 0644):

* ``config.json`` -- the resolved :class:`RunSpec` (a folder made with another config is refused);
* ``run_id`` -- a random id drawn when the run starts: with the SHA-256 of ``config.json``
  it is the run's identity, which every checkpoint carries (another run's checkpoint is
  refused, naming both runs);
* ``metrics.jsonl`` (+ ``metrics.jsonl.sha256``) -- one JSON object per completed epoch: train /
  validation loss and accuracy measured in eval mode after the epoch and the gap (``train_acc -
  val_acc``); the *running* training loss and accuracy as Keras's ``fit`` logs them
  (``train_loss_running``, ``train_acc_running``: the mean over the epoch's mini-batches, weighted
  by batch size, of the training-mode forward pass -- dropout active -- that each optimiser step
  used, taken before that step) and their gap ``gap_running`` (``train_acc_running - val_acc``);
  the learning rate. Regression runs have losses only. The report reads it only after its digest
  matched, or recomputes it from the verified checkpoint;
* ``checkpoint.pt`` (+ ``checkpoint.pt.sha256``) -- after every epoch: model, optimiser,
  epoch, history, torch's global RNG state (dropout masks draw their keys from it), the
  data-order generator's state and the dropout schedule. It is loaded only after its
  SHA-256 matched and with ``torch.load(weights_only=True)``; a corrupt one is moved aside
  (``checkpoint.pt.corrupt``) and the run restarts from scratch, recorded in
  ``result.json["restarted"]`` -- every random draw is a function of the seed, so it ends
  with the metrics of an uninterrupted run;
* ``best.pt`` -- with ``early_stopping``: the model at the best epoch so far;
* ``model.pt`` and ``result.json`` -- written last; a run with ``result.json`` is finished
  and skipped.

Recipes (all recorded in ``config.json``): ``optimizer`` adam | adamw | sgd (``momentum``,
``nesterov``), ``lr_schedule`` constant | cosine | step (the learning rate is a pure
function of the optimiser step: cosine from ``lr`` to 0 over the run, step = x0.1 at 50 %
and 75 % of it), ``max_norm`` C (after every step each unit's incoming weight vector of
every Linear / Conv layer is rescaled to L2 norm <= C, Srivastava et al. 2014),
``early_stopping`` PATIENCE (stop when validation accuracy -- loss for regression -- has
not improved for PATIENCE epochs; ``best.pt`` holds the best epoch's model).

A run killed at any moment (SIGKILL included) and started again continues from its last
completed epoch and ends with the same metrics as an uninterrupted run.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each global batch is split across the processes
and the model is wrapped in ``DistributedDataParallel``; each process runs its shard inside
:func:`dropkit.rng.batch_shard` (its first global sample index), so the dropout masks are
those a single process would draw for the whole batch, and the loss is scaled so that the
averaged gradient equals the single-process one. The running loss and correct-prediction count of
each shard are summed over the processes (one ``all_reduce`` per epoch), so ``train_loss_running``
and ``train_acc_running`` are means over every sample of the epoch, as in a single process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dropkit._io import (
    CorruptFileError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    atomic_write_verified,
    load_torch_verified,
    read_json,
    sha256_bytes,
)
from dropkit.lab.models import make_model
from dropkit.schedules import from_spec

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TASKS",
    "ConfigMismatch",
    "ForeignCheckpoint",
    "RunSpec",
    "UntrustedFactory",
    "apply_max_norm",
    "check_config",
    "check_factory",
    "dist_info",
    "evaluate",
    "load_model",
    "load_result",
    "lr_at",
    "metrics_text",
    "run_identity",
    "shard_bounds",
    "summarise",
    "train_run",
]

#: Testing hook: seconds to sleep in every epoch before its checkpoint (makes kill tests deterministic).
_SLOWDOWN_ENV = "DROPKIT_LAB_EPOCH_DELAY"

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
TASKS = ("classification", "regression")


class ConfigMismatch(ValueError):
    """A run folder exists with a different configuration."""

    user_facing = True


class ForeignCheckpoint(ValueError):
    """A run folder holds a checkpoint written by another run (another configuration or another folder)."""

    user_facing = True


#: Layers whose weight a max-norm constraint bounds (torch's convolutions share only a private base class).
_WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
             torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)  # fmt: skip


def run_identity(run_dir: Path, config: dict, *, create: bool) -> dict:
    """``{"run_id", "config_sha256"}`` of the run in ``run_dir``: the id is drawn once, when the run starts, and
    kept in ``run_dir/run_id``; the hash is the SHA-256 of the run's canonical config JSON. Every checkpoint
    carries both, and :func:`train_run` resumes only from a checkpoint whose identity is this one."""
    import json
    import uuid

    path = Path(run_dir) / "run_id"
    if create and not path.is_file():
        atomic_write_text(path, uuid.uuid4().hex + "\n")
    run_id = path.read_text().strip() if path.is_file() else ""
    return {"run_id": run_id, "config_sha256": sha256_bytes(json.dumps(config, sort_keys=True).encode())}


def _check_owner(ckpt_path: Path, ckpt: dict, identity: dict) -> None:
    owner = ckpt.get("run") if isinstance(ckpt, dict) else None
    if owner != identity:
        theirs = (
            f"run {owner.get('run_id') or '?'} (config {str(owner.get('config_sha256'))[:12]})"
            if isinstance(owner, dict)
            else "no run (it names none)"
        )
        raise ForeignCheckpoint(
            f"{ckpt_path} belongs to {theirs}, not to this run {identity['run_id']} (config "
            f"{identity['config_sha256'][:12]}); it is not used. Remove it (and {ckpt_path.name}.sha256) and run "
            "the same command again to train this run from scratch, or put it back in its own run folder"
        )


def metrics_text(history: list[dict]) -> str:
    """``metrics.jsonl``: one JSON object per epoch."""
    import json

    return "".join(json.dumps(m) + "\n" for m in history)


class UntrustedFactory(ValueError):
    """A file names a factory (code to import) that the user did not name on the command line."""

    user_facing = True


def check_factory(target: object, allowed: str | None, source: str | os.PathLike, flag: str, command: str) -> None:
    """Refuse a ``MODULE:FACTORY`` / ``FILE.py:FACTORY`` ``target`` read from the file ``source`` unless the user
    named the same target with ``flag`` (tools that read a run folder import no code the folder names).

    Example:
        >>> check_factory("mlp", None, "run/model.pt", "--model", "mc")  # a built-in name: nothing to import
    """
    from dropkit.lab.user import is_user_target

    if isinstance(target, str) and is_user_target(target) and not target.endswith(".npz") and target != allowed:
        named = f" (you named {flag} {allowed})" if allowed else ""
        raise UntrustedFactory(
            f"{source} names the factory {target!r}{named}; dropkit {command} imports no code that a file "
            f"names. To import and run that code (only if you trust it), pass {flag} {target}"
        )


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
    optimizer: str = "adam"
    momentum: float = 0.0
    nesterov: bool = False
    lr_schedule: str = "constant"
    max_norm: float | None = None
    #: widths of the built-in mlp's hidden layers (None: the model's default)
    hidden: tuple[int, ...] | None = None
    early_stopping: int | None = None
    task: str = "classification"
    #: user models: swap torch's dropout modules for dropkit's (dropkit.nn.replace_dropout)
    replace: bool = True

    def to_json(self) -> dict:
        """The spec as JSON; fields added after the first release are left out while at their
        default, so run folders made before them still match."""
        d = dataclasses.asdict(self)
        d["p"] = list(self.p)
        if self.hidden is not None:
            d["hidden"] = list(self.hidden)
        for f in dataclasses.fields(self)[_FIRST_NEW_FIELD:]:
            if d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_json(cls, d: dict) -> RunSpec:
        d = dict(d, p=tuple(d["p"]))
        if d.get("hidden") is not None:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


_FIRST_NEW_FIELD = [f.name for f in dataclasses.fields(RunSpec)].index("optimizer")


def check_config(path: Path, config: dict, what: str = "run folder") -> None:
    """Write ``config`` to ``path``, or refuse if ``path`` holds a different one."""
    path = Path(path)
    if path.is_file():
        old = read_json(path, fix=f"delete the folder {path.parent} to start over")
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            changes = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff)
            raise ConfigMismatch(
                f"{what} {path.parent} was created with a different configuration ({changes}); "
                "use another --out, or delete the folder to start over"
            )
        return
    atomic_write_json(path, config, indent=2, sort_keys=True)


def load_result(run_dir: Path) -> dict | None:
    """The run's ``result.json`` (``None`` while unfinished); a corrupt one names its path and the fix."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    return read_json(
        path, fix="delete it and run the same command again (the run is finished again from its checkpoint)"
    )


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
# Losses, metrics, recipes
# ---------------------------------------------------------------------------
def _loss_sum(out: torch.Tensor, y: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """Summed per-sample loss: cross-entropy (one logit: binary), or for regression the
    squared error averaged over each sample's outputs (MSE)."""
    if task == "regression":
        diff = out.reshape(len(y), -1) - y.reshape(len(y), -1).to(out.dtype)
        return (diff * diff).mean(1).sum()
    if out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.to(out.dtype), reduction="sum")
    return F.cross_entropy(out, y, reduction="sum")


def _correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (a 0-d integer tensor on ``out``'s device): argmax of the logits, or
    ``logit > 0`` for a single binary logit."""
    pred = (out.reshape(-1) > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
    return (pred == y).sum()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048, task: str = "classification"
) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` for regression) of ``model`` in eval mode (mode restored afterwards)."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(x[i : i + batch])
        loss += float(_loss_sum(out, y[i : i + batch], task))
        if task != "regression":
            correct += int(_correct(out, y[i : i + batch]))
    model.train(was)
    return loss / len(y), (None if task == "regression" else correct / len(y))


def _best(history: list[dict]) -> dict:
    """The best epoch: highest validation accuracy (lowest validation loss without accuracy); earliest on ties."""
    if "val_acc" in history[0]:
        return max(history, key=lambda m: (m["val_acc"], -m["epoch"]))
    return min(history, key=lambda m: (m["val_loss"], m["epoch"]))


def summarise(history: list[dict]) -> dict:
    """Final and best metrics of a run's per-epoch history (best = highest validation accuracy,
    or lowest validation loss for regression); ``best_train_acc`` and ``best_train_acc_running`` are
    the highest over the epochs. The ``..._running`` keys are present when the history has them."""
    best = _best(history)
    last = history[-1]
    out = {
        "epochs": len(history),
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "best_epoch": best["epoch"],
        "min_val_loss": min(m["val_loss"] for m in history),
    }
    if "train_loss_running" in last:
        out["final_train_loss_running"] = last["train_loss_running"]
    if "val_acc" in last:
        out.update(
            {
                "final_train_acc": last["train_acc"],
                "final_val_acc": last["val_acc"],
                "final_gap": last["gap"],
                "best_train_acc": max(m["train_acc"] for m in history),
                "best_val_acc": best["val_acc"],
            }
        )
        if "train_acc_running" in last:
            out.update(
                {
                    "final_train_acc_running": last["train_acc_running"],
                    "final_gap_running": last["gap_running"],
                    "best_train_acc_running": max(m["train_acc_running"] for m in history),
                }
            )
    return out


def lr_at(spec: RunSpec, step: int, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``: constant, cosine to 0, or x0.1 at 50 % and 75 %."""
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if spec.lr_schedule == "step":
        return spec.lr * 0.1 ** ((step >= total // 2) + (step >= (3 * total) // 4))
    return spec.lr


@torch.no_grad()
def apply_max_norm(model: torch.nn.Module, c: float) -> None:
    """Rescale each unit's incoming weight vector (row of a Linear, filter of a Conv) to L2 norm <= ``c``."""
    for m in model.modules():
        if isinstance(m, _WEIGHTED) and m.weight is not None:
            w = m.weight
            norms = w.reshape(w.shape[0], -1).norm(dim=1).clamp_min(1e-12)
            scale = (c / norms).clamp(max=1.0)
            w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))))


def _optimizer(spec: RunSpec, params) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
        )
    cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def _should_stop(spec: RunSpec, history: list[dict]) -> bool:
    return (
        bool(spec.early_stopping)
        and bool(history)
        and history[-1]["epoch"] - _best(history)["epoch"] >= spec.early_stopping
    )


def shard_bounds(batch: int, world: int) -> list[int]:
    """Where each process's shard of a global batch of ``batch`` samples starts (``world + 1`` bounds, an even split)."""
    return [batch * r // world for r in range(world + 1)]


def _build_kwargs(spec: RunSpec, data) -> dict:
    return {
        "name": spec.model,
        "in_shape": list(data.in_shape),
        "num_classes": data.num_classes,
        "p": list(spec.p),
        "variant": spec.variant,
        "input_p": spec.input_p,
        "hidden": None if spec.hidden is None else list(spec.hidden),
        "replace": spec.replace,
    }


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train_run(
    spec: RunSpec,
    data,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train (or resume, or skip) the run ``spec`` on ``data`` (a :class:`~dropkit.lab.datasets.Dataset`).

    Returns the run's result (``result.json``): the summary metrics, the history, the wall
    time and ``restarted`` (why the run restarted from scratch, if it did). ``progress(epoch,
    epochs, metrics)`` is called after each epoch.
    """
    run_dir = Path(run_dir)
    rank, world = dist_info()
    config = spec.to_json()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        check_config(run_dir / "config.json", config)
        identity = run_identity(run_dir, config, create=True)
    _barrier()
    if rank != 0:
        identity = run_identity(run_dir, config, create=False)
    done = load_result(run_dir)
    if done is not None:
        return done

    torch.manual_seed(spec.seed)
    model = make_model(**_build_kwargs(spec, data))
    model.to(device)
    opt = _optimizer(spec, model.parameters())
    sched = from_spec(spec.schedule, model) if spec.schedule else None
    order = torch.Generator().manual_seed(spec.seed)
    history: list[dict] = []
    ckpt_path = run_dir / "checkpoint.pt"
    restarted_path = run_dir / "restarted.json"
    restarted = read_json(restarted_path) if restarted_path.is_file() else []
    if ckpt_path.is_file():
        try:
            ckpt = load_torch_verified(ckpt_path)
        except CorruptFileError as exc:
            ckpt = None
            if rank == 0:
                os.replace(ckpt_path, ckpt_path.with_name("checkpoint.pt.corrupt"))
                restarted.append({"reason": str(exc), "moved_to": "checkpoint.pt.corrupt"})
                atomic_write_json(restarted_path, restarted)
                print(
                    f"dropkit: {exc}\ndropkit: {run_dir}: restarting this run from scratch (the corrupt file is kept "
                    "as checkpoint.pt.corrupt); it ends with the metrics of an uninterrupted run",
                    file=sys.stderr,
                )
        if ckpt is not None:
            _check_owner(ckpt_path, ckpt, identity)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            history = list(ckpt["history"])
            torch.set_rng_state(ckpt["torch_rng"])
            order.set_state(ckpt["order_rng"])
            if sched is not None:
                sched.load_state_dict(ckpt["schedule"])
    if rank == 0:  # metrics.jsonl mirrors the checkpoint (a line written after it may have been lost)
        atomic_write_verified(run_dir / "metrics.jsonl", metrics_text(history).encode())

    train_model = model
    if world > 1:
        dev = torch.device(device)
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    xs_tr, ys_tr = data.x_train.to(device), data.y_train.to(device)
    xs_va, ys_va = data.x_val.to(device), data.y_val.to(device)
    n = len(ys_tr)
    steps_per_epoch = -(-n // spec.batch_size)
    total_steps = spec.epochs * steps_per_epoch
    delay = float(os.environ.get(_SLOWDOWN_ENV, "0") or 0)
    t0 = time.perf_counter()
    for epoch in range(len(history) + 1, spec.epochs + 1):
        if _should_stop(spec, history):
            break
        model.train()
        perm = torch.randperm(n, generator=order).to(device)
        # this process's sums over the epoch of [loss, correct predictions] of the training-mode passes
        running = torch.zeros(2, dtype=torch.float64, device=device)
        step = (epoch - 1) * steps_per_epoch
        for i in range(0, n, spec.batch_size):
            idx = perm[i : i + spec.batch_size]
            b = len(idx)
            lo, hi = shard_bounds(b, world)[rank : rank + 2]
            with dropkit_batch_shard(lo):
                out = train_model(xs_tr[idx[lo:hi]])
            loss_sum = _loss_sum(out, ys_tr[idx[lo:hi]], spec.task)
            opt.zero_grad(set_to_none=True)
            (loss_sum * (world / b)).backward()  # DDP averages over processes: the gradient of sum / b
            lr = lr_at(spec, step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            step += 1
            if spec.max_norm is not None:
                apply_max_norm(model, spec.max_norm)
            if sched is not None:
                sched.step()
            running[0] += loss_sum.detach().double()
            if spec.task != "regression":
                running[1] += _correct(out.detach(), ys_tr[idx[lo:hi]])
        if world > 1:
            torch.distributed.all_reduce(running)  # the shards' sums: every sample of the epoch
        loss_running, correct_running = running.tolist()
        if delay:
            time.sleep(delay)
        train_loss, train_acc = evaluate(model, xs_tr, ys_tr, task=spec.task)
        val_loss, val_acc = evaluate(model, xs_va, ys_va, task=spec.task)
        metrics: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
        if train_acc is not None and val_acc is not None:  # classification (regression has no accuracy)
            acc_running = correct_running / n
            metrics.update(
                {
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "gap": train_acc - val_acc,
                    "train_acc_running": acc_running,
                    "gap_running": acc_running - val_acc,
                }
            )
        else:
            metrics["val_loss"] = val_loss
        metrics.update({"train_loss_running": loss_running / n, "lr": lr})
        history.append(metrics)
        if rank == 0:
            if spec.early_stopping and _best(history)["epoch"] == epoch:
                atomic_torch_save(
                    {"model": model.state_dict(), "epoch": epoch, "build": _build_kwargs(spec, data), "run": identity},
                    run_dir / "best.pt",
                )
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "history": history,
                    "torch_rng": torch.get_rng_state(),
                    "order_rng": order.get_state(),
                    "schedule": sched.state_dict() if sched is not None else None,
                    "run": identity,
                },
                ckpt_path,
            )
            atomic_write_verified(run_dir / "metrics.jsonl", metrics_text(history).encode())
        if progress is not None:
            progress(epoch, spec.epochs, metrics)
    result = {
        "spec": config,
        "summary": summarise(history),
        "history": history,
        "wall_s": time.perf_counter() - t0,
        "world_size": world,
        "stopped_early": len(history) < spec.epochs,
        "best_checkpoint": "best.pt" if spec.early_stopping else None,
        "restarted": restarted,
    }
    if rank == 0:
        atomic_torch_save(
            {"model": model.state_dict(), "build": _build_kwargs(spec, data), "run": identity}, run_dir / "model.pt"
        )
        atomic_write_json(run_dir / "result.json", result)
    _barrier()
    return result


def dropkit_batch_shard(start: int):
    """:func:`dropkit.rng.batch_shard` (a no-op shard start of 0 outside data parallelism)."""
    from dropkit.rng import batch_shard

    return batch_shard(start)


def load_model(
    run_dir: str | os.PathLike,
    device: str = "cpu",
    *,
    best: bool = False,
    factory: str | None = None,
    command: str = "mc",
) -> torch.nn.Module:
    """Rebuild the trained model of a finished run folder (``model.pt``; ``best.pt`` with ``best=True``), in eval mode.

    The file must belong to this run (:func:`run_identity`: its ``run_id`` and config hash), else
    :class:`ForeignCheckpoint`. A model built by a user factory (``MODULE:FACTORY``) is rebuilt only when
    ``factory`` names the same target (the user's ``--model`` flag): else :class:`UntrustedFactory`, before
    anything is imported.
    Raises :class:`dropkit._io.CorruptFileError` naming the file when it is truncated or corrupt.
    """
    path = Path(run_dir) / ("best.pt" if best else "model.pt")
    ckpt = load_torch_verified(
        path, map_location=device, fix="delete it and its result.json, then run the lab command again to rebuild it"
    )
    build = ckpt.get("build") if isinstance(ckpt, dict) else None
    if not isinstance(build, dict) or not isinstance(build.get("name"), str):
        raise CorruptFileError(f"{path} has no model description ('build'); delete it and run the lab command again")
    config_path = Path(run_dir) / "config.json"
    config = read_json(config_path, fix="restore it or delete the run folder") if config_path.is_file() else {}
    _check_owner(path, ckpt, run_identity(Path(run_dir), config, create=False))
    check_factory(build["name"], factory, path, "--model", command)
    model = make_model(**ckpt["build"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
