"""Calibration and uncertainty metrics for class probabilities ``probs`` ``(N, C)`` and labels ``(N,)``.

* :func:`expected_calibration_error` -- ECE (Guo et al., ICML 2017): equal-width confidence
  bins, ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.
* :func:`nll` -- mean negative log-likelihood of the true class (nats).
* :func:`brier_score` -- mean over examples of ``sum_c (p_c - y_c)^2`` (multi-class Brier, in [0, 2]).
* :func:`accuracy_coverage` -- accuracy of the ``coverage`` most certain examples, for a curve
  of selective prediction (reject the most uncertain first).

Every function checks its inputs first and raises ``ValueError`` naming the argument:
``labels`` must be class indices in ``[0, C)``, ``probs`` probabilities in [0, 1] (NaN
refused) whose rows sum to 1 within ``1e-3 + C * eps(dtype)`` (pass a softmax, not logits).

Example:
    >>> r = dropkit.mc.predict(model, x, samples=50)
    >>> dropkit.metrics.expected_calibration_error(r.mean, y, bins=15)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit._validation import check_int

__all__ = ["expected_calibration_error", "nll", "brier_score", "accuracy_coverage"]


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs`` ``(N, C)`` in [0, 1] with rows summing to 1 (within ``1e-3 + C * eps(dtype)``),
    ``labels`` ``(N,)`` integers in [0, C); both as float64 / int64. ValueError naming the argument otherwise."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(f"`probs` must be a float tensor of shape (N, C); received {getattr(probs, 'shape', probs)!r}")
    if probs.layout != torch.strided:
        raise ValueError(f"`probs` must be a dense (strided) tensor; received layout={probs.layout}")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.shape != probs.shape[:1]
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"`labels` must be an integer tensor of shape ({probs.shape[0]},); received {getattr(labels, 'shape', labels)!r}"
            + (f" of dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else "")
        )
    n, classes = probs.shape
    if n == 0:
        raise ValueError("`probs` must hold at least one example")
    if classes == 0:
        raise ValueError("`probs` must hold at least one class (shape (N, C) with C >= 1)")
    p, y = probs.detach().double(), labels.detach().long()
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"Invalid value in `labels`: expected class indices in [0, {classes - 1}] ({classes} classes "
            f"in `probs`). Received: labels[{i}]={int(y[i])}"
        )
    outside = ~((p >= 0) & (p <= 1))  # NaN included
    if outside.any():
        i, j = (int(v) for v in outside.nonzero()[0])
        raise ValueError(
            f"Invalid value in `probs`: expected probabilities in [0, 1]. Received: probs[{i}, {j}]={float(p[i, j])!r}"
        )
    tol = 1e-3 + classes * torch.finfo(probs.dtype).eps
    err = (p.sum(1) - 1).abs()
    if bool((err > tol).any()):
        i = int(err.argmax())
        raise ValueError(
            f"Invalid value in `probs`: expected rows summing to 1 (within {tol:.3g}; class "
            f"probabilities, e.g. a softmax). Received: probs[{i}].sum()={float(p[i].sum())!r}"
        )
    return p, y


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width bins over confidence ``max_c p_c`` (bin ``b`` is ``((b-1)/bins, b/bins]``,
    the first bin includes 0)."""
    probs, labels = _check(probs, labels)
    bins = check_int(bins, "bins", minimum=1)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    n = probs.shape[0]
    acc = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct)
    cs = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    return float((acc - cs).abs().sum() / n)


def nll(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean ``-log p_{label}`` (probabilities clamped at ``eps``)."""
    probs, labels = _check(probs, labels)
    return float(-torch.log(probs.gather(1, labels[:, None]).clamp_min(eps)).mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``sum_c (p_c - onehot_c)^2``."""
    probs, labels = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(1).mean())


def accuracy_coverage(
    probs: torch.Tensor,
    labels: torch.Tensor,
    uncertainty: torch.Tensor | None = None,
    coverages: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
) -> list[tuple[float, float]]:
    """``[(coverage, accuracy)]``: accuracy on the ``ceil(coverage * N)`` least uncertain examples.

    ``uncertainty`` defaults to ``1 - max_c p_c``; pass e.g. an MC result's ``entropy`` or
    ``mutual_information``. Ties keep the original order (stable sort).
    """
    probs, labels = _check(probs, labels)
    if uncertainty is not None and not (isinstance(uncertainty, torch.Tensor) and uncertainty.is_floating_point()):
        raise ValueError(
            f"`uncertainty` must be a float tensor with one value per example; received "
            f"{getattr(uncertainty, 'dtype', type(uncertainty).__name__)}"
        )
    u = 1 - probs.max(1).values if uncertainty is None else uncertainty.detach().double().reshape(-1)
    if u.shape[0] != probs.shape[0]:
        raise ValueError(f"`uncertainty` must have one value per example ({probs.shape[0]}); received {tuple(u.shape)}")
    if not bool(torch.isfinite(u).all()):
        raise ValueError("Invalid value in `uncertainty`: expected finite numbers. Received: a NaN or infinity")
    order = torch.sort(u, stable=True).indices
    correct = (probs.argmax(1) == labels)[order].double()
    out = []
    for c in coverages:
        if not 0 < c <= 1:
            raise ValueError(f"Invalid value in `coverages`: expected numbers in (0, 1]. Received: {c!r}")
        k = max(1, int(torch.ceil(torch.tensor(c * probs.shape[0] - 1e-9)).item()))
        out.append((float(c), float(correct[:k].mean())))
    return out
