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

Example:
    >>> r = dropkit.mc.predict(model, x, samples=50, seed=0)
    >>> r.mean.shape, r.entropy.shape, r.mutual_information.shape
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

from dropkit import kernels
from dropkit._validation import check_bool, check_choice, check_int
from dropkit._introspect import (
    RandomCallMode,
    dropout_call,
    is_dropout_module,
    module_stack,
    observe_dropkit_ops,
    preserved_state,
)
from dropkit.mc._fold import FoldPlan, FoldUnavailable, plan_fold, run_fold

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
_FAST_PATH_CLASSES = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder, torch.nn.MultiheadAttention)


class NoDropoutError(ValueError):
    """The model has nothing stochastic for Monte-Carlo dropout to sample."""


class BatchUnavailable(RuntimeError):
    """Shared-prefix sampling (samples batched after the first stochastic module) does not fit this model,
    e.g. a skip connection from before the first dropout; :func:`predict` repeats the input instead.
    (:class:`FoldUnavailable` is the fold's counterpart.) These are the only errors ``predict`` falls back on."""


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


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim: exp(x - max) / sum, as torch.softmax computes it (which is ~5x
    slower on CPU for a small last dim such as 10 classes)."""
    e = (x - x.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


def _transform(out: torch.Tensor, output: str | None) -> torch.Tensor:
    if output == "softmax":
        return _softmax(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out)
    if output == "sigmoid":
        s = torch.sigmoid(out.reshape(*out.shape[:2], -1) if out.dim() > 2 else out)
        if s.dim() == 2 or s.shape[-1] == 1:
            s = s.reshape(*out.shape[:2], 1) if out.dim() >= 2 else s
            return torch.cat([1 - s, s], dim=-1)
        return s
    return out


#: the kinds of random call the probe records per module (``stochastic_modules``' ``calls``), by
#: :func:`~dropkit._introspect.classify_call` kind; also "dropkit", "module" and "given"
_CALL_KINDS = {"functional-dropout": "functional", "attention-dropout": "attention", "random-op": "random"}


class _Probe:
    """Attributes every random call to the innermost running module: ``calls[path]`` = kinds, ``order`` = first-called first."""

    def __init__(self, stack: list[str]):
        self.stack = stack
        self.calls: dict[str, set[str]] = {}
        self.order: list[str] = []
        self.mode = RandomCallMode(lambda kind, what: self.add(_CALL_KINDS[kind]))

    def add(self, kind: str) -> None:
        path = self.stack[-1] if self.stack else ""
        if path not in self.calls:
            self.calls[path] = set()
            self.order.append(path)
        self.calls[path].add(kind)


def _flat_tensors(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


#: Probe results per model: {model: (fingerprint, _ProbeResult)}.
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SCALARS = (bool, int, float, str, type(None))


def _fingerprint(model: torch.nn.Module, x: tuple, extra: tuple) -> tuple:
    """What the probe's answer depends on: the module tree, every module's scalar attributes
    (rates, flags; not the train/eval mode, which the probe sets itself), its hooks and any
    per-instance function (a patched ``forward``), and the inputs' per-example shape, dtype, device."""
    parts = []
    for name, m in model.named_modules():
        attrs = tuple(
            sorted(
                (k, v if isinstance(v, _SCALARS) else id(v))
                for k, v in vars(m).items()
                if k != "training"
                and (isinstance(v, _SCALARS) or callable(v) or k.endswith("hooks"))
                and not isinstance(v, torch.nn.Module)
            )
        )
        hooks = tuple(tuple(d) for d in (m._forward_hooks, m._forward_pre_hooks))
        parts.append((name, id(m), type(m), attrs, hooks))
    return tuple(parts), tuple((tuple(a.shape[1:]), a.dtype, a.device) for a in x), extra


def _probe_cached(model: torch.nn.Module, x: tuple, extra: Iterable[str]) -> _ProbeResult:
    extra = tuple(extra)
    key = _fingerprint(model, x, extra)
    hit = _PROBES.get(model)
    if hit is None or hit[0] != key:
        hit = _PROBES[model] = (key, _probe(model, x, extra))
    r = hit[1]
    # `fits` is shared with the cache on purpose: which sampling ways fit this model configuration
    return _ProbeResult(
        list(r.paths), {p: set(c) for p, c in r.calls.items()}, r.row_bytes, r.leaf_bytes, r.events, r.fits
    )


def clear_cache() -> None:
    """Forget the cached probe results (see :func:`predict`: a probe runs once per model configuration)."""
    _PROBES.clear()


@dataclass
class _ProbeResult:
    paths: list[str]
    calls: dict[str, set[str]]
    row_bytes: int  # bytes of all module outputs per example
    leaf_bytes: list[tuple[str, int, int]]  # (path, bytes per example, end event) of leaf modules
    events: dict[str, tuple[int, int]]  # path -> (start event, end event) of its first call
    #: (way, consistent_masks) -> whether "fold" / "prefix" sampling fits the model (a trial decided it)
    fits: dict[tuple[str, bool], bool] = field(default_factory=dict)


def _probe(model: torch.nn.Module, x: tuple, extra: Iterable[str] = ()) -> _ProbeResult:
    stack: list[str] = []
    probe = _Probe(stack)
    rows = x[0].shape[0]
    nbytes = [0]
    clock = [0]
    events: dict[str, list[int]] = {}
    leaves: list[tuple[str, int, int]] = []

    with contextlib.ExitStack() as es:
        es.enter_context(torch.random.fork_rng(devices=[]))
        es.enter_context(torch.no_grad())
        es.enter_context(preserved_state(model))
        modules = es.enter_context(module_stack(model, stack))
        for path, m in modules.items():

            def start(module, args, _p=path):
                clock[0] += 1
                events.setdefault(_p, [clock[0], -1])

            leaf = next(m.children(), None) is None

            def count(module, args, output, _p=path, _leaf=leaf):
                clock[0] += 1
                b = sum(t.numel() * t.element_size() for t in _flat_tensors(output))
                nbytes[0] += b
                if events[_p][1] < 0:
                    events[_p][1] = clock[0]
                if _leaf:
                    leaves.append((_p, max(1, b // rows), clock[0]))

            es.callback(m.register_forward_pre_hook(start).remove)
            es.callback(m.register_forward_hook(count).remove)
        es.enter_context(observe_dropkit_ops(lambda op, p: probe.add("dropkit")))
        model.train()
        with probe.mode:
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
    return _ProbeResult(
        probe.order, probe.calls, max(1, nbytes[0] // rows), leaves, {p: (a, b) for p, (a, b) in events.items()}
    )


def stochastic_modules(model: torch.nn.Module, x: tuple, extra: Iterable[str] = ()) -> tuple[list[str], dict, int]:
    """Paths of the modules whose forward is random in training (first-called first), the kinds of
    random call each makes, and the activation bytes per example measured in the probe."""
    r = _probe(model, x, extra)
    return r.paths, r.calls, r.row_bytes


def _sample_bytes(r: _ProbeResult, after: str | None, inclusive: bool) -> int:
    """Activation bytes per example and sample: leaf outputs from the call of module ``after`` on
    (its start when ``inclusive`` is false, its end otherwise); all of them when ``after`` is None."""
    if after is None or after not in r.events:
        return r.row_bytes
    start, end = r.events[after]
    mark = end if inclusive else start
    return max(1, sum(b for _, b, e in r.leaf_bytes if e >= mark))


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
    """Consistent masks for ``F.dropout``-family calls inside forwards; ``k_box[0]`` = samples in this forward."""

    def __init__(self, k_box: list[int]):
        super().__init__()
        self.k_box = k_box

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = dropout_call(func, args, kwargs)
        if call is not None and call[1] and call[0] > 0:
            bound = dict(zip(("input",), args[:1], strict=False), **kwargs)
            x = bound.pop("input") if "input" in bound else kwargs["input"]
            rest = args[1:]
            return _shared_noise(lambda t: func(t, *rest, **{k: v for k, v in bound.items()}), x, self.k_box[0])
        return func(*args, **kwargs)


@contextlib.contextmanager
def _sampling(
    model: torch.nn.Module,
    paths: list[str],
    calls: dict,
    consistent: bool,
    k_box: list[int],
    prefix_path: str | None,
    batch_box: list[int],
    fold: FoldPlan | None = None,
) -> Iterator[None]:
    """Modes set for sampling; hooks and patched forwards installed; everything undone on exit."""
    modules = dict(model.named_modules())
    stochastic = {p: modules[p] for p in paths}
    with contextlib.ExitStack() as es:
        es.enter_context(preserved_state(model))
        model.eval()
        for m in stochastic.values():
            m.training = True
        for name, m in modules.items():  # fast paths of these classes skip dropout in eval
            if isinstance(m, _FAST_PATH_CLASSES) and any(
                name == "" or p == name or p.startswith(name + ".") for p in paths
            ):
                m.training = True
        if consistent:
            for p, m in stochastic.items():
                if "module" in calls[p]:
                    forward = m.forward
                    m.__dict__["forward"] = lambda x, _f=forward, _m=m: _shared_noise(_f, x, k_box[0], _m)
                    es.callback(m.__dict__.pop, "forward", None)
                elif calls[p] - {"functional", "given"}:
                    raise NotImplementedError(
                        f"consistent_masks covers dropout modules and torch.nn.functional dropout calls; "
                        f"module {p or '<model>'!r} draws randomness another way ({', '.join(sorted(calls[p]))})"
                    )
            es.enter_context(_SharedFunctional(k_box))
        once = [False]  # the fold / the repeat happens once per model forward
        if fold is not None or prefix_path is not None:
            es.callback(model.register_forward_pre_hook(lambda m, a: once.__setitem__(0, False)).remove)
        if fold is not None:
            container = fold.container

            def forward(x, _c=container):
                if once[0] or not isinstance(x, torch.Tensor) or x.shape[0] != batch_box[0]:
                    return torch.nn.Sequential.forward(_c, x)
                once[0] = True
                return run_fold(fold, x, k_box[0], consistent)

            container.__dict__["forward"] = forward  # an instance attribute, popped on exit
            es.callback(container.__dict__.pop, "forward", None)
        elif prefix_path is not None:

            def repeat(module, args):
                if once[0]:
                    return None
                once[0] = True
                return tuple(
                    _repeat(a, k_box[0])
                    if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch_box[0]
                    else a
                    for a in args
                )

            es.callback(modules[prefix_path].register_forward_pre_hook(repeat).remove)
        yield


def _repeat(a: torch.Tensor, k: int) -> torch.Tensor:
    """``a`` stacked ``k`` times along dim 0, sample-major: ``(k * rows, ...)``."""
    return a.unsqueeze(0).expand(k, *a.shape).reshape(k * a.shape[0], *a.shape[1:])


def _repeat_inputs(x: tuple, k: int) -> tuple:
    return tuple(_repeat(a, k) for a in x)


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
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    if not xs or not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in xs):
        raise TypeError("`x` must be a batched tensor or a tuple of batched tensors")
    if any(a.layout != torch.strided or a.is_nested for a in xs):
        raise TypeError(
            f"`x` must be dense (strided) tensors; received layouts {[str(a.layout) for a in xs]}"
            + (" (a nested tensor)" if any(a.is_nested for a in xs) else "")
        )
    batch = xs[0].shape[0]
    if budget is None:
        budget = 4 << 20 if xs[0].device.type == "cpu" else 1 << 30
    if batch == 0 or any(a.shape[0] != batch for a in xs):
        raise ValueError(
            f"every input needs the same non-zero batch size (dim 0); received {[tuple(a.shape) for a in xs]}"
        )

    probe_x = tuple(a[:2] if batch >= 2 else torch.cat([a, a]) for a in xs)  # BatchNorm needs 2 rows in training
    probed = _probe_cached(model, probe_x, modules)
    paths, calls = probed.paths, probed.calls
    if not paths:
        raise NoDropoutError(
            f"{type(model).__name__} has no dropout: nothing is random in training mode, so Monte-Carlo "
            "dropout would return T identical samples. Add dropout layers (or pass modules=...)."
        )
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
        row_bytes = _sample_bytes(probed, fold.paths[fold.end - 1], inclusive=True)
    elif prefix_path is not None:
        row_bytes = _sample_bytes(probed, prefix_path, inclusive=False)
    else:
        row_bytes = probed.row_bytes
    # chunks: slices of `e` examples (all of them with consistent masks, which must see one
    # set of T masks), `k` samples per forward, k * e * row_bytes <= budget
    if consistent_masks or T * batch * row_bytes <= budget:
        e = batch
        k = max(1, min(T, budget // max(1, batch * row_bytes)))
    else:
        e = max(1, min(batch, budget // (T * row_bytes)))
        k = T if T * row_bytes <= budget else max(1, budget // row_bytes)
    if seq_first:
        k = 1
    modes = [m for m, ok in (("fold", fold), ("prefix", prefix_path), ("repeat", True)) if ok]
    k_box, batch_box = [k], [e]
    devices = sorted({a.device for a in xs if a.device.type == "cuda"}, key=str)

    def run(mode: str, inputs: tuple[torch.Tensor, ...], T: int, k: int, e: int) -> torch.Tensor:
        rows = inputs[0].shape[0]
        slices = []
        with _sampling(
            model,
            paths,
            calls,
            consistent_masks,
            k_box,
            prefix_path if mode == "prefix" else None,
            batch_box,
            fold if mode == "fold" else None,
        ):
            for s0 in range(0, rows, e):
                xb = tuple(a[s0 : s0 + e] for a in inputs)
                batch_box[0] = nb = xb[0].shape[0]
                chunks, done = [], 0
                while done < T:
                    k_box[0] = n = min(k, T - done)
                    out = model(*xb) if mode != "repeat" else model(*_repeat_inputs(xb, n))
                    if not isinstance(out, torch.Tensor) or out.shape[0] != n * nb:
                        if mode != "repeat":
                            raise BatchUnavailable(f"{mode} sampling changed the output's batch size")
                        raise ValueError(
                            f"the model must return one tensor with the batch in dim 0; got "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                        )
                    chunks.append(_transform(out.reshape(n, nb, *out.shape[1:]), output))
                    done += n
                slices.append(torch.cat(chunks))
        return torch.cat(slices, dim=1)

    def fits(mode: str) -> bool:
        """Whether ``mode`` fits the model: a trial of 2 samples on the probe's examples (RNG and model
        state restored), cached with the probe. A trial that fails while the plain forward (the input
        repeated) works means the way does not fit (e.g. a skip connection from before the first
        dropout); when the plain forward fails too, that is the model's own error, raised as it is.
        Out-of-memory is never a reason to switch ways."""
        if mode == "repeat":
            return True
        key = (mode, consistent_masks)
        if key not in probed.fits:
            with torch.random.fork_rng(devices=devices):
                try:
                    run(mode, probe_x, 2, 2, probe_x[0].shape[0])
                    probed.fits[key] = True
                except FoldUnavailable:
                    return False  # this input (e.g. not finite), not the model: decided again next call
                except torch.OutOfMemoryError:
                    raise
                except Exception:  # noqa: BLE001 - classified right below, by the plain forward
                    run("repeat", probe_x, 2, 2, probe_x[0].shape[0])  # the model's own error propagates from here
                    probed.fits[key] = False
        return probed.fits[key]

    with contextlib.ExitStack() as es:
        es.enter_context(torch.inference_mode())
        if seed is not None:
            es.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(seed)
        fitting = [m for m in modes if fits(m)]
        for i, method in enumerate(fitting):
            try:
                samples_out = run(method, xs, T, k, e)
                break
            except (FoldUnavailable, BatchUnavailable):
                # only the fast ways' own signals (the fold on an input that is not finite, say); the
                # next way; repeating the input always fits, and any error there is the model's
                if i == len(fitting) - 1:
                    raise
    return MCResult(samples_out.clone(), output, method)
