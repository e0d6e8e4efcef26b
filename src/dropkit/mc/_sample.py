"""Step 3 of :func:`dropkit.mc.predict`, sampling: the ``T`` forwards of a :class:`~dropkit.mc._plan.Plan`.

The model is put in eval mode with only its stochastic modules (and the transformer layers above
them, whose eval fast path would skip dropout) in training mode; the plan's way is installed as
hooks or patched ``forward``s (the fold on the container, the repeat as a pre-hook of the first
stochastic module); everything is undone on exit, exceptions included. Whether a fast way fits a
model is decided once per model configuration by a trial of 2 samples (cached with the probe).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from dropkit._introspect import dropout_call, preserved_state
from dropkit.mc._fold import FoldPlan, FoldUnavailable, run_fold
from dropkit.mc._plan import Plan
from dropkit.mc._probe import ProbeResult

__all__ = ["BatchUnavailable", "sample"]

_FAST_PATH_CLASSES = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder, torch.nn.MultiheadAttention)


class BatchUnavailable(RuntimeError):
    """Shared-prefix sampling (samples batched after the first stochastic module) does not fit this model,
    e.g. a skip connection from before the first dropout; :func:`dropkit.mc.predict` repeats the input instead.
    (:class:`FoldUnavailable` is the fold's counterpart.) These are the only errors ``predict`` falls back on."""


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


def _run(
    model: torch.nn.Module,
    plan: Plan,
    way: str,
    inputs: tuple[torch.Tensor, ...],
    T: int,
    k: int,
    e: int,
    output: str | None,
) -> torch.Tensor:
    """``T`` samples ``(T, rows, ...)`` of ``model`` on ``inputs`` the ``way`` given, ``k`` samples of ``e`` examples
    per forward; each sample's output transformed by ``output`` (softmax, sigmoid or None)."""
    rows = inputs[0].shape[0]
    k_box, batch_box = [k], [e]
    slices = []
    with _sampling(
        model,
        plan.paths,
        plan.calls,
        plan.consistent,
        k_box,
        plan.prefix_path if way == "prefix" else None,
        batch_box,
        plan.fold if way == "fold" else None,
    ):
        for s0 in range(0, rows, e):
            xb = tuple(a[s0 : s0 + e] for a in inputs)
            batch_box[0] = nb = xb[0].shape[0]
            chunks, done = [], 0
            while done < T:
                k_box[0] = n = min(k, T - done)
                out = model(*xb) if way != "repeat" else model(*_repeat_inputs(xb, n))
                if not isinstance(out, torch.Tensor) or out.shape[0] != n * nb:
                    if way != "repeat":
                        raise BatchUnavailable(f"{way} sampling changed the output's batch size")
                    raise ValueError(
                        f"the model must return one tensor with the batch in dim 0; got "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                    )
                chunks.append(_transform(out.reshape(n, nb, *out.shape[1:]), output))
                done += n
            slices.append(torch.cat(chunks))
    return torch.cat(slices, dim=1)


def _fits(
    model: torch.nn.Module,
    plan: Plan,
    probed: ProbeResult,
    way: str,
    probe_x: tuple[torch.Tensor, ...],
    output: str | None,
    devices: list[torch.device],
) -> bool:
    """Whether ``way`` fits the model: a trial of 2 samples on the probe's examples (RNG and model
    state restored), cached with the probe. A trial that fails while the plain forward (the input
    repeated) works means the way does not fit (e.g. a skip connection from before the first
    dropout); when the plain forward fails too, that is the model's own error, raised as it is.
    Out-of-memory is never a reason to switch ways."""
    if way == "repeat":
        return True
    key = (way, plan.consistent)
    if key not in probed.fits:
        rows = probe_x[0].shape[0]
        with torch.random.fork_rng(devices=devices):
            try:
                _run(model, plan, way, probe_x, 2, 2, rows, output)
                probed.fits[key] = True
            except FoldUnavailable:
                return False  # this input (e.g. not finite), not the model: decided again next call
            except torch.OutOfMemoryError:
                raise
            except Exception:  # noqa: BLE001 - classified right below, by the plain forward
                _run(model, plan, "repeat", probe_x, 2, 2, rows, output)  # the model's own error propagates from here
                probed.fits[key] = False
    return probed.fits[key]


def sample(
    model: torch.nn.Module,
    plan: Plan,
    probed: ProbeResult,
    xs: tuple[torch.Tensor, ...],
    probe_x: tuple[torch.Tensor, ...],
    samples: int,
    output: str | None,
    seed: int | None,
) -> tuple[torch.Tensor, str]:
    """``samples`` stochastic forwards of ``model`` on the batch ``xs``, ``(T, batch, ...)``, and the way used: the
    fastest of the plan's ways that fits, falling back to the next only on :class:`FoldUnavailable` /
    :class:`BatchUnavailable`. Under ``inference_mode``; ``seed`` forks torch's RNG (the global state is unchanged)."""
    devices = sorted({a.device for a in xs if a.device.type == "cuda"}, key=str)
    with contextlib.ExitStack() as es:
        es.enter_context(torch.inference_mode())
        if seed is not None:
            es.enter_context(torch.random.fork_rng(devices=devices))
            torch.manual_seed(seed)
        fitting = [w for w in plan.ways if _fits(model, plan, probed, w, probe_x, output, devices)]
        for i, way in enumerate(fitting):
            try:
                return _run(model, plan, way, xs, samples, plan.k, plan.e, output), way
            except (FoldUnavailable, BatchUnavailable):
                # only the fast ways' own signals (the fold on an input that is not finite, say); the
                # next way; repeating the input always fits, and any error there is the model's
                if i == len(fitting) - 1:
                    raise
    raise AssertionError("unreachable: the repeat way always fits")
