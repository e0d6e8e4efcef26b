"""Monte-Carlo dropout (Gal & Ghahramani, ICML 2016): dropout at inference as a Bayesian approximation.

:func:`predict` draws ``T`` stochastic forwards with **only dropout** active and returns the
predictive mean, the predictive entropy, the mutual information (BALD, Houlsby et al. 2011)
and the variance.

Which parts are stochastic. One probe forward on (at most) two examples runs with every
module in training mode (buffers restored afterwards) while every random call is
watched: torch's dropout modules and ``F.dropout`` family, dropkit's ops and modules
(DropPath, DropBlock, locked, Gaussian, ...), attention dropout (``MultiheadAttention``,
``scaled_dot_product_attention`` with ``dropout_p``) and torch's random functions. Each
random call is attributed to the innermost module running; those modules (and the
transformer layers above them, whose eval fast path would skip dropout) are put in
training mode for the sampling, every other module (BatchNorm, ...) stays in eval. So
functional dropout written ``F.dropout(h, p, training=self.training)`` is covered; a
module that draws random numbers in training for another purpose would be too.
``modules=`` adds module paths by hand. The probe's answer is cached per model (weakly)
under a fingerprint of the module tree, every module's scalar attributes (rates, flags),
hooks and patched methods, and the input's per-example shape, dtype and device: changing
a rate or swapping a layer probes again; :func:`clear_cache` forgets every answer.

Speed, three ways, the fastest that applies (each falls back to the next when the model
does not fit it; the last always works):

1. **Fold** (float32 on CPU with the compiled kernel): when the first dropout is channel
   dropout on a deterministic input followed, in an ``nn.Sequential``, by a Conv2d, the
   ``T`` channel masks are summed through the convolution from per-channel contributions
   computed once per example, with a following max-pool fused in (see
   :mod:`dropkit.mc._fold`). Same masks, same distribution; only the rounding of the sums
   differs.
2. **Shared prefix**: the network before the first stochastic module runs once on
   ``batch`` rows; a forward pre-hook on that module repeats its input ``T`` times
   (sample-major), then one batched forward of ``T * batch`` rows.
3. **Repeat**: the model's input repeated ``T`` times. Used when the first two do not fit,
   e.g. a skip connection from before the first dropout.

Whether a way fits is decided once per model configuration (cached with the probe) by a
trial of 2 samples on the probe's examples; a trial failure counts as a misfit only when
the plain forward (the input repeated) works, otherwise it is the model's own error and
is raised. Sampling then falls back only on :class:`FoldUnavailable` /
:class:`BatchUnavailable`: a model's error or an out-of-memory surfaces once.

The first two assume a batch-first network that treats examples independently after the
first dropout (the usual case). Memory bound: a forward holds about ``k * e * A`` bytes of
activations for ``k`` samples of ``e`` examples, ``A`` = the per-example bytes of the
module outputs that run per sample (measured in the probe: from the first stochastic
module on, or after the folded layers). Examples are split into slices and samples into
chunks so that ``k * e * A <= memory_budget`` (default 4 MiB on CPU, where a forward that
leaves the caches gets slower, not faster; 1 GiB on GPUs), with all ``T`` samples of a
slice in one forward when they fit; the deterministic part runs once per slice (per
chunk when one example's samples do not fit). ``consistent_masks`` keeps the whole batch
in one slice. A stochastic module with ``batch_first=False`` (seq-first locked dropout
shares its mask along dim 0) gets one sample per forward.

Reproducibility: ``seed=`` forks torch's RNG (its state outside is left unchanged) and
seeds it, so the same call gives the same samples. The model is left exactly as found:
modes, buffers, dropkit stream counters, and every hook / patched ``forward`` removed,
exceptions included.

The code follows the three steps of :func:`predict`: :mod:`dropkit.mc._probe` (which modules are
random), :mod:`dropkit.mc._plan` (the ways to try and the chunks) and :mod:`dropkit.mc._sample`
(the forwards).

Example:
    >>> r = dropkit.mc.predict(model, x, samples=50, seed=0)
    >>> r.mean.shape, r.entropy.shape, r.mutual_information.shape
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from dropkit._validation import check_bool, check_choice, check_int
from dropkit.mc._fold import FoldUnavailable
from dropkit.mc._plan import plan
from dropkit.mc._probe import clear_cache, probe, probe_cached
from dropkit.mc._sample import BatchUnavailable, sample

__all__ = [
    "MCResult",
    "predict",
    "stochastic_modules",
    "clear_cache",
    "NoDropoutError",
    "BatchUnavailable",
    "FoldUnavailable",
]

_EPS = 1e-12


class NoDropoutError(ValueError):
    """The model has nothing stochastic for Monte-Carlo dropout to sample."""


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1)


@dataclass
class MCResult:
    """``T`` Monte-Carlo samples and the uncertainty measures derived from them.

    ``samples`` has shape ``(T, batch, ...)``: probabilities when ``output`` is
    ``"softmax"`` / ``"sigmoid"`` (a sigmoid's single logit becomes two classes
    ``[1 - s, s]``), raw outputs when ``output=None``. Entropies are in nats.
    """

    samples: torch.Tensor
    output: str | None
    #: how the samples were computed: ``"fold"``, ``"prefix"`` or ``"repeat"`` (module docstring)
    method: str = "repeat"

    @property
    def mean(self) -> torch.Tensor:
        """Predictive mean over samples, ``(batch, ...)``."""
        return self.samples.mean(0)

    @property
    def variance(self) -> torch.Tensor:
        """Variance over samples (population variance, divisor ``T``), ``(batch, ...)``."""
        return self.samples.var(0, correction=0)

    def _probs(self) -> torch.Tensor:
        if self.output is None:
            raise ValueError("entropies need probabilities: call predict(..., output='softmax' or 'sigmoid')")
        return self.samples

    @property
    def entropy(self) -> torch.Tensor:
        """Predictive entropy ``H[mean_t p_t]`` (total uncertainty), ``(batch,)``."""
        return _entropy(self._probs().mean(0))

    @property
    def expected_entropy(self) -> torch.Tensor:
        """``mean_t H[p_t]`` (aleatoric part), ``(batch,)``."""
        return _entropy(self._probs()).mean(0)

    @property
    def mutual_information(self) -> torch.Tensor:
        """BALD: ``H[mean_t p_t] - mean_t H[p_t]`` (epistemic part, >= 0), ``(batch,)``."""
        return (self.entropy - self.expected_entropy).clamp_min(0.0)

    @property
    def prediction(self) -> torch.Tensor:
        """Class with the highest mean probability, ``(batch,)``."""
        return self._probs().mean(0).argmax(-1)


def stochastic_modules(model: torch.nn.Module, x: tuple, extra: Iterable[str] = ()) -> tuple[list[str], dict, int]:
    """Paths of the modules whose forward is random in training (first-called first), the kinds of
    random call each makes, and the activation bytes per example measured in the probe."""
    r = probe(model, x, extra)
    return r.paths, r.calls, r.row_bytes


def _batched_inputs(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``x`` as a tuple of dense tensors that share a non-zero batch size (dim 0); a clear error otherwise."""
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    if not xs or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in xs):
        raise TypeError("`x` must be a batched tensor or a tuple of batched tensors")
    if any(a.layout != torch.strided or a.is_nested for a in xs):
        raise TypeError(
            f"`x` must be dense (strided) tensors; received layouts {[str(a.layout) for a in xs]}"
            + (" (a nested tensor)" if any(a.is_nested for a in xs) else "")
        )
    batch = xs[0].shape[0]
    if batch == 0 or any(a.shape[0] != batch for a in xs):
        raise ValueError(
            f"every input needs the same non-zero batch size (dim 0); received {[tuple(a.shape) for a in xs]}"
        )
    return xs


def predict(
    model: torch.nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    samples: int = 50,
    seed: int | None = None,
    *,
    output: str | None = "auto",
    consistent_masks: bool = False,
    share_prefix: bool = True,
    memory_budget: int | None = None,
    modules: Iterable[str] = (),
) -> MCResult:
    """Monte-Carlo dropout prediction: ``samples`` forwards with only dropout stochastic.

    Args:
        model: a ``torch.nn.Module`` (batch-first: dim 0 of inputs and outputs is the batch).
        x: input batch, or a tuple of positional inputs that share the batch dimension.
        samples: ``T``, the number of stochastic forwards, >= 1.
        seed: an int in [0, 2**64): make the samples reproducible (torch's global RNG state is left unchanged).
        output: ``"softmax"`` (class probabilities from logits), ``"sigmoid"`` (binary:
            ``[1 - s, s]``), ``None`` (raw outputs, e.g. regression) or ``"auto"``: the model's
            ``output_activation`` attribute if it has one (dropkit's lab models), else softmax.
        consistent_masks: draw ``T`` masks once and use the same ``T`` masks for every
            example of the batch (BatchBALD-style acquisition). Covers dropout modules and
            ``F.dropout``-family calls.
        share_prefix: compute the network before the first stochastic module once (see
            the module docstring); ``False`` repeats the input ``T`` times instead.
        memory_budget: bytes of activations one batched forward may hold (slices of examples, chunks
            of samples); ``None``: 4 MiB on CPU, 1 GiB on other devices.
        modules: extra module paths to treat as stochastic.

    Returns:
        :class:`MCResult` with ``.samples`` ``(T, batch, ...)``, ``.mean``, ``.variance``,
        ``.entropy``, ``.expected_entropy``, ``.mutual_information``, ``.prediction``.

    Raises:
        NoDropoutError: the model has no dropout (nothing random in training mode).
        TypeError, ValueError: a bad argument (named in the message), checked before the model runs.

    Errors of the model itself (and out-of-memory) propagate from its first failing forward:
    ``predict`` switches to a slower way only on its own :class:`FoldUnavailable` /
    :class:`BatchUnavailable` signals.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    T = check_int(samples, "samples", minimum=1)
    check_bool(consistent_masks, "consistent_masks")
    check_bool(share_prefix, "share_prefix")
    budget = None if memory_budget is None else check_int(memory_budget, "memory_budget", minimum=1)
    if seed is not None:
        seed = check_int(seed, "seed")
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"Invalid value for `seed`: expected an int in [0, 2**64). Received: seed={seed!r}")
    if output == "auto":
        output = getattr(model, "output_activation", "softmax")
    if output is not None:
        check_choice(output, "output", ("softmax", "sigmoid"))
    xs = _batched_inputs(x)
    batch = xs[0].shape[0]
    if budget is None:
        budget = 4 << 20 if xs[0].device.type == "cpu" else 1 << 30

    # 1. probe: which modules are random (cached per model configuration)
    probe_x = tuple(a[:2] if batch >= 2 else torch.cat([a, a]) for a in xs)  # BatchNorm needs 2 rows in training
    probed = probe_cached(model, probe_x, modules)
    if not probed.paths:
        raise NoDropoutError(
            f"{type(model).__name__} has no dropout: nothing is random in training mode, so Monte-Carlo "
            "dropout would return T identical samples. Add dropout layers (or pass modules=...)."
        )
    # 2. plan: the ways to try, fastest first, and k samples of e examples per forward
    how = plan(model, xs, probed, T, share_prefix=share_prefix, consistent_masks=consistent_masks, memory_budget=budget)
    # 3. sample: the first way that fits
    samples_out, method = sample(model, how, probed, xs, probe_x, T, output, seed)
    return MCResult(samples_out.clone(), output, method)
