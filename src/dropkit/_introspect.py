"""What the tools know about a running model: the one introspection layer the tools (guard, mc, lint, schedules) share.

* **dropout modules**: :func:`is_dropout_module`, :func:`drop_rate`;
* **random calls**: :func:`classify_call` sorts one torch-function call into
  ``"functional-dropout"`` (``F.dropout`` family with ``training=True``),
  ``"attention-dropout"`` (``scaled_dot_product_attention`` / ``multi_head_attention_forward``
  with ``dropout_p > 0``), ``"random-op"`` (``torch.rand*``, ``bernoulli``, ``Tensor.uniform_``,
  ...) or ``None``; :class:`RandomCallMode` reports each one during a forward;
* **dropkit's own mask ops**: :func:`observe_dropkit_ops` (the only place that knows how
  dropkit's functional layer announces a mask draw);
* **the module stack**: :func:`module_stack` keeps a list equal to the paths of the modules
  running now, so a call can be attributed to the innermost one;
* **state save / restore**: :func:`saved_modes` (train / eval flags) and
  :func:`preserved_state` (modes, buffers, dropkit stream counters).

guard, mc, lint and schedules use these; nothing here imports another tool.

Example:
    >>> stack, seen = [], []
    >>> with module_stack(model, stack), RandomCallMode(lambda kind, what: seen.append((stack[-1], kind))):
    ...     model(x)
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode  # no public API: the class has no public home


__all__ = [
    "flatten",
    "map_tensors",
    "DROPOUT_CLASS_NAMES",
    "is_dropout_module",
    "drop_rate",
    "is_stochastic",
    "func_name",
    "dropout_call",
    "attention_dropout",
    "DROPOUT_SIGNATURES",
    "classify_call",
    "RandomCallMode",
    "observe_dropkit_ops",
    "DropkitOpMode",
    "NOISE_OPS",
    "module_stack",
    "saved_modes",
    "preserved_state",
]

#: Class names of dropout-like modules in dropkit, torchvision and timm (matched by name so
#: that no optional library is imported).
DROPOUT_CLASS_NAMES = frozenset(
    {
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "FeatureAlphaDropout",
        "GaussianDropout",
        "DropBlock2d",
        "DropBlock3d",
        "DropPath",
        "LockedDropout",
        "ConcreteDropout",
        "StochasticDepth",
        "DropBlock",
        "SpatialDropout",
        "GaussianNoise",
    }
)

_DROPOUT_NAME = re.compile(r"(Dropout|DropPath|DropBlock)(\d?d)?$")  # not e.g. FusedBiasActDropoutAdd

# functional dropout family -> the default of its `training` argument
_DROPOUT_FUNCS = {
    F.dropout: True,
    F.alpha_dropout: False,
    F.feature_alpha_dropout: False,
    F.dropout1d: True,
    F.dropout2d: True,
    F.dropout3d: True,
}
#: torch's signatures of the functional dropout family (bound by dropout_call and by dropkit.patch's routes).
DROPOUT_SIGNATURES = {f: inspect.signature(f) for f in _DROPOUT_FUNCS}
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)

RANDOM_FUNCS = frozenset(
    getattr(torch, n)
    for n in (
        "rand",
        "randn",
        "randint",
        "randperm",
        "rand_like",
        "randn_like",
        "randint_like",
        "bernoulli",
        "multinomial",
        "normal",
        "poisson",
        "dropout",
        "alpha_dropout",
        "feature_alpha_dropout",
        "feature_dropout",
        "rrelu",
        "rrelu_",
    )
    if hasattr(torch, n)
)
RANDOM_METHODS = frozenset(
    getattr(torch.Tensor, n)
    for n in (
        "bernoulli",
        "bernoulli_",
        "uniform_",
        "normal_",
        "exponential_",
        "random_",
        "geometric_",
        "cauchy_",
        "log_normal_",
        "multinomial",
    )
)


#: torch's dropout modules (their common base class, ``_DropoutNd``, is private).
_TORCH_DROPOUTS = (
    torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)  # fmt: skip


def flatten(obj: Any) -> tuple[list[Any], Any]:
    """``(leaves, structure)`` of a model's inputs or outputs: tuples, lists and mappings (``dict``, transformers'
    ``ModelOutput``) are walked, anything else is a leaf; two objects have equal ``structure`` iff they nest the
    same containers with the same keys. (torch's pytree does this too, but only as a private module.)"""
    leaves: list[Any] = []

    def walk(o: Any) -> Any:
        if isinstance(o, (list, tuple)):
            return (type(o), tuple(walk(v) for v in o))
        if isinstance(o, Mapping):
            return (type(o), tuple((k, walk(o[k])) for k in o))
        leaves.append(o)
        return None

    return leaves, walk(obj)


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside its tuples, lists and dicts (named tuples kept)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((k, map_tensors(fn, v)) for k, v in obj.items())
    return obj


def is_dropout_module(module: torch.nn.Module) -> bool:
    """``True`` for torch's and dropkit's dropout modules and DropPath / DropBlock-like layers."""
    if isinstance(module, _TORCH_DROPOUTS):
        return True
    return any(c.__name__ in DROPOUT_CLASS_NAMES or _DROPOUT_NAME.search(c.__name__) for c in type(module).__mro__[:-1])


def drop_rate(module: torch.nn.Module) -> float:
    """The drop probability of a dropout-like module (``p``, ``drop_prob`` or ``rate``); 1.0 if unknown."""
    for attr in ("p", "drop_prob", "rate"):
        value = getattr(module, attr, None)
        if value is None:
            continue
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            return 1.0
    return 1.0


def is_stochastic(module: torch.nn.Module) -> bool:
    """A dropout-like module that draws noise when training: a drop rate above 0, or noise with ``std > 0``
    (``GaussianNoise`` drops nothing, so its ``p`` is 0)."""
    if not is_dropout_module(module):
        return False
    std = getattr(module, "std", None)
    return drop_rate(module) > 0 or (isinstance(std, (int, float)) and std > 0)


def func_name(func: Any) -> str:
    """The name a user would write for ``func``: ``torch.nn.functional.dropout``, ``torch.rand``, ``Tensor.uniform_``."""
    name = getattr(func, "__name__", repr(func))
    if getattr(F, name, None) is func:
        return f"torch.nn.functional.{name}"
    if getattr(torch, name, None) is func:
        return f"torch.{name}"
    if getattr(torch.Tensor, name, None) is func:
        return f"Tensor.{name}"
    return f"{getattr(func, '__module__', None) or 'torch'}.{name}"


def dropout_call(func: Any, args: tuple, kwargs: dict) -> tuple[float, bool] | None:
    """``(p, training)`` of a functional dropout-family call, or ``None`` for any other function."""
    default = _DROPOUT_FUNCS.get(func)
    if default is None:
        return None
    try:
        bound = DROPOUT_SIGNATURES[func].bind(*args, **kwargs)
    except TypeError:
        return None
    a = bound.arguments
    return float(a.get("p", 0.5)), bool(a.get("training", default))


def attention_dropout(func: Any, args: tuple, kwargs: dict) -> float | None:
    """The dropout probability of an attention call that would apply it, else ``None``."""
    if func is F.scaled_dot_product_attention:
        p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        return float(p)
    if func is F.multi_head_attention_forward:
        a = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
        return float(a["dropout_p"]) if a.get("training", True) else 0.0
    return None


def classify_call(func: Any, args: tuple, kwargs: dict) -> tuple[str, str] | None:
    """``(kind, description)`` of a call that draws random numbers, ``None`` for any other call.

    ``kind`` is ``"functional-dropout"`` (a dropout-family function with ``training=True``
    and ``p > 0``), ``"attention-dropout"`` (attention with ``dropout_p > 0``) or
    ``"random-op"`` (one of torch's random functions or ``Tensor`` methods). A dropout
    call with ``training=False`` or ``p == 0`` is inert: ``None``.
    """
    call = dropout_call(func, args, kwargs)
    if call is not None:
        p, training = call
        if training and p > 0:
            return "functional-dropout", f"{func_name(func)}(p={p:g}, training=True)"
        return None
    ap = attention_dropout(func, args, kwargs)
    if ap is not None:
        return ("attention-dropout", f"{func_name(func)} with dropout_p={ap:g}") if ap > 0 else None
    if func in RANDOM_FUNCS or func in RANDOM_METHODS:
        return "random-op", f"random op {func_name(func)}"
    return None


class RandomCallMode(TorchFunctionMode):
    """A ``TorchFunctionMode`` that calls ``on_call(kind, description)`` for every random call
    (:func:`classify_call`) made inside it, then runs the call unchanged."""

    def __init__(self, on_call: Callable[[str, str], None]):
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = classify_call(func, args, kwargs)
        if found is not None:
            self.on_call(*found)
        return func(*args, **kwargs)


#: The registered ops that apply random noise to data (``dropkit::keep_mask`` only serves them, and
#: ``dropkit::next_key`` only advances a seed), with the index of their drop-probability argument.
NOISE_OPS = {
    "dropout": 2,
    "dropout_": 2,
    "fused_bias_act_dropout_add": 4,
    "embedding_dropout": 4,
    "gaussian_dropout": None,
    "drop_block": None,
    "uniform": None,
    "normal": None,
}


class DropkitOpMode(TorchDispatchMode):
    """A ``TorchDispatchMode`` that calls ``fn(op, p)`` for every op of the ``dropkit::`` namespace that draws
    noise (:data:`NOISE_OPS`), whatever called it (a module, a function, ``torch.ops.dropkit`` directly)."""

    def __init__(self, fn: Callable[[str, float | None], None]):
        super().__init__()
        self.fn = fn

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "dropkit":
            name = func._schema.name.split("::", 1)[1]
            if name in NOISE_OPS:
                i = NOISE_OPS[name]
                p = float(args[i]) if i is not None and len(args) > i else None
                if p is None or 0.0 < p:
                    self.fn(f"dropkit::{name}", p)
        return func(*args, **kwargs)


def observe_dropkit_ops(fn: Callable[[str, float | None], None]) -> contextlib.AbstractContextManager[None]:
    """Call ``fn(op, p)`` whenever a dropkit op draws random noise inside the ``with`` block
    (``p``: the drop probability of a mask op, ``None`` for ops whose noise has no single rate).

    The one place the tools learn about dropkit's own ops: they are registered ``torch.library``
    ops (:mod:`dropkit.ops`), seen by a dispatch mode over the ``dropkit::`` namespace.
    """
    return DropkitOpMode(fn)


@contextlib.contextmanager
def module_stack(model: torch.nn.Module, stack: list[str]) -> Iterator[dict[str, torch.nn.Module]]:
    """Keep ``stack`` equal to the paths of the modules running now (hooks on every submodule);
    yields ``dict(model.named_modules())``. Hooks are removed and ``stack`` cleared on exit."""
    handles = []
    modules = dict(model.named_modules())

    def pop(module: torch.nn.Module, args: Any, output: Any) -> None:
        if stack:
            stack.pop()

    for name, mod in modules.items():
        handles.append(mod.register_forward_pre_hook(lambda m, a, _n=name: stack.append(_n)))
        handles.append(mod.register_forward_hook(pop, always_call=True))
    try:
        yield modules
    finally:
        for h in handles:
            h.remove()
        stack.clear()


@contextlib.contextmanager
def saved_modes(model: torch.nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag after the block, exceptions included."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


@contextlib.contextmanager
def preserved_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore buffers (BatchNorm statistics...), dropkit stream counters and modes after the block."""
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    calls = {m: m._calls for m in model.modules() if hasattr(m, "_calls")}
    try:
        with saved_modes(model):
            yield
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])
        for m, c in calls.items():
            m._calls = c
