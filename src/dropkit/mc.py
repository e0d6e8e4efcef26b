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
``modules=`` adds module paths by hand.

Speed. The ``T`` samples run as one batched forward of ``T * batch`` rows. The
deterministic part before the first stochastic module runs once on ``batch`` rows: a
forward pre-hook on that module repeats its input ``T`` times (sample-major). This
assumes the network is batch-first and treats examples independently after that point
(the usual case; a skip connection from before it raises a shape error internally and
:func:`predict` falls back to repeating the model's input, which is always correct).
Memory bound: a chunk of ``k`` samples holds about ``k * batch * A`` bytes of activations,
``A`` = the bytes of all module outputs per example measured in the probe; ``k`` is the
largest value with ``k * batch * A <= memory_budget`` (default 64 MiB: on CPU, larger
batched forwards fall out of cache and get slower, not faster), at least 1; with
several chunks the deterministic prefix is recomputed once per chunk. A stochastic module
with ``batch_first=False`` (seq-first locked dropout shares its mask along dim 0) gets one
sample per forward.

Reproducibility: ``seed=`` forks torch's RNG (its state outside is left unchanged) and
seeds it, so the same call gives the same samples. The model is left exactly as found:
modes, buffers, dropkit stream counters, and every hook / patched ``forward`` removed,
exceptions included.

Example:
    >>> r = dropkit.mc.predict(model, x, samples=50, seed=0)
    >>> r.mean.shape, r.entropy.shape, r.mutual_information.shape
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from dropkit import _hooks
from dropkit._validation import check_bool, check_choice, check_int
from dropkit.guard import (
    _RANDOM_FUNCS,
    _RANDOM_METHODS,
    _module_stack,
    attention_dropout,
    dropout_call,
    is_dropout_module,
    preserved_state,
)

__all__ = ["MCResult", "predict", "stochastic_modules", "NoDropoutError"]

_EPS = 1e-12
_FAST_PATH_CLASSES = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder, torch.nn.MultiheadAttention)


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


def _transform(out: torch.Tensor, output: str | None) -> torch.Tensor:
    if output == "softmax":
        return torch.softmax(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, dim=-1)
    if output == "sigmoid":
        s = torch.sigmoid(out.reshape(*out.shape[:2], -1) if out.dim() > 2 else out)
        if s.dim() == 2 or s.shape[-1] == 1:
            s = s.reshape(*out.shape[:2], 1) if out.dim() >= 2 else s
            return torch.cat([1 - s, s], dim=-1)
        return s
    return out


class _Probe(TorchFunctionMode):
    """Attributes every random call to the innermost running module."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.calls: dict[str, set[str]] = {}
        self.order: list[str] = []

    def add(self, kind: str) -> None:
        path = self.stack[-1] if self.stack else ""
        if path not in self.calls:
            self.calls[path] = set()
            self.order.append(path)
        self.calls[path].add(kind)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = dropout_call(func, args, kwargs)
        if call is not None:
            if call[1] and call[0] > 0:
                self.add("functional")
        elif (ap := attention_dropout(func, args, kwargs)) is not None:
            if ap > 0:
                self.add("attention")
        elif func in _RANDOM_FUNCS or func in _RANDOM_METHODS:
            self.add("random")
        return func(*args, **kwargs)


def _flat_tensors(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def stochastic_modules(model: torch.nn.Module, x: tuple, extra: Iterable[str] = ()) -> tuple[list[str], dict, int]:
    """Paths of the modules whose forward is random in training (first-called first), the kinds of
    random call each makes, and the activation bytes per example measured in the probe."""
    stack: list[str] = []
    probe = _Probe(stack)
    rows = x[0].shape[0]
    nbytes = [0]

    def count(module, args, output):
        nbytes[0] += sum(t.numel() * t.element_size() for t in _flat_tensors(output))

    with contextlib.ExitStack() as es:
        es.enter_context(torch.random.fork_rng(devices=[]))
        es.enter_context(torch.no_grad())
        es.enter_context(preserved_state(model))
        modules = es.enter_context(_module_stack(model, stack))
        for m in modules.values():
            es.callback(m.register_forward_hook(count).remove)
        es.enter_context(_hooks.observe(lambda op, inp, spec: probe.add("dropkit")))
        model.train()
        with probe:
            model(*x)
    for p in extra:
        if p not in modules:
            raise ValueError(f"`modules` names {p!r}, which is not a submodule path of the model")
        if p not in probe.calls:
            probe.calls[p] = {"given"}
            probe.order.append(p)
    for name, m in modules.items():  # dropout modules that the probe did not reach stay out
        if is_dropout_module(m) and name in probe.calls:
            probe.calls[name].add("module")
    return probe.order, probe.calls, max(1, nbytes[0] // rows)


def _rng_state(device: torch.device):
    state = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return state, cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _shared_noise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, k: int, module=None) -> torch.Tensor:
    """``fn`` (a dropout: ``y = a + b * x`` elementwise, ``a, b`` random) with the same noise for every example:
    ``a`` and ``b`` drawn once per sample on ``(k, *rest)`` and broadcast over the ``x.shape[0] // k`` examples."""
    if x.shape[0] % k:
        raise RuntimeError(f"consistent masks: expected a leading dimension divisible by {k}, got {tuple(x.shape)}")
    rest = x.shape[1:]
    state, calls = _rng_state(x.device), getattr(module, "_calls", None)
    a = fn(torch.zeros((k, *rest), dtype=x.dtype, device=x.device))
    _set_rng_state(state, x.device)
    if calls is not None:
        module._calls = calls
    b = fn(torch.ones((k, *rest), dtype=x.dtype, device=x.device)) - a
    y = a.unsqueeze(1) + b.unsqueeze(1) * x.reshape(k, -1, *rest)
    return y.reshape(x.shape)


class _SharedFunctional(TorchFunctionMode):
    """Consistent masks for ``F.dropout``-family calls inside forwards."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = dropout_call(func, args, kwargs)
        if call is not None and call[1] and call[0] > 0:
            bound = dict(zip(("input",), args[:1]), **kwargs)
            x = bound.pop("input") if "input" in bound else kwargs["input"]
            rest = args[1:]
            return _shared_noise(lambda t: func(t, *rest, **{k: v for k, v in bound.items()}), x, self.k)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _sampling(model: torch.nn.Module, paths: list[str], calls: dict, consistent: bool, k_box: list[int],
              prefix_path: str | None, batch: int) -> Iterator[None]:
    """Modes set for sampling; hooks and patched forwards installed; everything undone on exit."""
    modules = dict(model.named_modules())
    stochastic = {p: modules[p] for p in paths}
    with contextlib.ExitStack() as es:
        es.enter_context(preserved_state(model))
        model.eval()
        for m in stochastic.values():
            m.training = True
        for name, m in modules.items():  # fast paths of these classes skip dropout in eval
            if isinstance(m, _FAST_PATH_CLASSES) and any(name == "" or p == name or p.startswith(name + ".") for p in paths):
                m.training = True
        if consistent:
            for p, m in stochastic.items():
                if "module" in calls[p]:
                    forward = m.forward
                    m.forward = lambda x, _f=forward, _m=m: _shared_noise(_f, x, k_box[0], _m)
                    es.callback(m.__dict__.pop, "forward", None)
                elif calls[p] - {"functional", "given"}:
                    raise NotImplementedError(
                        f"consistent_masks covers dropout modules and torch.nn.functional dropout calls; "
                        f"module {p or '<model>'!r} draws randomness another way ({', '.join(sorted(calls[p]))})"
                    )
            es.enter_context(_SharedFunctional(k_box[0]))
        if prefix_path is not None:
            seen = [False]

            def repeat(module, args):
                if seen[0]:
                    return None
                seen[0] = True
                k = k_box[0]
                return tuple(
                    a.unsqueeze(0).expand(k, *a.shape).reshape(k * a.shape[0], *a.shape[1:])
                    if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else a
                    for a in args
                )

            def reset(module, args):
                seen[0] = False

            es.callback(model.register_forward_pre_hook(reset).remove)
            es.callback(modules[prefix_path].register_forward_pre_hook(repeat).remove)
        yield


def _repeat_inputs(x: tuple, k: int) -> tuple:
    return tuple(a.unsqueeze(0).expand(k, *a.shape).reshape(k * a.shape[0], *a.shape[1:]) for a in x)


def predict(
    model: torch.nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    samples: int = 50,
    seed: int | None = None,
    *,
    output: str | None = "auto",
    consistent_masks: bool = False,
    share_prefix: bool = True,
    memory_budget: int = 64 << 20,
    modules: Iterable[str] = (),
) -> MCResult:
    """Monte-Carlo dropout prediction: ``samples`` forwards with only dropout stochastic.

    Args:
        model: a ``torch.nn.Module`` (batch-first: dim 0 of inputs and outputs is the batch).
        x: input batch, or a tuple of positional inputs that share the batch dimension.
        samples: ``T``, the number of stochastic forwards, >= 1.
        seed: make the samples reproducible (torch's global RNG state is left unchanged).
        output: ``"softmax"`` (class probabilities from logits), ``"sigmoid"`` (binary:
            ``[1 - s, s]``), ``None`` (raw outputs, e.g. regression) or ``"auto"``: the model's
            ``output_activation`` attribute if it has one (dropkit's lab models), else softmax.
        consistent_masks: draw ``T`` masks once and use the same ``T`` masks for every
            example of the batch (BatchBALD-style acquisition). Covers dropout modules and
            ``F.dropout``-family calls.
        share_prefix: compute the network before the first stochastic module once (see
            the module docstring); ``False`` repeats the input ``T`` times instead.
        memory_budget: bytes of activations one batched forward may hold (chunks of samples).
        modules: extra module paths to treat as stochastic.

    Returns:
        :class:`MCResult` with ``.samples`` ``(T, batch, ...)``, ``.mean``, ``.variance``,
        ``.entropy``, ``.expected_entropy``, ``.mutual_information``, ``.prediction``.

    Raises:
        NoDropoutError: the model has no dropout (nothing random in training mode).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    T = check_int(samples, "samples", minimum=1)
    check_bool(consistent_masks, "consistent_masks")
    check_bool(share_prefix, "share_prefix")
    budget = check_int(memory_budget, "memory_budget", minimum=1)
    if output == "auto":
        output = getattr(model, "output_activation", "softmax")
    if output is not None:
        check_choice(output, "output", ("softmax", "sigmoid"))
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    if not xs or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in xs):
        raise TypeError("`x` must be a batched tensor or a tuple of batched tensors")
    batch = xs[0].shape[0]
    if batch == 0 or any(a.shape[0] != batch for a in xs):
        raise ValueError(f"every input needs the same non-zero batch size (dim 0); received {[tuple(a.shape) for a in xs]}")

    probe_x = tuple(a[:2] if batch >= 2 else torch.cat([a, a]) for a in xs)  # BatchNorm needs 2 rows in training
    paths, calls, row_bytes = stochastic_modules(model, probe_x, modules)
    if not paths:
        raise NoDropoutError(
            f"{type(model).__name__} has no dropout: nothing is random in training mode, so Monte-Carlo "
            "dropout would return T identical samples. Add dropout layers (or pass modules=...)."
        )
    k = max(1, min(T, budget // max(1, batch * row_bytes)))
    prefix_path = paths[0] if share_prefix and paths[0] != "" else None
    named = dict(model.named_modules())
    if any(getattr(named[p], "batch_first", True) is False for p in paths):
        k, prefix_path = 1, None  # a mask shared along dim 0 (seq-first locked dropout): one sample per forward
    k_box = [k]
    chunks: list[torch.Tensor] = []
    with contextlib.ExitStack() as es:
        es.enter_context(torch.inference_mode())
        if seed is not None:
            es.enter_context(torch.random.fork_rng(devices=[d for d in {a.device for a in xs} if d.type == "cuda"]))
            torch.manual_seed(seed)
        done = 0
        while done < T:
            k_box[0] = n = min(k, T - done)
            out = None
            if prefix_path is not None:
                try:
                    with _sampling(model, paths, calls, consistent_masks, k_box, prefix_path, batch):
                        out = model(*xs)
                    if not isinstance(out, torch.Tensor) or out.shape[0] != n * batch:
                        raise RuntimeError("prefix sharing changed the output's batch size")
                except RuntimeError:
                    prefix_path, out = None, None  # not a sample-independent chain: repeat the input instead
            if out is None:
                with _sampling(model, paths, calls, consistent_masks, k_box, None, batch):
                    out = model(*_repeat_inputs(xs, n))
            if not isinstance(out, torch.Tensor) or out.shape[0] != n * batch:
                raise ValueError(
                    f"the model must return one tensor with the batch in dim 0; got "
                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                )
            out = out.reshape(n, batch, *out.shape[1:])
            chunks.append(_transform(out, output))
            done += n
    return MCResult(torch.cat(chunks).clone(), output)
