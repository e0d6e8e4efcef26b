"""``replace_dropout``: convert every dropout-like module of a model to dropkit's, in place, with a report.

Recognised (each keeps its rate, mode, ``inplace`` and training flag, and what it computes):

============================================  ===============================================================
module                                        becomes
============================================  ===============================================================
``torch.nn.Dropout``                          :class:`dropkit.nn.Dropout` (``scaling=`` applies here)
``torch.nn.Dropout1d`` / ``Dropout3d``        :class:`dropkit.nn.Dropout1d` / ``Dropout3d``
``torch.nn.Dropout2d``                        :class:`dropkit.nn.Dropout2d`, reading a 3-D input as torch does,
                                              ``(N, C, L)`` (1-d channel dropout), not as unbatched ``(C, H, W)``
``torch.nn.AlphaDropout`` / ``Feature...``    :class:`dropkit.nn.AlphaDropout` / ``FeatureAlphaDropout``
timm ``DropPath``                             :class:`dropkit.nn.DropPath` (``drop_prob``, ``scale_by_keep``)
torchvision ``StochasticDepth``               ``"row"``: :class:`dropkit.nn.DropPath`; ``"batch"``: one draw
                                              for the whole batch (dropout with noise shape all ones)
torchvision ``DropBlock2d`` / ``DropBlock3d`` :class:`dropkit.nn.DropBlock2d` / ``DropBlock3d`` (per channel)
============================================  ===============================================================

timm and torchvision are never imported here: their classes are recognised only when those packages
are already imported (a model built from them has imported them). Any other module that looks like
dropout (a torch dropout subclass, a class named like one) is left in place and listed in the
report's ``not_replaced`` with the reason, as is anything dropkit cannot reproduce exactly.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from dropkit import functional as F
from dropkit._introspect import is_dropout_module
from dropkit._validation import check_choice
from dropkit.nn._base import SeededStream
from dropkit.nn.alpha import AlphaDropout, FeatureAlphaDropout
from dropkit.nn.drop_block import DropBlock2d, DropBlock3d
from dropkit.nn.drop_path import DropPath
from dropkit.nn.dropout import Dropout
from dropkit.nn.spatial import Dropout1d, Dropout2d, Dropout3d
from dropkit.rng import check_seed, key_ints
from dropkit.seed import SeedGenerator, check_seed_arg

__all__ = ["replace_dropout", "ReplaceReport", "layer_seed"]

_INT64 = 1 << 64


def layer_seed(root: int, path: str) -> int:
    """The 64-bit seed of the layer at qualified name ``path`` under root seed ``root``: BLAKE2b of both.

    A pure function of the two, so adding a layer elsewhere in the model changes no other layer's seed.

    Example:
        >>> dropkit.nn.replace.layer_seed(0, "encoder.layer.0.attention.dropout")   # an int in [0, 2**64)
    """
    digest = hashlib.blake2b(f"dropkit-layer-seed:{check_seed(root)}:{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class _Dropout2dTorchRanks(Dropout2d):
    """:class:`dropkit.nn.Dropout2d` that reads a 3-D input as ``torch.nn.Dropout2d`` does: ``(N, C, L)``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() == 3:
            return F.dropout1d(input, self.p, self.training, self.inplace, **self.key_kwargs())
        return super().forward(input)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", 3-D input as (N, C, L)"


class _BatchDropPath(SeededStream, torch.nn.Module):
    """Stochastic depth in torchvision's ``"batch"`` mode: one keep/drop draw for the whole input."""

    def __init__(self, p: float, *, seed: int | None = None):
        super().__init__()
        self.p = float(p)
        self._init_stream(seed)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, noise_shape=[1] * input.dim(), **self.key_kwargs())

    def extra_repr(self) -> str:
        return f"p={self.p}, mode='batch'"


@dataclass(frozen=True)
class Replaced:
    """One replaced layer: where it sits, the class it had, the class it has now, its seed (or None)."""

    path: str
    old: str
    new: str
    seed: int | None


@dataclass(frozen=True)
class NotReplaced:
    """A dropout-like layer left as it was, and why."""

    path: str
    cls: str
    reason: str


@dataclass
class ReplaceReport:
    """What :func:`replace_dropout` did: ``replaced`` and ``not_replaced`` layers, and the ``model``."""

    model: torch.nn.Module
    replaced: list[Replaced] = field(default_factory=list)
    not_replaced: list[NotReplaced] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} layer(s), left {len(self.not_replaced)}"]
        lines += [f"  {r.path or '(model)'}: {r.old} -> {r.new}" + (f" seed={r.seed}" if r.seed is not None else "")
                  for r in self.replaced]  # fmt: skip
        lines += [f"  {n.path or '(model)'}: {n.cls} kept ({n.reason})" for n in self.not_replaced]
        return "\n".join(lines)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _third_party() -> dict[type, Any]:
    """timm's and torchvision's dropout classes, from the modules already imported (never imported here)."""
    out: dict[type, Any] = {}
    timm_drop = sys.modules.get("timm.layers.drop")
    if timm_drop is not None and hasattr(timm_drop, "DropPath"):
        out[timm_drop.DropPath] = lambda m, seed: DropPath(
            float(m.drop_prob), bool(getattr(m, "scale_by_keep", True)), seed=seed
        )
    tv_sd = sys.modules.get("torchvision.ops.stochastic_depth")
    if tv_sd is not None and hasattr(tv_sd, "StochasticDepth"):
        out[tv_sd.StochasticDepth] = lambda m, seed: (
            DropPath(float(m.p), True, seed=seed) if m.mode == "row" else _BatchDropPath(float(m.p), seed=seed)
        )
    tv_db = sys.modules.get("torchvision.ops.drop_block")
    if tv_db is not None:
        for name, cls in (("DropBlock2d", DropBlock2d), ("DropBlock3d", DropBlock3d)):
            if hasattr(tv_db, name):
                out[getattr(tv_db, name)] = lambda m, seed, cls=cls: cls(
                    float(m.p), int(m.block_size), bool(m.inplace), seed=seed
                )
    return out


def _root_seed(seed: int | SeedGenerator | None) -> int | None:
    if isinstance(seed, torch.Tensor):
        raise TypeError("`seed` must be None, an int in [0, 2**64) or a dropkit.SeedGenerator; received a tensor")
    check_seed_arg(seed)
    if isinstance(seed, SeedGenerator):  # a fresh root per conversion: its next key, (seed, calls), mixed
        s, stream = key_ints(seed.next_key())
        return (s * 0x9E3779B97F4A7C15 + stream) % _INT64
    return seed


def replace_dropout(
    model: torch.nn.Module, seed: int | SeedGenerator | None = None, *, scaling: str = "inverted"
) -> ReplaceReport:
    """Replace every dropout-like module of ``model``, in place, by dropkit's (see the module docs for the list).

    Each new layer keeps the old one's rate (``p`` is the probability of **dropping**), ``inplace``, mode
    and training flag, and computes what the old one computed; with a ``seed``, each gets its own
    stream, seeded by :func:`layer_seed` from the root seed and its qualified name (a
    :class:`dropkit.SeedGenerator` root gives a fresh root per call and advances by one). A seeded layer's call
    never touches torch's global generator (not even a read); inside ``torch.utils.checkpoint`` the recompute
    reuses the forward's key. ``scaling``
    (``"inverted"`` or ``"classic"``) applies to plain ``torch.nn.Dropout`` layers. A model that is itself
    a dropout module is not replaced (there is no parent to hold the new one): it is reported.

    Returns:
        a :class:`ReplaceReport` (``print`` it for a table), whose ``model`` is ``model``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.3))
        >>> report = dropkit.nn.replace_dropout(model, seed=0)
        >>> report.replaced[0].path, type(model[1]).__name__
        ('1', 'Dropout')
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    scaling = check_choice(scaling, "scaling", ("inverted", "classic"))
    root = _root_seed(seed)
    known: dict[type, Any] = {
        torch.nn.Dropout: lambda m, s: Dropout(float(m.p), bool(m.inplace), scaling=scaling, seed=s),
        torch.nn.Dropout1d: lambda m, s: Dropout1d(float(m.p), bool(m.inplace), seed=s),
        torch.nn.Dropout2d: lambda m, s: _Dropout2dTorchRanks(float(m.p), bool(m.inplace), seed=s),
        torch.nn.Dropout3d: lambda m, s: Dropout3d(float(m.p), bool(m.inplace), seed=s),
        torch.nn.AlphaDropout: lambda m, s: AlphaDropout(float(m.p), bool(m.inplace), seed=s),
        torch.nn.FeatureAlphaDropout: lambda m, s: FeatureAlphaDropout(float(m.p), bool(m.inplace), seed=s),
        **_third_party(),
    }
    report = ReplaceReport(model)
    if type(model) in known or (is_dropout_module(model) and not isinstance(model, SeededStream)):
        report.not_replaced.append(NotReplaced("", _qualname(type(model)), "the model itself: no parent to hold it"))
        return report
    for path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            where = f"{path}.{name}" if path else name
            make = known.get(type(child))
            if make is None:
                if is_dropout_module(child) and not isinstance(child, SeededStream) and not _is_dropkit(child):
                    report.not_replaced.append(
                        NotReplaced(where, _qualname(type(child)), "not a class dropkit knows: its forward may differ")
                    )
                continue
            layer_s = None if root is None else layer_seed(root, where)
            new = make(child, layer_s)
            new.train(child.training)
            setattr(parent, name, new)
            report.replaced.append(Replaced(where, _qualname(type(child)), type(new).__name__, layer_s))
    return report


def _is_dropkit(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("dropkit.")
