"""The plan of an experiment: its dropout settings (:class:`Point`) and the config keys that define it.

Imported by :mod:`dropkit.lab.experiment` (which runs a plan) and :mod:`dropkit.lab.report`
(which reads one back), so neither imports the other.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from dropkit.lab.errors import ConfigError

__all__ = ["IDENTITY_KEYS", "LIMITS", "RECIPE_DEFAULTS", "Point", "apply_limits", "identity", "plan"]

#: Environment variables that cap the size of an experiment (the docs test runs every documented
#: command with them, docs/lab.md): flag (argparse dest) -> variable. Unset or empty: no cap.
LIMITS = {
    "epochs": "DROPKIT_LAB_MAX_EPOCHS",
    "seeds": "DROPKIT_LAB_MAX_SEEDS",
    "trials": "DROPKIT_LAB_MAX_TRIALS",
    "samples": "DROPKIT_LAB_MAX_SAMPLES",
    "train_size": "DROPKIT_LAB_MAX_TRAIN_SIZE",
    "val_size": "DROPKIT_LAB_MAX_VAL_SIZE",
}

#: Config keys that define an experiment (a run folder refuses a config that differs in any).
IDENTITY_KEYS = (
    "command",
    "dataset",
    "model",
    "variant",
    "schedule",
    "p",
    "rates",
    "input_p",
    "epochs",
    "epochs_factor",
    "seeds",
    "batch_size",
    "lr",
    "weight_decay",
    "val_fraction",
    "train_size",
    "val_size",
)

#: Keys added with the training recipes and user models, and their defaults: left out of the
#: identity while at the default, so folders made before them still resume.
RECIPE_DEFAULTS = {
    "optimizer": "adam",
    "momentum": 0.0,
    "nesterov": False,
    "lr_schedule": "constant",
    "max_norm": None,
    "hidden": None,
    "early_stopping": None,
    "task": "classification",
    "replace": True,
    "dataset_sha256": None,
}


def size_cap(flag: str) -> int | None:
    """The environment cap of a size flag (``"train_size"`` / ``"val_size"``), if one is set and valid."""
    text = os.environ.get(LIMITS.get(flag, ""), "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else None


def apply_limits(args: object) -> None:
    """Cap the flags of :data:`LIMITS` that ``args`` (an ``argparse.Namespace``) has at the values of their
    environment variables, in place: ``flag = min(flag, cap)`` (a size flag left at ``None``, all samples,
    becomes ``cap``; a size cap above a split's size keeps the whole split); one line on stderr names each cap
    applied.
    A capped value is what the experiment's config, command and folder record.

    Example: ``DROPKIT_LAB_MAX_EPOCHS=1 dropkit compare`` trains every run for 1 epoch.
    """
    for flag, var in LIMITS.items():
        text = os.environ.get(var, "").strip()
        if not text or not hasattr(args, flag):
            continue
        try:
            cap = int(text)
        except ValueError:
            cap = 0
        if cap < 1:
            raise ConfigError(f"Invalid value for `{var}`: expected an integer >= 1 (or unset). Received: {var}={text}")
        value = getattr(args, flag)
        if value is None or (isinstance(value, int) and value > cap):
            setattr(args, flag, cap)
            option = "--" + flag.replace("_", "-")
            print(f"{var}={cap}: {option} {'(all)' if value is None else value} capped at {cap}", file=sys.stderr)


def identity(config: dict) -> dict:
    """What ``config.json`` of an experiment folder holds: the identity keys, and the recipe keys not at their default."""
    out = {k: config.get(k) for k in IDENTITY_KEYS}
    out.update({k: config[k] for k, d in RECIPE_DEFAULTS.items() if config.get(k, d) != d})
    return out


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
            Point(
                "dropout p="
                + ",".join(f"{r:g}" for r in p)
                + (f" in={config['input_p']:g}" if config["input_p"] else ""),
                p,
                config["input_p"],
                _dropout_epochs(config),
            ),
        ]
    points = []
    for r in config["rates"]:
        if r == 0:
            points.append(Point("p=0", (0.0,), 0.0, config["epochs"]))
        else:
            label = f"p={r:g}" + (f" in={config['input_p']:g}" if config["input_p"] else "")
            points.append(Point(label, (float(r),), config["input_p"], _dropout_epochs(config)))
    return points
