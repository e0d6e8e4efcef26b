"""Step 1 of :func:`dropkit.mc.predict`, the probe: which modules are random, and the activation bytes per example.

One forward on (at most) two examples runs with every module in training mode (buffers, modes
and torch's RNG restored afterwards) while every random call is watched and attributed to the
innermost running module. The answer is cached per model (weakly) under a fingerprint of the
module tree, every module's scalar attributes, hooks and patched methods, and the input's
per-example shape, dtype and device.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from dropkit._introspect import RandomCallMode, is_dropout_module, module_stack, observe_dropkit_ops, preserved_state

__all__ = ["ProbeResult", "clear_cache", "probe", "probe_cached", "sample_bytes"]

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
    from dropkit._introspect import flatten

    return [t for t in flatten(out)[0] if isinstance(t, torch.Tensor)]


#: Probe results per model: {model: (fingerprint, ProbeResult)}.
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


def probe_cached(model: torch.nn.Module, x: tuple, extra: Iterable[str]) -> ProbeResult:
    """:func:`probe`, run once per model configuration (:func:`_fingerprint`); a copy of the answer that shares its
    ``fits`` (which sampling ways fit) with the cache."""
    extra = tuple(extra)
    key = _fingerprint(model, x, extra)
    hit = _PROBES.get(model)
    if hit is None or hit[0] != key:
        hit = _PROBES[model] = (key, probe(model, x, extra))
    r = hit[1]
    # `fits` is shared with the cache on purpose: which sampling ways fit this model configuration
    return ProbeResult(
        list(r.paths), {p: set(c) for p, c in r.calls.items()}, r.row_bytes, r.leaf_bytes, r.events, r.fits
    )


def clear_cache() -> None:
    """Forget the cached probe results (see :func:`dropkit.mc.predict`: a probe runs once per model configuration)."""
    _PROBES.clear()


@dataclass
class ProbeResult:
    paths: list[str]
    calls: dict[str, set[str]]
    row_bytes: int  # bytes of all module outputs per example
    leaf_bytes: list[tuple[str, int, int]]  # (path, bytes per example, end event) of leaf modules
    events: dict[str, tuple[int, int]]  # path -> (start event, end event) of its first call
    #: (way, consistent_masks) -> whether "fold" / "prefix" sampling fits the model (a trial decided it)
    fits: dict[tuple[str, bool], bool] = field(default_factory=dict)


def probe(model: torch.nn.Module, x: tuple, extra: Iterable[str] = ()) -> ProbeResult:
    """The probe forward on ``x`` (a tuple of batched inputs, 2 rows suffice): the modules whose forward is random in
    training mode, first-called first, the kinds of random call each makes (``extra`` paths added as "given"), and
    the activation bytes per example. The model, its buffers and torch's RNG are left as found."""
    stack: list[str] = []
    recorder = _Probe(stack)
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
        es.enter_context(observe_dropkit_ops(lambda op, p: recorder.add("dropkit")))
        model.train()
        with recorder.mode:
            model(*x)
    for p in extra:
        if p not in modules:
            raise ValueError(f"`modules` names {p!r}, which is not a submodule path of the model")
        if p not in recorder.calls:
            recorder.calls[p] = {"given"}
            recorder.order.append(p)
    for name, m in modules.items():  # dropout modules that the probe did not reach stay out
        if is_dropout_module(m) and name in recorder.calls:
            recorder.calls[name].add("module")
    return ProbeResult(
        recorder.order, recorder.calls, max(1, nbytes[0] // rows), leaves, {p: (a, b) for p, (a, b) in events.items()}
    )


def sample_bytes(r: ProbeResult, after: str | None, inclusive: bool) -> int:
    """Activation bytes per example and sample: leaf outputs from the call of module ``after`` on
    (its start when ``inclusive`` is false, its end otherwise); all of them when ``after`` is None."""
    if after is None or after not in r.events:
        return r.row_bytes
    start, end = r.events[after]
    mark = end if inclusive else start
    return max(1, sum(b for _, b, e in r.leaf_bytes if e >= mark))
