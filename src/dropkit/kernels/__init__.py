"""The backends of dropkit's ops: the primitives of the mask contract, once per backend.

Two primitives carry every dropout in dropkit; each backend implements both and returns
bit-identical results (tests compare every backend with :mod:`dropkit.kernels.reference`):

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
* :func:`mask_fold`, for Monte-Carlo dropout (:mod:`dropkit.mc`): T binary masks on the input of a
  linear map summed over per-unit contributions (compiled CPU kernel for float32, torch
  reference elsewhere; equal up to rounding, not bit for bit).

There is no dispatcher here: PyTorch's dispatcher chooses. :mod:`dropkit.ops` registers, once at
import, one implementation of every op per device: the compiled C kernel (``kernels/cpu``,
AVX-512 / AVX2 / NEON / scalar C) for CPU tensors, or the reference where the library is not
available; the Triton kernels (``kernels/triton``) for CUDA tensors where Triton is installed, else
the reference; the portable torch reference (:mod:`dropkit.kernels.reference`) for every other
device. :func:`for_device` returns the :class:`Backend` chosen for a device type, and
:func:`dropkit.backend_info` says which one is registered and why.

Counters: a call covers the global element indices ``offset .. offset + n - 1`` (for every
primitive, ``normal`` included), and these must stay below ``2**64``; a call that would pass it
raises ``ValueError`` instead of wrapping around (the backends would disagree on the wrap).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import torch

from dropkit import rng
from dropkit.kernels import reference

#: The rounding every primitive ends with: a compute-dtype result to the input dtype under the 16-bit NaN rule.
round_to = reference.round_to

__all__ = [
    "round_to",
    "Backend",
    "backend",
    "for_device",
    "graph_kernels",
    "mask_fold",
    "mask_fold_compiled",
    "BACKENDS",
]

#: The backends :func:`backend` builds.
BACKENDS = ("reference", "cpu", "triton")


class Backend:
    """The primitives of one backend module (``reference``, ``cpu`` or ``triton``), each checking its counters.

    A primitive the module lacks (the compiled CPU kernel has no fused op) runs the reference over the
    module's own keep mask, so every backend serves every primitive with the same bits.

    Example:
        >>> be = dropkit.kernels.backend("reference")
        >>> be.keep_mask(4, 0.5, seed=1, stream=0, offset=0, device=torch.device("cpu"))
        tensor([ True, False,  True,  True])
    """

    __slots__ = ("name", "reason", "module")

    def __init__(self, name: str, reason: str, module: ModuleType) -> None:
        self.name, self.reason, self.module = name, reason, module

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def keep_mask(self, n: int, p: float, seed: int, stream: int, offset: int, device: torch.device) -> torch.Tensor:
        """1-D ``bool`` keep mask of ``n`` elements (``True`` = kept) on ``device``: element ``j`` is kept iff
        the 16-bit lane of global index ``offset + j`` is ``>= rng.threshold(p)``."""
        rng.check_counters(n, seed, stream, offset)
        return self.module.keep_mask(n, p, seed, stream, offset, device)

    def dropout_mul(
        self,
        x: torch.Tensor,
        p: float,
        scale: float,
        seed: int,
        stream: int,
        offset: int,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x * (keep ? scale : 0)`` for contiguous ``x`` (any shape), the product in float32 (float64 for
        float64 ``x``) rounded once to ``x.dtype``; writes into ``out`` when given."""
        rng.check_counters(x.numel(), seed, stream, offset)
        return self.module.dropout_mul(x, p, scale, seed, stream, offset, out)

    def uniform(
        self,
        n: int,
        seed: int,
        stream: int,
        offset: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        r"""1-D tensor of ``n`` uniforms in (0, 1), bit-identical to ``rng.uniform((n,), seed, stream, offset)``:
        :math:`u = (w + 0.5)\,2^{-32}` in float64, then rounded to ``dtype``, ``w`` the 32-bit Philox word of
        global index ``e = offset + j`` (word ``e % 4`` of block ``e // 4``)."""
        rng.check_counters(n, seed, stream, offset)
        return self.module.uniform(n, seed, stream, offset, torch.device(device), dtype)

    def normal(
        self,
        n: int,
        seed: int,
        stream: int,
        offset: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        r"""1-D tensor of ``n`` standard normals, bit-identical to ``rng.normal((n,), seed, stream, offset)``
        (normal contract v2, docs/rng.md: lane ``l = e % 4`` of block ``e // 4`` is
        :math:`\sqrt{-2 \ln u_1}\cos\theta` or :math:`\sin\theta` in exactly rounded float32), then ``dtype``."""
        rng.check_counters(n, seed, stream, offset)
        return self.module.normal(n, seed, stream, offset, torch.device(device), dtype)

    def gaussian_mul(
        self, x: torch.Tensor, sigma: float, seed: int, stream: int, offset: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x * (1 + sigma * z)`` for ``x`` of any strides (row-major logical order), ``z`` the normals of
        :meth:`normal`: float32 with ``sigma`` rounded once (float64 for float64 ``x``), rounded to ``x.dtype``."""
        rng.check_counters(x.numel(), seed, stream, offset)
        return self.module.gaussian_mul(x, sigma, seed, stream, offset, out)

    def fused_bias_act_dropout_add(
        self,
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
        r"""One pass of the fused residual op over contiguous tensors, ``h = x + bias``: forward (``a`` = residual)
        :math:`a + \mathrm{act}(h) f`, backward (``a`` = the gradient) :math:`a f \mathrm{act}'(h)`, with
        :math:`f = \mathrm{keep} ? \mathrm{scale} : 0`; ``activation`` one of ``reference.FUSED_ACTIVATIONS``."""
        if activation not in reference.FUSED_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {reference.FUSED_ACTIVATIONS}; received {activation!r}")
        rng.check_counters(x.numel(), seed, stream, offset)
        fused = getattr(self.module, "fused_bias_act_dropout_add", None)
        if fused is None:  # the reference's torch ops over this backend's mask
            return reference.fused_bias_act_dropout_add(
                a, x, bias, activation, backward, p, scale, seed, stream, offset, keep_mask=self.module.keep_mask
            )
        return fused(a, x, bias, activation, backward, p, scale, seed, stream, offset)


_BUILT: dict[str, Backend] = {}


def backend(name: str) -> Backend:
    """The :class:`Backend` called ``name`` (one of :data:`BACKENDS`); ``RuntimeError`` naming the reason when
    it cannot run here (no compiled CPU library, Triton not installed).

    Example:
        >>> dropkit.kernels.backend("cpu").keep_mask(4, 0.5, 1, 0, 0, torch.device("cpu"))
        tensor([ True, False,  True,  True])
    """
    if name not in BACKENDS:
        raise ValueError(f"`name` must be one of {BACKENDS}; received {name!r}")
    be = _BUILT.get(name)
    if be is not None:
        return be
    if name == "reference":
        be = Backend("reference", "the portable torch reference (dropkit.kernels.reference)", reference)
    elif name == "cpu":
        from dropkit.kernels import cpu

        label, reason = cpu.status()
        if not cpu.available():
            raise RuntimeError(f"the compiled CPU kernel is not available: {reason}")
        be = Backend(label, reason, cpu)
    else:
        if importlib.util.find_spec("triton") is None:
            raise RuntimeError("Triton is not installed (pip install 'dropkit[triton]')")
        from dropkit.kernels import triton as tk

        be = Backend("triton", "Triton kernels (dropkit.kernels.triton)", tk)
    _BUILT[name] = be
    return be


def _chosen(device_type: str) -> Backend:
    if device_type == "cpu":
        from dropkit.kernels import cpu

        if cpu.available():
            return backend("cpu")
        return Backend("reference", cpu.status()[1], reference)
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is not None:
            return backend("triton")
        return Backend(
            "reference", "Triton is not installed (pip install 'dropkit[triton]'); torch integer ops", reference
        )
    return Backend("reference", f"no fast backend for device type {device_type!r}; torch integer ops", reference)


_CHOSEN: dict[str, Backend] = {}


def for_device(device: torch.device | str) -> Backend:
    """The backend of ``device``'s type, chosen once per process (the first call decides): the compiled C
    kernel for ``"cpu"`` where its library loads, Triton for ``"cuda"`` where it is installed, else (and for
    every other device type) the reference. :mod:`dropkit.ops` registers exactly these as the ops' kernels.

    Example:
        >>> dropkit.kernels.for_device("cpu").name
        'cpu-avx2'
    """
    kind = torch.device(device).type
    be = _CHOSEN.get(kind)
    if be is None:
        be = _CHOSEN[kind] = _chosen(kind)
    return be


def graph_kernels(device: torch.device):
    """The graph launches (:mod:`dropkit.kernels.triton.graph`) when compiled Triton kernels serve ``device``
    (CUDA, not the interpreter) and ``DROPKIT_TRITON_GRAPH`` does not turn them off; else None, and the
    ops stay whole in a compiled graph. Called while a graph is traced, never in eager calls."""
    if device.type != "cuda" or for_device(device).module is reference:
        return None
    from dropkit.kernels import triton as tk
    from dropkit.kernels.triton import graph

    return graph if not tk.interpreter_enabled() and graph.enabled() else None


def mask_fold_compiled(device: torch.device | str = "cpu") -> bool:
    """Whether :func:`mask_fold` runs the compiled kernel for float32 tensors on ``device``."""
    return torch.device(device).type == "cpu" and for_device("cpu").module is not reference


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
        return for_device("cpu").module.mask_fold(A, X, mask, scale, R, P, bias, relu)
    return reference.mask_fold(A, X, mask, scale, R, P, bias, relu)
