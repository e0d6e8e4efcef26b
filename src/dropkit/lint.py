"""A linter for the well-known dropout pitfalls: ``dropkit.lint(model, example_inputs=None) -> [Finding]``.

Codes are stable (filter on them):

====== ========= ===============================================================
code   severity  rule
====== ========= ===============================================================
DK101  error     dropout on the network's output, or between the last layer and its
                 final softmax / sigmoid
DK102  warning   element-wise dropout on convolutional feature maps (use spatial dropout)
DK103  warning   ``Dropout2d`` given a 3-D input
DK104  warning   an RNN with ``dropout`` > 0 and ``num_layers`` == 1 (it does nothing)
DK105  error     randomness active in eval mode (functional dropout without a training
                 flag, ungated attention ``dropout_p``, a dropout module forced to train)
DK106  warning   in-place dropout right after an in-place activation
DK107  warning   dropout immediately before BatchNorm (variance shift, Li et al. 2019)
DK108  warning   a rate >= 0.8, or input-layer dropout > 0.2
DK109  info      one rate used everywhere (tune per layer)
====== ========= ===============================================================

Layer order: with ``example_inputs`` (a tuple of positional arguments) the linter runs one
eval-mode forward (modes restored, no gradients) and uses the order in which leaf modules
are called and their input shapes; DK103 and the functional / attention part of DK105 need
it. Without inputs it uses the registration order of leaf modules, exact for
``nn.Sequential``-style models and a best effort otherwise.

Example:
    >>> for f in dropkit.lint(model, (torch.randn(1, 784),)):
    ...     print(f.code, f.severity, f.path, f.message)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

import sys
import types

from dropkit._introspect import drop_rate, is_dropout_module, saved_modes
from dropkit.guard import check_inference, inference

__all__ = ["Finding", "lint", "CODES"]

CODES = {
    "DK101": "error",
    "DK102": "warning",
    "DK103": "warning",
    "DK104": "warning",
    "DK105": "error",
    "DK106": "warning",
    "DK107": "warning",
    "DK108": "warning",
    "DK109": "info",
}
_SPATIAL = ("Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout", "DropBlock2d", "DropBlock3d")
_CONV = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_PASSTHROUGH = (torch.nn.Identity,)  # left out of the layer order below
_OUTPUT_ACT = (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Sigmoid, torch.nn.Flatten)
_CHANNELWISE = (
    torch.nn.ReLU,
    torch.nn.ReLU6,
    torch.nn.LeakyReLU,
    torch.nn.ELU,
    torch.nn.GELU,
    torch.nn.SiLU,
    torch.nn.Tanh,
    torch.nn.Sigmoid,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.MaxPool2d,
    torch.nn.MaxPool3d,
    torch.nn.AvgPool2d,
    torch.nn.AvgPool3d,
)
_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


@dataclass(frozen=True)
class Finding:
    """One lint finding. ``path`` is the module path (``""`` = the model itself)."""

    code: str
    severity: str  # "error" | "warning" | "info"
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.code} {self.severity:<7} {self.path or '<model>'}: {self.message} (fix: {self.fix})"

    def to_dict(self) -> dict:
        return asdict(self)


def _kind(module: torch.nn.Module) -> str | None:
    """'spatial', 'elementwise' or 'other' for dropout modules, else None."""
    if not is_dropout_module(module):
        return None
    names = [c.__name__ for c in type(module).__mro__]
    if any(n in _SPATIAL for n in names) or getattr(module, "share", None) == "spatial":
        return "spatial"
    if names[0].endswith("Dropout") and names[0] != "LockedDropout":  # Dropout, AlphaDropout, GaussianDropout, ...
        return "elementwise"
    return "other"


def _order(model: torch.nn.Module, example_inputs: Sequence | None) -> tuple[list[tuple[str, torch.nn.Module]], dict]:
    """Leaf modules in call order (or registration order) and the first input shape each saw."""
    leaves = {n: m for n, m in model.named_modules() if not list(m.children()) or is_dropout_module(m)}
    if example_inputs is None:
        return list(leaves.items()), {}
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, mod in leaves.items():

        def hook(m, args, _n=name):
            order.append(_n)
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(_n, tuple(args[0].shape))

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with inference(model), torch.random.fork_rng(devices=[]):
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    seen: dict[str, None] = dict.fromkeys(order)
    return [(n, leaves[n]) for n in seen], shapes


def lint(model: torch.nn.Module, example_inputs: Sequence | None = None) -> list[Finding]:
    """Check ``model`` for dropout pitfalls; returns findings (codes DK101-DK109, see the module docstring).

    Args:
        model: the ``torch.nn.Module`` to check (left as found: modes, buffers, RNG).
        example_inputs: optional tuple of positional arguments for one eval-mode forward,
            which gives the call order, the input shapes (DK102, DK103) and the eval-mode
            randomness check (DK105).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list)):
        raise TypeError(
            f"`example_inputs` must be a tuple of positional arguments; received {type(example_inputs).__name__}"
        )
    out: list[Finding] = []

    def add(code: str, path: str, message: str, fix: str) -> None:
        f = Finding(code, CODES[code], path, message, fix)
        if f not in out:
            out.append(f)

    seq, shapes = _order(model, example_inputs)
    core = [(n, m) for n, m in seq if not isinstance(m, _PASSTHROUGH)]
    drops = [(i, n, m) for i, (n, m) in enumerate(core) if is_dropout_module(m)]

    # DK101: the last layer before the output (ignoring softmax / sigmoid / identity) is dropout
    tail = [(n, m) for n, m in core if not isinstance(m, _OUTPUT_ACT)]
    if tail and is_dropout_module(tail[-1][1]) and drop_rate(tail[-1][1]) > 0:
        add(
            "DK101",
            tail[-1][0],
            f"{type(tail[-1][1]).__name__} is applied to the network's output",
            "remove it or move it before the last layer",
        )

    for i, name, m in drops:
        p, kind = drop_rate(m), _kind(m)
        shape = shapes.get(name)
        prev = [x for x in core[:i] if any(True for _ in x[1].parameters(recurse=False))]  # layers with weights
        before = core[i - 1][1] if i > 0 else None
        after = core[i + 1][1] if i + 1 < len(core) else None
        # DK102: element-wise dropout on conv feature maps
        if kind == "elementwise" and p > 0:
            on_maps = shape is not None and len(shape) >= 4
            if shape is None:
                j = i - 1
                while j >= 0 and isinstance(core[j][1], _CHANNELWISE):
                    j -= 1
                on_maps = j >= 0 and isinstance(core[j][1], _CONV)
            if on_maps:
                add(
                    "DK102",
                    name,
                    f"element-wise {type(m).__name__} on convolutional feature maps"
                    + (f" of shape {shape}" if shape else "")
                    + ": neighbouring pixels are correlated, so it barely regularizes",
                    "use dropkit.nn.Dropout2d (spatial dropout) or DropBlock2d",
                )
        # DK103: Dropout2d on a 3-D input
        if any(c.__name__ == "Dropout2d" for c in type(m).__mro__) and shape is not None and len(shape) == 3:
            add(
                "DK103",
                name,
                f"Dropout2d given a 3-D input {shape}: treated as one unbatched (C, H, W) image, "
                "or channel dropout on (N, C, L)",
                "use Dropout1d for (N, C, L) inputs, or pass (N, C, H, W)",
            )
        # DK106: in-place dropout after an in-place activation
        if (
            getattr(m, "inplace", False)
            and before is not None
            and getattr(before, "inplace", False)
            and _kind(before) is None
        ):
            add(
                "DK106",
                name,
                f"in-place {type(m).__name__} right after in-place {type(before).__name__}: "
                "it overwrites the tensor the activation saved for backward",
                "set inplace=False on one of them",
            )
        # DK107: dropout immediately before BatchNorm
        if after is not None and isinstance(after, _BATCHNORM) and p > 0:
            add(
                "DK107",
                name,
                f"{type(m).__name__} immediately before {type(after).__name__}: the variance the "
                "BatchNorm statistics see in training differs from eval (variance shift)",
                "put dropout after the last BatchNorm, or move BatchNorm before it",
            )
        # DK108: rates
        if p >= 0.8:
            add(
                "DK108",
                name,
                f"drop rate p={p:g} >= 0.8 keeps under 20% of units",
                "use p <= 0.5 (hidden) or check that p is the probability of DROPPING, not keeping",
            )
        elif not prev and p > 0.2:
            add(
                "DK108",
                name,
                f"input-layer dropout p={p:g} > 0.2 discards much of the input",
                "use p <= 0.2 on inputs (Srivastava et al. 2014)",
            )

    # DK104: RNN dropout with one layer
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.RNNBase) and m.dropout > 0 and m.num_layers == 1:
            add(
                "DK104",
                name,
                f"{type(m).__name__}(dropout={m.dropout:g}) with num_layers=1: torch applies it only "
                "between stacked layers, so it does nothing",
                "use num_layers >= 2 or a dropout layer on the outputs",
            )

    # DK105: randomness in eval mode
    with inference(model):  # a module forced to train (overridden .train/.eval) stays training here
        forced = [n for n, m in model.named_modules() if is_dropout_module(m) and m.training and drop_rate(m) > 0]
    for name in forced:
        add(
            "DK105",
            name,
            "dropout module stays in training mode after model.eval()",
            "do not override train()/eval() or set .training on dropout layers",
        )
    if example_inputs is not None:
        with saved_modes(model):
            model.eval()
            report = check_inference(model, tuple(example_inputs), runs=2)
        for c in report.culprits:
            if c.kind == "module-in-training" and c.path in forced:
                continue
            add(
                "DK105",
                c.path,
                f"random in eval mode: {c.what}",
                "pass training=self.training to functional dropout and gate dropout_p with self.training",
            )

    # DK109: one rate everywhere
    rates = [round(drop_rate(m), 6) for _, n, m in drops if drop_rate(m) > 0]
    if len(rates) >= 2 and len(set(rates)) == 1:
        add(
            "DK109",
            "",
            f"the same rate p={rates[0]:g} at all {len(rates)} dropout layers",
            "tune rates per layer (e.g. lower near the input, higher on wide layers)",
        )
    order = list(CODES)
    return sorted(out, key=lambda f: order.index(f.code))


class _CallableModule(types.ModuleType):
    """``dropkit.lint(model, (x,))`` is ``dropkit.lint.lint(model, (x,))``: the module is its own entry point."""

    def __call__(self, *args, **kwargs) -> list[Finding]:
        return lint(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
