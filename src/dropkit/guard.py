"""Deterministic-inference guard: find every source of randomness left in a model's inference.

Forgetting ``model.eval()`` is the classic mistake; functional dropout without
``training=self.training`` and attention with an ungated ``dropout_p`` hide the same
bug where ``.eval()`` cannot reach it. :func:`check_inference` finds them two ways:

* **watching** one forward: dropout modules called in training mode, ``F.dropout``-family
  calls with ``training=True``, ``scaled_dot_product_attention`` / multi-head attention with
  ``dropout_p > 0``, every dropkit mask op, and torch's random functions (``rand``,
  ``bernoulli``, ...), each attributed to the module that was running;
* **comparing** ``runs`` forwards bit for bit (NaNs included), which also catches
  randomness that is not a Python-visible call (a custom kernel, a non-deterministic
  algorithm).

:func:`inference` is the context manager that prevents the mistake, :func:`freeze`
removes dropout layers for export and :func:`random_ops` scans an exported graph.

Example:
    >>> report = dropkit.guard.check_inference(model, (x,))
    >>> report.deterministic, report.culprits
    >>> with dropkit.guard.inference(model):
    ...     y = model(x)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dropkit._validation import check_int
from dropkit._introspect import (
    flatten,
    map_tensors,
    RandomCallMode,
    drop_rate,
    is_dropout_module,
    is_stochastic,
    module_stack,
    observe_dropkit_ops,
    preserved_state,
    saved_modes,
)

__all__ = [
    "Culprit",
    "InferenceReport",
    "NondeterministicInferenceError",
    "check_inference",
    "assert_deterministic",
    "inference",
    "freeze",
    "random_ops",
    "is_dropout_module",
    "Scale",
]

_RANDOM_OP_NAMES = frozenset(
    {
        "dropout",
        "native_dropout",
        "feature_dropout",
        "alpha_dropout",
        "feature_alpha_dropout",
        "fused_dropout",
        "bernoulli",
        "rand",
        "randn",
        "randint",
        "randperm",
        "rand_like",
        "randn_like",
        "randint_like",
        "normal",
        "normal_functional",
        "uniform",
        "exponential",
        "multinomial",
        "poisson",
        "geometric",
        "cauchy",
        "log_normal",
        "random",
        "rrelu",
        "rrelu_with_noise",
        "randomnormal",
        "randomuniform",
        "randomnormallike",
        "randomuniformlike",
    }
)
_DROPOUT_OP_NAMES = frozenset({"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"})


@dataclass(frozen=True)
class Culprit:
    """One source of randomness: where (``path``, ``""`` = the model itself), what kind, and details."""

    path: str
    kind: str  # "module-in-training" | "functional-dropout" | "attention-dropout" | "dropkit-op" | "random-op" | "output-differs"
    what: str

    def __str__(self) -> str:
        return f"{self.path or '<model>'}: {self.what}"


@dataclass
class InferenceReport:
    """Result of :func:`check_inference`."""

    culprits: list[Culprit]
    runs: int
    identical_runs: int  # runs whose outputs equal the first run's bit for bit (the first included)

    @property
    def deterministic(self) -> bool:
        return not self.culprits and self.identical_runs == self.runs

    def summary(self) -> str:
        head = f"bit-identical in {self.identical_runs}/{self.runs} runs"
        if self.deterministic:
            return head
        return head + "; sources of randomness:\n" + "\n".join(f"  - {c}" for c in self.culprits)

    def __str__(self) -> str:
        return self.summary()


class NondeterministicInferenceError(AssertionError):
    """Raised by :func:`assert_deterministic`; ``.report`` holds the :class:`InferenceReport`."""

    def __init__(self, report: InferenceReport):
        self.report = report
        self.culprits = list(report.culprits)
        super().__init__("inference is not deterministic: " + report.summary())


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def _same(a: Any, b: Any) -> bool:
    la, sa = flatten(a)
    lb, sb = flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(_bits(x), _bits(y)):
                return False
        elif x != y and not (x != x and y != y):  # NaN == NaN for bit-identity
            return False
    return True


def _clone(inputs: tuple) -> tuple:
    return map_tensors(torch.Tensor.clone, inputs)


def check_inference(model: Any, example_inputs: Sequence[Any], runs: int = 5) -> InferenceReport:
    """Run ``model(*example_inputs)`` ``runs`` times as it is and report every source of randomness.

    The model's modes are **not** changed (that is what is checked); buffers (BatchNorm
    statistics a training-mode model would update), dropkit stream counters and torch's
    global RNG state are restored afterwards, and inputs are cloned for every run.

    Args:
        model: a ``torch.nn.Module`` (or any callable; then only random calls and the
            bit-for-bit comparison are checked, without module paths).
        example_inputs: tuple of positional arguments, as ``torch.export`` takes.
        runs: forwards to compare, >= 2.

    Returns:
        :class:`InferenceReport` with ``.deterministic``, ``.culprits``, ``.identical_runs``.
    """
    runs = check_int(runs, "runs", minimum=2)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(
            f"`example_inputs` must be a tuple of positional arguments (as torch.export takes); "
            f"received {type(example_inputs).__name__}"
        )
    stack: list[str] = []
    found: dict[Culprit, None] = {}
    is_module = isinstance(model, torch.nn.Module)

    def add(kind: str, what: str) -> None:  # attributed to the innermost running module
        found[Culprit(stack[-1] if stack else "", kind, what)] = None

    watcher = RandomCallMode(add)

    def on_dropkit(op: str, p: float | None) -> None:
        add("dropkit-op", f"{op}(p={p:g}) draws a random mask" if p is not None else f"{op} draws random noise")

    def on_call(mod_name: str, mod: torch.nn.Module) -> None:
        if mod.training and is_stochastic(mod):
            found[Culprit(mod_name, "module-in-training", f"{type(mod).__name__} in training mode (call .eval())")] = (
                None
            )

    outputs = []
    with contextlib.ExitStack() as es:
        es.enter_context(torch.random.fork_rng(devices=[]))
        es.enter_context(torch.no_grad())
        if is_module:
            es.enter_context(preserved_state(model))
        if is_module and not isinstance(model, torch.jit.ScriptModule):  # no hooks on TorchScript
            modules = es.enter_context(module_stack(model, stack))
            for name, mod in modules.items():
                if is_dropout_module(mod):
                    h = mod.register_forward_pre_hook(lambda m, a, _n=name: on_call(_n, m))
                    es.callback(h.remove)
        es.enter_context(observe_dropkit_ops(on_dropkit))
        for _ in range(runs):
            with watcher:
                outputs.append(model(*_clone(tuple(example_inputs))))
    identical = sum(_same(outputs[0], o) for o in outputs)
    # one line per cause: a dropout module in training explains the calls it makes, and any
    # named cause explains plain random ops at the same path (e.g. the key a dropkit op draws)
    modules_in_training = {c.path for c in found if c.kind == "module-in-training"}
    explained = {c.path for c in found if c.kind != "random-op"}
    culprits = [
        c
        for c in found
        if (c.kind == "module-in-training" or c.path not in modules_in_training)
        and (c.kind != "random-op" or c.path not in explained)
    ]
    if identical < runs and not culprits:
        culprits.append(
            Culprit(
                "",
                "output-differs",
                "outputs differ between runs but no random call was seen "
                "(a custom kernel or a non-deterministic algorithm?)",
            )
        )
    return InferenceReport(culprits, runs, identical)


def assert_deterministic(model: Any, example_inputs: Sequence[Any], runs: int = 5) -> InferenceReport:
    """:func:`check_inference`, raising :class:`NondeterministicInferenceError` listing every culprit."""
    report = check_inference(model, example_inputs, runs)
    if not report.deterministic:
        raise NondeterministicInferenceError(report)
    return report


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode + ``torch.inference_mode()`` for the block; every submodule's previous mode is
    restored on exit, exceptions included.

    Example:
        >>> with dropkit.guard.inference(model):
        ...     y = model(x)          # deterministic; model.training is back as it was afterwards
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    with saved_modes(model):
        model.eval()
        with torch.inference_mode():
            yield model


class Scale(torch.nn.Module):
    """``y = x * scale``: the inference form of classic-scaling dropout (``scale = 1 - p``)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _inference_form(module: torch.nn.Module) -> torch.nn.Module:
    p = drop_rate(module)
    if getattr(module, "scaling", "inverted") == "classic" and 0 < p < 1:
        return Scale(1.0 - p)
    return torch.nn.Identity()


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode with every dropout layer replaced by its inference form.

    ``torch.nn.Identity`` for inverted scaling (torch's and dropkit's default), :class:`Scale`
    ``(1 - p)`` for dropkit's ``scaling="classic"``; ``MultiheadAttention`` gets
    ``dropout=0``. Outputs equal those of the eval-mode model, and a ``torch.export``,
    TorchScript or ONNX graph of the copy has no random op (check with :func:`random_ops`).
    Functional dropout inside a ``forward`` is not a layer: with ``training=self.training``
    it is inert in the frozen (eval) copy and vanishes from traced / exported graphs, but a
    ``torch.jit.script`` graph keeps the (inactive) call. ``model`` is not modified.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; received {type(model).__name__}")
    if is_dropout_module(model):
        return _inference_form(model).eval()
    frozen = copy.deepcopy(model)
    for parent in list(frozen.modules()):
        for name, child in list(parent.named_children()):
            if is_dropout_module(child):
                setattr(parent, name, _inference_form(child))
        if isinstance(parent, torch.nn.MultiheadAttention):
            parent.dropout = 0.0
    return frozen.eval()


# ---------------------------------------------------------------------------
# Exported graphs
# ---------------------------------------------------------------------------
def _op_base(name: str) -> str:
    """``aten.native_dropout.default`` / ``aten::bernoulli_`` / ``RandomNormal`` -> base op name."""
    name = name.replace("::", ".")
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] in ("aten", "prims", "quantized", "dropkit"):
        base = parts[1]
    elif len(parts) == 2 and parts[0] in ("aten", "prims", "dropkit"):
        base = parts[1]
    else:
        base = parts[-1]
    return base.rstrip("_").lower()


def _is_random_name(name: str) -> bool:
    return "dropkit" in name.split(".")[0].lower() or _op_base(name) in _RANDOM_OP_NAMES


def _fx_random(gm: torch.fx.Graph) -> list[str]:
    out = []
    for node in gm.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if not _is_random_name(name):
            continue
        if _op_base(name) in _DROPOUT_OP_NAMES and len(node.args) >= 3 and node.args[2] is False:
            continue  # dropout(x, p, train=False): inert
        where = ""
        stack = node.meta.get("nn_module_stack")
        if stack:
            where = f" in module {list(stack.values())[-1][0] or '<model>'!r}"
        out.append(f"{name}{where}")
    return out


def _ts_random(graph: Any) -> list[str]:
    out = []

    def visit(block: Any) -> None:
        for node in block.nodes():
            kind = node.kind()
            if _is_random_name(kind):
                inputs = list(node.inputs())
                inert = False
                if _op_base(kind) in _DROPOUT_OP_NAMES and len(inputs) >= 3:
                    val = inputs[2].toIValue()
                    inert = val is False
                if not inert:
                    out.append(kind)
            for sub in node.blocks():
                visit(sub)

    visit(graph)
    return out


def random_ops(program: Any) -> list[str]:
    """The random ops in an exported graph (empty list = none).

    Accepts a ``torch.export.ExportedProgram``, a ``torch.fx.GraphModule``, a TorchScript
    module / function, an ``onnx.ModelProto`` or a path / bytes of an ``.onnx`` file.
    Dropout ops with a constant ``train=False`` are inert and not listed.
    """
    if isinstance(program, torch.export.ExportedProgram):
        return _fx_random(program.graph)
    if isinstance(program, torch.fx.GraphModule):
        return _fx_random(program.graph)
    if isinstance(program, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        graph = program.inlined_graph if hasattr(program, "inlined_graph") else program.graph
        return _ts_random(graph)
    if isinstance(program, (str, bytes)) or type(program).__name__ == "ModelProto":
        import onnx

        if isinstance(program, str):
            program = onnx.load(program)
        elif isinstance(program, bytes):
            program = onnx.load_from_string(program)
        out = []
        graphs = [program.graph]
        while graphs:
            g = graphs.pop()
            for node in g.node:
                if _is_random_name(node.op_type) or node.op_type in ("Dropout", "Bernoulli", "Multinomial"):
                    out.append(f"onnx {node.op_type} ({node.name})")
                for attr in node.attribute:
                    if attr.HasField("g"):
                        graphs.append(attr.g)
                    graphs.extend(attr.graphs)
        return out
    raise TypeError(
        "`program` must be an ExportedProgram, a GraphModule, a TorchScript module or an ONNX model; "
        f"received {type(program).__name__}"
    )
