"""Step 2 of :func:`dropkit.mc.predict`, the plan: which ways of sampling to try, and the chunks of each forward.

The ways, fastest first (each falls back to the next; the last always works): ``"fold"`` (the first
dropout's channel masks summed through the next convolution, :mod:`dropkit.mc._fold`), ``"prefix"``
(the network before the first stochastic module runs once, its output repeated ``T`` times) and
``"repeat"`` (the input repeated ``T`` times). A forward holds about ``k * e * A`` bytes of
activations for ``k`` samples of ``e`` examples, ``A`` = the per-example bytes of the module outputs
that run per sample (measured by the probe); the plan keeps ``k * e * A <= memory_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dropkit import kernels
from dropkit.mc._fold import FoldPlan, plan_fold
from dropkit.mc._probe import ProbeResult, sample_bytes

__all__ = ["Plan", "plan"]


@dataclass(frozen=True)
class Plan:
    """How :func:`dropkit.mc.predict` draws its samples (fixed before the first sampling forward)."""

    paths: list[str]  # the stochastic modules, first-called first (the probe's answer)
    calls: dict[str, set[str]]  # path -> kinds of random call it makes
    prefix_path: str | None  # the first stochastic module, where "prefix" repeats its input; None: no prefix
    fold: FoldPlan | None  # the fold of the first dropout into the next convolution; None: it does not apply
    ways: tuple[str, ...]  # "fold", "prefix", "repeat": the ways to try, fastest first
    k: int  # samples per forward
    e: int  # examples per slice
    consistent: bool  # one set of T masks for every example


def plan(
    model: torch.nn.Module,
    xs: tuple[torch.Tensor, ...],
    probed: ProbeResult,
    samples: int,
    *,
    share_prefix: bool,
    consistent_masks: bool,
    memory_budget: int,
) -> Plan:
    """The ways to sample ``samples`` forwards of ``model`` on the batch ``xs`` and their chunks:
    ``k`` samples of ``e`` examples per forward with ``k * e * bytes_per_sample <= memory_budget``
    (all ``T`` samples of a slice in one forward when they fit; all examples in one slice with
    ``consistent_masks``; one sample per forward for a seq-first stochastic module)."""
    T, batch, paths = samples, xs[0].shape[0], probed.paths
    prefix_path = paths[0] if share_prefix and paths[0] != "" else None
    named = dict(model.named_modules())
    seq_first = any(getattr(named[p], "batch_first", True) is False for p in paths)
    if seq_first:
        prefix_path = None  # a mask shared along dim 0 (seq-first locked dropout): one sample per forward
    fold = None
    if prefix_path is not None and kernels.mask_fold_compiled(xs[0].device):
        fold = plan_fold(named, prefix_path, set(paths), T)
    # per-sample activation bytes: what follows the layers the fold replaces, or the first stochastic module on
    if fold is not None:
        row_bytes = sample_bytes(probed, fold.paths[fold.end - 1], inclusive=True)
    elif prefix_path is not None:
        row_bytes = sample_bytes(probed, prefix_path, inclusive=False)
    else:
        row_bytes = probed.row_bytes
    # chunks: slices of `e` examples (all of them with consistent masks, which must see one
    # set of T masks), `k` samples per forward, k * e * row_bytes <= budget
    budget = memory_budget
    if consistent_masks or T * batch * row_bytes <= budget:
        e = batch
        k = max(1, min(T, budget // max(1, batch * row_bytes)))
    else:
        e = max(1, min(batch, budget // (T * row_bytes)))
        k = T if T * row_bytes <= budget else max(1, budget // row_bytes)
    if seq_first:
        k = 1
    ways = tuple(w for w, ok in (("fold", fold), ("prefix", prefix_path), ("repeat", True)) if ok)
    return Plan(paths, probed.calls, prefix_path, fold, ways, k, e, consistent_masks)
