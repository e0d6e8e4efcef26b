"""Backend dispatch for the mask contract.

Two primitives carry every dropout in dropkit; each backend implements both and
returns bit-identical results (tests compare every backend with
:mod:`dropkit.kernels.reference`):

* ``keep_mask(n, p, seed, stream, offset, device)`` -> 1-D ``bool`` tensor, ``True`` = kept;
* ``dropout_mul(x, p, scale, seed, stream, offset, out=None)`` -> ``x * (keep ? scale : 0)``
  for a contiguous ``x``, the product taken in float32 (float64 for float64 inputs)
  and rounded once to ``x.dtype``.

More primitives, on the same counters:

* ``uniform(n, seed, stream, offset, device, dtype=float64)`` and ``normal(...)``: the samples
  of :func:`dropkit.rng.uniform` / :func:`dropkit.rng.normal`, bit for bit (normal contract v2:
  Box-Muller in exactly rounded float32 arithmetic, the same bits on every backend);
* ``gaussian_mul(x, sigma, seed, stream, offset, out=None)`` -> ``x * (1 + sigma * z)`` with ``z``
  the normals of ``normal``, in float32 (float64 for float64 inputs), rounded once to ``x.dtype``
  (``x`` of any strides; the result is contiguous);
* ``fused_bias_act_dropout_add(a, x, bias, activation, backward, ...)``: one pass of the fused
  residual op (forward or backward);
* ``mask_fold``, for Monte-Carlo dropout (:mod:`dropkit.mc`): T binary masks on the input of a
  linear map summed over per-unit contributions (compiled CPU kernel for float32, torch
  reference elsewhere; equal up to rounding, not bit for bit).

This module is the single dispatch point: every backend module declares the primitives it
computes in ``CAPABILITIES`` (see :func:`capabilities`), and a primitive the chosen backend
lacks is computed by :mod:`dropkit.kernels.reference`. Callers never look at which module
serves them.

Counters: a call covers the global element indices ``offset .. offset + n - 1`` (for every
primitive, ``normal`` included), and these must stay below ``2**64``;
a call that would pass it raises ``ValueError`` instead of wrapping around (the backends
would disagree on the wrap).

Backends, in order of preference: the compiled CPU kernel (``kernels/cpu``,
AVX-512 / AVX2 / NEON / scalar C) for CPU tensors, Triton (``kernels/triton``) for
CUDA tensors, and the portable torch reference everywhere. :func:`backend_info`
says which one is active for a device and why.
"""

from __future__ import annotations

import os
import warnings

import torch

from dropkit.kernels import reference

#: The rounding every primitive ends with: a compute-dtype result to the input dtype under the 16-bit NaN rule.
round_to = reference.round_to

__all__ = [
    "round_to",
    "keep_mask",
    "dropout_mul",
    "uniform",
    "normal",
    "gaussian_mul",
    "fused_bias_act_dropout_add",
    "mask_fold",
    "mask_fold_compiled",
    "capabilities",
    "graph_kernels",
    "backend_info",
    "set_backend",
    "BACKENDS",
    "PRIMITIVES",
]

#: The primitives a backend may declare in its ``CAPABILITIES``.
PRIMITIVES = frozenset({"keep_mask", "dropout_mul", "uniform", "normal", "gaussian_mul", "fused", "mask_fold"})

#: Names accepted by :func:`set_backend`.
BACKENDS = ("auto", "reference", "cpu", "triton")


def _backend_from_env() -> str | None:
    """``DROPKIT_BACKEND``, validated once at import (a bad value: one warning naming it, then ignored)."""
    raw = os.environ.get("DROPKIT_BACKEND", "").strip()
    if raw and raw not in BACKENDS:
        warnings.warn(
            f"dropkit: DROPKIT_BACKEND={raw!r} is not valid (accepted: {', '.join(BACKENDS)}); "
            "ignoring it: the backend is chosen per device",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return None if raw in ("", "auto") else raw


_forced: str | None = _backend_from_env()


def set_backend(name: str = "auto") -> None:
    """Force a backend for every later call (``"auto"`` restores the default choice).

    ``DROPKIT_BACKEND=reference`` in the environment does the same at import.
    """
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"`name` must be one of {BACKENDS}; received {name!r}")
    _forced = None if name == "auto" else name


_CPU_MODULE: list = []  # the imported dropkit.kernels.cpu (an import statement per call costs more than a small call's work)


def _cpu_backend():
    if not _CPU_MODULE:
        try:
            from dropkit.kernels import cpu
        except ImportError:  # pragma: no cover - the module ships with the package
            return None
        _CPU_MODULE.append(cpu)
    cpu = _CPU_MODULE[0]
    return cpu if cpu.available() else None


def _triton_backend():
    try:
        from dropkit.kernels import triton as tk
    except ImportError:
        return None
    return tk if tk.available() else None


def _select(device: torch.device):
    if _forced is None and device.type == "cpu":  # the common case first
        return _cpu_backend() or reference
    choice = _forced or "auto"
    if choice == "reference":
        return reference
    if choice == "cpu":
        be = _cpu_backend()
        if be is None:
            raise RuntimeError(
                f"the compiled CPU kernel was forced but is not available: {backend_info('cpu')['reason']}"
            )
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


def _for(op: str, device: torch.device):
    """The backend that computes primitive ``op`` for ``device``: the selected one if it can, else the reference."""
    be = _select(device)
    return be if op in be.CAPABILITIES else reference


def graph_kernels(device: torch.device):
    """The graph launches (:mod:`dropkit.kernels.triton.graph`) when compiled Triton kernels serve ``device``
    (CUDA, not the interpreter) and ``DROPKIT_TRITON_GRAPH`` does not turn them off; else None, and the
    ops stay whole in a compiled graph. Called while a graph is traced, never in eager calls."""
    if device.type != "cuda":
        return None
    from dropkit.kernels import triton as tk
    from dropkit.kernels.triton import graph

    # another backend (forced, or no usable Triton) keeps the op; an interpreted kernel cannot be traced
    return graph if _select(device) is tk and not tk.interpreter_enabled() and graph.enabled() else None


def capabilities(device: torch.device | str = "cpu") -> frozenset[str]:
    """The primitives (of :data:`PRIMITIVES`) that the backend serving ``device`` computes itself;
    the others run on the torch reference.

    Example:
        >>> sorted(dropkit.kernels.capabilities("cpu"))
        ['dropout_mul', 'gaussian_mul', 'keep_mask', 'mask_fold', 'normal', 'uniform']
    """
    return frozenset(_select(torch.device(device)).CAPABILITIES)


_M64 = (1 << 64) - 1


def _check_counters(n: int, seed: int, stream: int, offset: int, what: str = "offset + n") -> None:
    """Every element index of a call must lie in [0, 2**64); seed and stream are 64-bit words."""
    if n < 0:
        raise ValueError(f"`n` must be >= 0; received n={n}")
    if not 0 <= seed <= _M64 or not 0 <= stream <= _M64:
        raise ValueError(f"`seed` and `stream` must be ints in [0, 2**64); received seed={seed}, stream={stream}")
    if offset < 0 or offset + n > 1 << 64:
        raise ValueError(
            f"the element indices of a call must stay in [0, 2**64): need offset >= 0 and {what} <= "
            f"2**64; received offset={offset}, n={n}"
        )


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
    """1-D ``bool`` keep mask of ``n`` elements (``True`` = kept) on ``device``.

    Element ``j`` is kept iff the 16-bit lane of global index ``offset + j`` is ``>= rng.threshold(p)``.

    Example:
        >>> kernels.keep_mask(4, 0.5, seed=1, stream=0, offset=0, device=torch.device("cpu"))
        tensor([ True, False,  True,  True])
    """
    _check_counters(n, seed, stream, offset)
    return _for("keep_mask", device).keep_mask(n, p, seed, stream, offset, device)


def dropout_mul(
    x: torch.Tensor, p: float, scale: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * (keep ? scale : 0)`` for contiguous ``x`` (any shape), the product in float32
    (float64 for float64 ``x``) rounded once to ``x.dtype``; writes into ``out`` when given.
    """
    _check_counters(x.numel(), seed, stream, offset)
    return _for("dropout_mul", x.device).dropout_mul(x, p, scale, seed, stream, offset, out)


def uniform(
    n: int, seed: int, stream: int, offset: int, device: torch.device | str, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    r"""1-D tensor of ``n`` uniform samples in (0, 1) on ``device``, bit-identical to
    ``rng.uniform((n,), seed, stream, offset, dtype=dtype, device=device)``.

    Element ``j``: :math:`u = (w + 0.5)\,2^{-32}` in float64, then rounded to ``dtype``, ``w`` the
    32-bit Philox word of global index ``e = offset + j`` (word ``e % 4`` of block ``e // 4``).
    The compiled kernel computes it on CPU (float32/float64 directly), the torch reference elsewhere.

    Example:
        >>> u = kernels.uniform(1000, seed=3, stream=0, offset=0, device="cpu")   # float64, shape (1000,)
    """
    _check_counters(n, seed, stream, offset)
    device = torch.device(device)
    return _for("uniform", device).uniform(n, seed, stream, offset, device, dtype)


def normal(
    n: int, seed: int, stream: int, offset: int, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""1-D tensor of ``n`` standard-normal samples on ``device``, bit-identical to
    ``rng.normal((n,), seed, stream, offset, dtype=dtype, device=device)`` on every backend.

    Normal contract v2 (docs/rng.md): element ``e = offset + j`` uses Philox block ``e // 4`` (the
    counters of :func:`uniform`); lane ``l = e % 4`` takes the word pair ``(w[2(l//2)], w[2(l//2)+1])``
    and is :math:`\sqrt{-2 \ln u_1}\cos\theta` (even ``l``) or :math:`\sin\theta` (odd ``l``), computed
    in exactly rounded float32 operations with polynomial log/cos/sin, then converted to ``dtype``.

    Example:
        >>> z = kernels.normal(1000, seed=3, stream=0, offset=0, device="cpu")   # float32, shape (1000,)
    """
    _check_counters(n, seed, stream, offset)
    device = torch.device(device)
    return _for("normal", device).normal(n, seed, stream, offset, device, dtype)


def gaussian_mul(
    x: torch.Tensor, sigma: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * (1 + sigma * z)`` for ``x`` of any shape and strides (element ``j`` in row-major logical
    order), ``z`` the normals of :func:`normal` for elements ``offset .. offset + x.numel() - 1``: in float32 with ``sigma`` rounded to float32 once
    (float64 for float64 ``x``), rounded once to ``x.dtype`` (16-bit NaN rule); writes into ``out`` when given.

    Example:
        >>> y = kernels.gaussian_mul(torch.ones(8), 1.0, seed=3, stream=0, offset=0)   # 1 + z
    """
    _check_counters(x.numel(), seed, stream, offset)
    return _for("gaussian_mul", x.device).gaussian_mul(x, sigma, seed, stream, offset, out)


def fused_bias_act_dropout_add(
    a: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    backward: bool,
    p: float,
    scale: float,
    seed: int,
    stream: int,
    offset: int,
) -> torch.Tensor:
    r"""One pass of the fused residual op over contiguous tensors of one dtype, ``h = x + bias`` (``bias``
    of shape ``(x.shape[-1],)`` or None), result in ``x``'s shape and dtype.

    Forward (``a`` = residual): :math:`a + \mathrm{act}(h) \cdot f`; backward (``a`` = the output's
    gradient): :math:`a \cdot f \cdot \mathrm{act}'(h)` (the gradient of ``x``), with
    :math:`f = \mathrm{keep} ? \mathrm{scale} : 0` from the mask of :func:`keep_mask`;
    ``activation`` is one of ``reference.FUSED_ACTIVATIONS``. Triton runs it as one kernel where it
    serves the device; elsewhere torch ops with the mask of the fastest backend.

    Example:
        >>> y = kernels.fused_bias_act_dropout_add(res, x, b, "gelu", False, 0.1, 1 / 0.9, 7, 0, 0)
    """
    if activation not in reference.FUSED_ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {reference.FUSED_ACTIVATIONS}; received {activation!r}")
    _check_counters(x.numel(), seed, stream, offset)
    be = _for("fused", x.device)
    if be is reference:
        return reference.fused_bias_act_dropout_add(
            a,
            x,
            bias,
            activation,
            backward,
            p,
            scale,
            seed,
            stream,
            offset,
            keep_mask=_for("keep_mask", x.device).keep_mask,
        )
    return be.fused_bias_act_dropout_add(a, x, bias, activation, backward, p, scale, seed, stream, offset)


def mask_fold_compiled(device: torch.device | str = "cpu") -> bool:
    """Whether :func:`mask_fold` runs the compiled kernel for float32 tensors on ``device``."""
    return torch.device(device).type == "cpu" and _for("mask_fold", torch.device("cpu")) is not reference


def mask_fold(
    A: torch.Tensor,
    X: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    R: int,
    P: int,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``out[t, b, p*O + o] = act(scale * max_r sum_d [mask[t, b, d] != 0] * sum_k A[d, k, o] * X[b, d, k, r, p]
    + bias[o])``, ``act`` = ReLU if ``relu`` else the identity, no bias if ``bias`` is None.

    ``A`` ``(D, K, O)``, ``X`` ``(B or 1, D, K, R, P)``, ``mask`` ``(T, B, D)`` with values 0 or
    ``scale`` (else ``ValueError``); returns ``(T, B, P * O)``. The compiled kernel serves
    float32 CPU tensors (:func:`mask_fold_compiled`), the torch reference everything else.
    """
    if A.dtype == X.dtype == mask.dtype == torch.float32 and A.is_cpu and mask_fold_compiled():
        return _for("mask_fold", torch.device("cpu")).mask_fold(A, X, mask, scale, R, P, bias, relu)
    return reference.mask_fold(A, X, mask, scale, R, P, bias, relu)
