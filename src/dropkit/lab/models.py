"""Models of the lab, built from dropkit's dropout layers: ``build_model(name, in_shape, num_classes, p, ...)``.

Names (:data:`MODELS`) and their dropout *sites* (``p`` is one rate for every site, or one
rate per site in this order):

* ``mlp`` -- Flatten, [input dropout], Linear(256), ReLU, **drop**, Linear(256), ReLU, **drop**,
  Linear(classes). Sites: ``hidden1, hidden2``. Default variant ``Dropout``.
* ``overfit-mlp`` -- three hidden layers of 256 ReLU units, **drop** after each, one output
  logit with a sigmoid (binary tasks). Sites: ``hidden1, hidden2, hidden3``.
* ``cnn`` -- Conv(32, 3x3), ReLU, **spatial drop**, MaxPool, Conv(64, 3x3), ReLU, **spatial drop**,
  MaxPool, Linear(128), ReLU, **drop**, Linear(classes); for (C, H, W) inputs. Sites:
  ``conv1, conv2, dense``. Default variant ``Dropout2d`` on the conv sites, ``Dropout`` on
  the dense one.
* ``lstm`` -- [input dropout], LSTM(128) with ``recurrent_dropout`` (``dropkit.nn.LSTM``),
  **locked drop** on its outputs, Linear(classes) on the last step; for sequences: a
  (L,) input is L steps of 1 feature, a (1, H, W) image is H steps of W features. Sites:
  ``output, recurrent``. Default variant ``LockedDropout``.

``variant=`` names a ``dropkit.nn`` class (:data:`VARIANTS`); it replaces the default at
every site where it makes sense (an element-wise variant on dense sites, a spatial one
on conv sites, a sequence one on sequence sites). ``input_p`` adds dropout on the input
(mlp, overfit-mlp, lstm). Every model has ``output_activation`` (``"softmax"`` or
``"sigmoid"``) and :func:`probabilities` turns its logits into probabilities.

Example (as the MC-dropout tools use it):
    >>> model = build_model("mlp", (1, 8, 8), 10, p=0.5)
    >>> probabilities(model, model(torch.randn(4, 1, 8, 8))).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

import dropkit
from dropkit._validation import check_p
from dropkit.lab import _names

__all__ = [
    "DEFAULT_HIDDEN",
    "MODELS",
    "SITES",
    "VARIANTS",
    "build_model",
    "make_model",
    "probabilities",
    "resolve_rates",
    "variant_choices",
]

MODELS = _names.MODELS

#: Hidden widths of the built-in MLPs (``hidden=`` changes them).
DEFAULT_HIDDEN = {"mlp": (256, 256), "overfit-mlp": (256, 256, 256)}

#: dropkit.nn class name -> the kinds of site it can serve ("dense", "conv", "seq").
VARIANTS: dict[str, tuple[str, ...]] = {
    "Dropout": ("dense", "conv", "seq"),
    "GaussianDropout": ("dense", "conv", "seq"),
    "AlphaDropout": ("dense",),
    "Dropout2d": ("conv",),
    "DropBlock2d": ("conv",),
    "LockedDropout": ("seq",),
}

#: Dropout sites of each model: (name, kind, default variant).
SITES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "mlp": (("hidden1", "dense", "Dropout"), ("hidden2", "dense", "Dropout")),
    "overfit-mlp": (
        ("hidden1", "dense", "Dropout"),
        ("hidden2", "dense", "Dropout"),
        ("hidden3", "dense", "Dropout"),
    ),
    "cnn": (("conv1", "conv", "Dropout2d"), ("conv2", "conv", "Dropout2d"), ("dense", "dense", "Dropout")),
    "lstm": (("output", "seq", "LockedDropout"), ("recurrent", "recurrent", "recurrent_dropout")),
}


def variant_choices(model: str) -> list[str]:
    """Variants that can serve at least one dropout site of ``model`` (whether installed or not)."""
    kinds = {kind for _, kind, _ in SITES[model]}
    return [v for v, ok in VARIANTS.items() if kinds & set(ok)]


def _sites(model: str, hidden: Sequence[int] | None = None) -> tuple[tuple[str, str, str], ...]:
    if hidden is not None and model in DEFAULT_HIDDEN:
        return tuple((f"hidden{i + 1}", "dense", "Dropout") for i in range(len(hidden)))
    return SITES[model]


def resolve_rates(
    model: str, p: float | Sequence[float], name: str = "p", hidden: Sequence[int] | None = None
) -> tuple[float, ...]:
    """One rate per dropout site of ``model``: ``p`` is a single rate or one per site
    (an MLP with ``hidden`` widths has one site per hidden layer)."""
    sites = _sites(model, hidden)
    n = len(sites)
    rates = (p,) if isinstance(p, (int, float)) else tuple(p)
    if len(rates) == 1:
        rates = rates * n
    if len(rates) != n:
        names = ", ".join(s for s, _, _ in sites)
        raise ValueError(
            f"Invalid value for `{name}`: expected one rate or {n} rates ({names}) for model {model!r}. "
            f"Received: {name}={','.join(str(r) for r in rates)}"
        )
    return tuple(check_p(r, name) for r in rates)


def _dropout_layer(variant: str, p: float) -> nn.Module:
    cls = getattr(dropkit.nn, variant)
    if variant == "LockedDropout":
        return cls(p, batch_first=True)
    if variant == "DropBlock2d":
        return cls(p, block_size=3)
    return cls(p)


def _site_variant(model: str, kind: str, default: str, variant: str | None) -> str:
    if variant is not None and kind in VARIANTS[variant]:
        return variant
    return default


def _check_variant(model: str, variant: str | None) -> None:
    if variant is None:
        return
    if variant not in VARIANTS:
        raise ValueError(
            f"Invalid value for `variant`: expected one of {tuple(VARIANTS)}. Received: variant={variant!r}"
        )
    if variant not in variant_choices(model):
        raise ValueError(
            f"Invalid value for `variant`: {variant} fits no dropout site of model {model!r}; "
            f"expected one of {tuple(variant_choices(model))}. Received: variant={variant!r}"
        )


class MLP(nn.Module):
    """Flatten, [input dropout], hidden ReLU layers each followed by dropout, a linear output."""

    def __init__(self, in_features, hidden, out_features, rates, variants, input_p=0.0, output_activation="softmax"):
        super().__init__()
        self.output_activation = output_activation
        layers: list[nn.Module] = [nn.Flatten()]
        if input_p > 0:
            layers.append(_dropout_layer(variants[0] if variants[0] != "AlphaDropout" else "Dropout", input_p))
        width = in_features
        for h, p, v in zip(hidden, rates, variants):
            layers += [nn.Linear(width, h), nn.ReLU(), _dropout_layer(v, p)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two conv blocks with spatial dropout, then a dense head with dropout."""

    output_activation = "softmax"

    def __init__(self, in_shape, num_classes, rates, variants):
        super().__init__()
        c, h, w = in_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            _dropout_layer(variants[0], rates[0]),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            _dropout_layer(variants[1], rates[1]),
            nn.MaxPool2d(2),
        )
        flat = 64 * (h // 4) * (w // 4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 128),
            nn.ReLU(),
            _dropout_layer(variants[2], rates[2]),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LSTMClassifier(nn.Module):
    """[Locked input dropout], an LSTM with recurrent dropout, locked dropout on its outputs, a linear head."""

    output_activation = "softmax"

    def __init__(self, in_shape, num_classes, rates, variants, input_p=0.0, hidden=128):
        super().__init__()
        self.seq_shape = (in_shape[0], 1) if len(in_shape) == 1 else (in_shape[-2], in_shape[-1])
        features = self.seq_shape[1]
        self.input_drop = _dropout_layer(variants[0], input_p) if input_p > 0 else nn.Identity()
        self.lstm = dropkit.nn.LSTM(features, hidden, batch_first=True, recurrent_dropout=rates[1])
        self.output_drop = _dropout_layer(variants[0], rates[0])
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.seq_shape)
        out, _ = self.lstm(self.input_drop(x))
        return self.head(self.output_drop(out)[:, -1])


def build_model(
    name: str,
    in_shape: Sequence[int] | int,
    num_classes: int,
    p: float | Sequence[float] = 0.5,
    *,
    variant: str | None = None,
    input_p: float = 0.0,
    hidden: Sequence[int] | None = None,
) -> nn.Module:
    """Build lab model ``name`` for inputs of shape ``in_shape`` (without the batch dimension).

    Args:
        name: ``mlp``, ``overfit-mlp``, ``cnn`` or ``lstm`` (see the module docstring).
        in_shape: per-sample input shape, e.g. ``(1, 28, 28)``; an int means ``(in_shape,)``.
        num_classes: classes of the task; ``overfit-mlp`` needs 2 and outputs one logit.
        p: drop rate for every dropout site, or one per site (``SITES[name]``); 0 builds the
            same architecture with identity dropout (the "no dropout" baseline).
        variant: a ``dropkit.nn`` class name from :data:`VARIANTS`, or ``None`` for the
            model's defaults.
        input_p: dropout rate on the inputs (0: none).
        hidden: widths of the hidden layers of ``mlp`` / ``overfit-mlp`` (default
            :data:`DEFAULT_HIDDEN`), e.g. ``(1024, 1024)``; one dropout site per layer.

    Returns:
        A ``torch.nn.Module`` mapping ``(batch, *in_shape)`` to logits ``(batch, classes)``
        (``(batch, 1)`` for ``overfit-mlp``), with ``output_activation`` set.
    """
    from dropkit._validation import check_choice

    check_choice(name, "model", MODELS)
    _check_variant(name, variant)
    in_shape = (int(in_shape),) if isinstance(in_shape, int) else tuple(int(s) for s in in_shape)
    if hidden is not None:
        if name not in DEFAULT_HIDDEN:
            raise ValueError(
                f"Invalid value for `hidden`: only {tuple(DEFAULT_HIDDEN)} have hidden widths to set; "
                f"received hidden={list(hidden)} for model {name!r}"
            )
        hidden = tuple(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"Invalid value for `hidden`: expected one or more ints >= 1. Received: hidden={hidden!r}")
    rates = resolve_rates(name, p, hidden=hidden)
    input_p = check_p(input_p, "input_p")
    sites = _sites(name, hidden)
    variants = [_site_variant(name, kind, default, variant) for _, kind, default in sites]
    if name == "mlp":
        return MLP(math.prod(in_shape), hidden or DEFAULT_HIDDEN[name], num_classes, rates, variants, input_p)
    if name == "overfit-mlp":
        if num_classes != 2:
            raise ValueError(
                f"model 'overfit-mlp' has one sigmoid output for binary tasks (2 classes); "
                f"received num_classes={num_classes}: use --model mlp or --dataset overfit"
            )
        return MLP(math.prod(in_shape), hidden or DEFAULT_HIDDEN[name], 1, rates, variants, input_p, "sigmoid")
    if name == "cnn":
        if len(in_shape) != 3:
            raise ValueError(
                f"model 'cnn' needs image inputs (channels, height, width); this dataset has inputs of "
                f"shape {in_shape}: use --dataset digits, mnist or fashion-mnist, or --model mlp"
            )
        if input_p > 0:
            raise ValueError("model 'cnn' has no input dropout; received input_p > 0")
        return CNN(in_shape, num_classes, rates, variants)
    if len(in_shape) not in (1, 2, 3) or (len(in_shape) == 3 and in_shape[0] != 1):
        raise ValueError(f"model 'lstm' needs (length,), (length, features) or (1, H, W) inputs; received {in_shape}")
    return LSTMClassifier(in_shape, num_classes, rates, variants, input_p)


def probabilities(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a lab model's logits: softmax, or for a sigmoid model
    ``[1 - s, s]`` so every model gives ``(batch, classes)``."""
    if getattr(model, "output_activation", "softmax") == "sigmoid":
        s = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1 - s, s], dim=-1)
    return torch.softmax(logits, dim=-1)


def make_model(
    name: str,
    in_shape: Sequence[int],
    num_classes: int,
    p: float | Sequence[float] = 0.5,
    *,
    variant: str | None = None,
    input_p: float = 0.0,
    hidden: Sequence[int] | None = None,
    replace: bool = True,
) -> nn.Module:
    """A built-in model (:func:`build_model`) or, when ``name`` is ``MODULE:FACTORY`` or
    ``FILE.py:FACTORY``, the user's model with its dropout rates set
    (:func:`dropkit.lab.user.build_user_model`). What a run folder's ``model.pt`` is rebuilt with.

    Example:
        >>> make_model("mlp", (1, 8, 8), 10, 0.5, hidden=(64,)).net[2].p
        0.5
    """
    from dropkit.lab.user import build_user_model, is_user_target

    if is_user_target(name):
        for arg, value, default in (("variant", variant, None), ("input_p", input_p, 0.0), ("hidden", hidden, None)):
            if value != default:
                raise ValueError(
                    f"Invalid value for `{arg}`: it applies to the built-in models only; model {name!r} is your own "
                    f"(set its dropout layers in the factory, or pick replace=True/False). Received: {arg}={value!r}"
                )
        return build_user_model(name, tuple(in_shape), num_classes, p, replace=replace)[0]
    return build_model(name, in_shape, num_classes, p, variant=variant, input_p=input_p, hidden=hidden)
