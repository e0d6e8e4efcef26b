"""Backend dispatch for the mask contract.

Two primitives carry every dropout in dropkit; each backend implements both and
returns bit-identical results (tests compare every backend with
:mod:`dropkit.kernels.reference`):

* ``keep_mask(n, p, seed, stream, offset, device)`` -> 1-D ``bool`` tensor, ``True`` = kept;
* ``dropout_mul(x, p, scale, seed, stream, offset, out=None)`` -> ``x * (keep ? scale : 0)``
  for a contiguous ``x``, the product taken in float32 (float64 for float64 inputs)
  and rounded once to ``x.dtype``.

One more primitive serves Monte-Carlo dropout (:mod:`dropkit.mc`): ``mask_fold``, T binary
masks on the input of a linear map summed over per-unit contributions (compiled CPU
kernel for float32, torch reference elsewhere; equal up to rounding, not bit for bit).

Backends, in order of preference: the compiled CPU kernel (``kernels/cpu``,
AVX-512 / AVX2 / NEON / scalar C) for CPU tensors, Triton (``kernels/triton``) for
CUDA tensors, and the portable torch reference everywhere. :func:`backend_info`
says which one is active for a device and why.
"""

from __future__ import annotations

import os

import torch

from dropkit.kernels import reference

__all__ = ["keep_mask", "dropout_mul", "mask_fold", "mask_fold_compiled", "backend_info", "set_backend", "BACKENDS"]

#: Names accepted by :func:`set_backend`.
BACKENDS = ("auto", "reference", "cpu", "triton")
_forced: str | None = os.environ.get("DROPKIT_BACKEND") or None


def set_backend(name: str = "auto") -> None:
    """Force a backend for every later call (``"auto"`` restores the default choice).

    ``DROPKIT_BACKEND=reference`` in the environment does the same at import.
    """
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"`name` must be one of {BACKENDS}; received {name!r}")
    _forced = None if name == "auto" else name


def _cpu_backend():
    try:
        from dropkit.kernels import cpu
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return cpu if cpu.available() else None


def _triton_backend():
    try:
        from dropkit.kernels import triton as tk
    except ImportError:
        return None
    return tk if tk.available() else None


def _select(device: torch.device):
    choice = _forced or "auto"
    if choice == "reference":
        return reference
    if choice == "cpu":
        be = _cpu_backend()
        if be is None:
            raise RuntimeError(f"the compiled CPU kernel was forced but is not available: {backend_info('cpu')['reason']}")
        return be
    if choice == "triton":
        be = _triton_backend()
        if be is None:
            raise RuntimeError("the Triton backend was forced but Triton is not available")
        return be
    if device.type == "cpu":
        return _cpu_backend() or reference
    if device.type == "cuda":
        return _triton_backend() or reference
    return reference


def backend_info(device: torch.device | str = "cpu") -> dict[str, str]:
    """Which backend serves ``device`` and why: ``{"backend": ..., "reason": ...}``.

    Example:
        >>> dropkit.kernels.backend_info("cpu")
        {'backend': 'cpu-avx512', 'reason': 'compiled kernel loaded from ...'}
    """
    device = torch.device(device)
    be = _select(device)
    if be is reference:
        if _forced == "reference":
            reason = "forced by set_backend('reference') or DROPKIT_BACKEND=reference"
        elif device.type == "cpu":
            try:
                from dropkit.kernels import cpu

                reason = cpu.status()[1]
            except ImportError:  # pragma: no cover
                reason = "dropkit.kernels.cpu is missing"
        elif device.type == "cuda":
            reason = "Triton is not installed or not usable; using torch integer ops"
        else:
            reason = f"no fast backend for device type {device.type!r}"
        return {"backend": "reference", "reason": reason}
    name, reason = be.status()
    return {"backend": name, "reason": reason}


def keep_mask(n: int, p: float, seed: int, stream: int, offset: int, device: torch.device) -> torch.Tensor:
    """1-D ``bool`` keep mask of ``n`` elements (``True`` = kept) on ``device``."""
    return _select(device).keep_mask(n, p, seed, stream, offset, device)


def dropout_mul(
    x: torch.Tensor, p: float, scale: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` for contiguous ``x``; writes into ``out`` when given."""
    return _select(x.device).dropout_mul(x, p, scale, seed, stream, offset, out)


def mask_fold_compiled(device: torch.device | str = "cpu") -> bool:
    """Whether :func:`mask_fold` runs the compiled kernel for float32 tensors on ``device``."""
    return torch.device(device).type == "cpu" and _select(torch.device("cpu")) is not reference


def mask_fold(A: torch.Tensor, X: torch.Tensor, mask: torch.Tensor, scale: float, R: int, P: int,
              bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``out[t, b, p*O + o] = act(scale * max_r sum_d [mask[t, b, d] != 0] * sum_k A[d, k, o] * X[b, d, k, r, p]
    + bias[o])``, ``act`` = ReLU if ``relu`` else the identity, no bias if ``bias`` is None.

    ``A`` ``(D, K, O)``, ``X`` ``(B or 1, D, K, R, P)``, ``mask`` ``(T, B, D)`` with values 0 or
    ``scale`` (else ``ValueError``); returns ``(T, B, P * O)``. The compiled kernel serves
    float32 CPU tensors (:func:`mask_fold_compiled`), the torch reference everything else.
    """
    if A.dtype == X.dtype == mask.dtype == torch.float32 and A.is_cpu and mask_fold_compiled():
        return _select(torch.device("cpu")).mask_fold(A, X, mask, scale, R, P, bias, relu)
    return reference.mask_fold(A, X, mask, scale, R, P, bias, relu)
