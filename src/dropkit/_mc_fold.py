"""The dropout fold of :func:`dropkit.mc.predict`: the first dropout's T masks summed through the next linear layer.

When the first stochastic module of a model is a binary dropout mask ``m`` (values 0 and
``s``) on a deterministic input ``z`` -- the same for all T samples -- and a linear map
``L`` follows, every sample is

    ``L(m_t * z) = s * sum_{d kept by m_t} L_d(z) + bias``

where ``L_d(z)`` is the contribution of mask unit ``d`` alone: a column of the weight
times ``z_d`` for a Linear layer after element-wise dropout, the convolution of one input
channel for a Conv2d after channel (spatial) dropout. The contributions are computed
once per example; each sample then costs a sum over its kept units, and
:func:`dropkit.kernels.mask_fold` sums them four units at a time from a table of the 16
subset sums (the method of the Four Russians), D/4 vector adds per output instead of D
multiply-adds. A max-pool that follows the convolution (through ReLUs and more channel
dropout, which all commute with it) is fused into the same pass, so the per-sample
feature maps are never materialised at full size; so are the layer's bias and a ReLU
right after it.

Recognised patterns, as consecutive children of one ``torch.nn.Sequential`` (the only
place where the order of modules is known without tracing):

* ``Dropout`` -> (ReLU | LeakyReLU | Identity | Flatten)* -> ``Linear`` on 2-D input;
* ``Dropout2d`` -> (ReLU | LeakyReLU | Identity | MaxPool2d | AvgPool2d)* -> ``Conv2d``
  (groups 1, zero padding), optionally -> (ReLU | LeakyReLU | Identity | Dropout2d)* ->
  ``MaxPool2d`` with stride equal to its kernel (fused).

``Dropout`` / ``Dropout2d`` are torch's or dropkit's (exact classes, so a subclass that
changes ``forward`` is not misread), with no hooks on the modules the fold replaces.
The modules between the dropout and the linear layer commute with a non-negative mask
(``f(s x) = s f(x)``), so they run once per example, before the mask. Masks come from
the dropout module itself, called on a tensor of ones, so they have its exact
distribution (and, for a seeded dropkit module, the very masks the unfolded model
would draw). Anything else -- no such pattern, another dtype or device, an input that
is not finite -- leaves :func:`~dropkit.mc.predict` on its general path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dropkit import kernels

__all__ = ["FoldPlan", "plan_fold", "run_fold", "FoldUnavailable"]


class FoldUnavailable(RuntimeError):
    """The fold cannot run on this input; the caller takes the general path."""


def _element_dropouts() -> tuple[type, ...]:
    import dropkit.nn

    return (nn.Dropout, dropkit.nn.Dropout)


def _channel_dropouts() -> tuple[type, ...]:
    import dropkit.nn

    return (nn.Dropout2d, dropkit.nn.Dropout2d)


def _homogeneous(m: nn.Module) -> bool:
    """``f(s * x) = s * f(x)`` for ``s >= 0``, elementwise."""
    if type(m) in (nn.ReLU, nn.Identity):
        return True
    return type(m) is nn.LeakyReLU and m.negative_slope >= 0


def _monotone(m: nn.Module) -> bool:
    """Elementwise and non-decreasing (commutes with a max-pool) and homogeneous (commutes with a mask)."""
    return _homogeneous(m)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _pool_window(m: nn.Module) -> tuple[int, int] | None:
    """(kh, kw) of a MaxPool2d whose windows tile the input (stride = kernel, no padding, no dilation)."""
    if type(m) is not nn.MaxPool2d or m.ceil_mode or m.return_indices or _hooked(m):
        return None
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k, s = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
    if k != s or pair(m.padding) != (0, 0) or pair(m.dilation) != (1, 1):
        return None
    return k


@dataclass
class FoldPlan:
    """Where the fold applies: ``container[start]`` is the dropout, ``container[linear]`` the
    linear layer, ``container[pool]`` a fused max-pool (or ``None``), ``container[end:]`` the rest."""

    path: str
    container: nn.Sequential
    kind: str  # "element" or "channel"
    start: int
    linear: int
    pool: int | None
    end: int
    children: list[nn.Module] = field(default_factory=list)
    relu: bool = False  # container[linear + 1] is a ReLU, fused into the kernel

    def child_path(self, i: int) -> str:
        """Module path of ``container[i]``."""
        parent = self.path.rpartition(".")[0]
        name = list(self.container._modules)[i]
        return f"{parent}.{name}" if parent else name


def plan_fold(model: nn.Module, first: str, stochastic: set[str]) -> FoldPlan | None:
    """The fold for the first stochastic module ``first`` (a module path), or ``None``."""
    if "." not in first and first == "":
        return None
    parent_path, _, name = first.rpartition(".")
    named = dict(model.named_modules())
    container = named.get(parent_path)
    if type(container) is not nn.Sequential or _hooked(named[first]):
        return None
    names = list(container._modules)
    children = list(container._modules.values())
    start = names.index(name)
    drop = children[start]
    path_of = {id(m): (f"{parent_path}.{n}" if parent_path else n) for n, m in zip(names, children)}
    if type(drop) in _element_dropouts():
        kind = "element"
        if getattr(drop, "noise_shape", None) is not None:
            return None
    elif type(drop) in _channel_dropouts():
        kind = "channel"
    else:
        return None
    passthrough = (nn.Flatten,) if kind == "element" else (nn.MaxPool2d, nn.AvgPool2d)
    i = start + 1
    while i < len(children) and (_homogeneous(children[i]) or type(children[i]) in passthrough):
        m = children[i]
        if type(m) is nn.Flatten and (m.start_dim, m.end_dim) != (1, -1):
            return None
        if path_of[id(m)] in stochastic:
            return None
        i += 1
    if i == len(children):
        return None
    lin = children[i]
    if _hooked(lin) or path_of[id(lin)] in stochastic:
        return None
    if kind == "element" and type(lin) is not nn.Linear:
        return None
    if kind == "channel" and not (
        type(lin) is nn.Conv2d and lin.groups == 1 and lin.padding_mode == "zeros" and not isinstance(lin.padding, str)
    ):
        return None
    nxt = children[i + 1] if i + 1 < len(children) else None
    relu = type(nxt) is nn.ReLU and not _hooked(nxt) and path_of[id(nxt)] not in stochastic
    pool, end = None, i + 1 + relu
    if kind == "channel":
        j = i + 1 + relu
        while j < len(children) and (_monotone(children[j]) or type(children[j]) in _channel_dropouts()):
            m = children[j]
            if _hooked(m) or (type(m) not in _channel_dropouts() and path_of[id(m)] in stochastic):
                break
            j += 1
        if j < len(children) and _pool_window(children[j]) is not None:
            pool, end = j, j + 1
    return FoldPlan(first, container, kind, start, i, pool, end, children, relu)


def _draw_masks(drop: nn.Module, kind: str, in_shape: torch.Size, n: int, batch: int, consistent: bool) -> torch.Tensor:
    """``(n, batch, D)`` float32 masks from ``drop`` itself (its unpatched ``forward`` on ones)."""
    rows = n if consistent else n * batch
    shape = (rows, *in_shape[1:]) if kind == "element" else (rows, in_shape[1], 1, 1)
    m = type(drop).forward(drop, torch.ones(shape, dtype=torch.float32))
    m = m.reshape(n, 1 if consistent else batch, -1)
    return m.expand(n, batch, m.shape[-1]) if consistent else m


def run_fold(plan: FoldPlan, x: torch.Tensor, n: int, consistent: bool) -> torch.Tensor:
    """The container's forward on ``x`` (``batch`` rows) for ``n`` samples: ``(n * batch, ...)`` rows, sample-major."""
    ch = plan.children
    h = x
    for m in ch[: plan.start]:
        h = m(h)
    batch, in_shape = h.shape[0], h.shape
    z = h
    for m in ch[plan.start + 1: plan.linear]:
        z = m(z)
    lin = ch[plan.linear]
    bias = lin.bias
    if (z.dtype != torch.float32 or lin.weight.dtype != torch.float32 or not z.is_cpu
            or (bias is not None and bias.dtype != torch.float32)):
        raise FoldUnavailable("the fold needs float32 CPU tensors")
    # NaN * 0 is NaN in the real network, but a dropped unit never enters the fold's sums;
    # one sum per tensor tells whether all are finite (an overflow only sends it to the general path)
    if not (math.isfinite(float(z.sum())) and math.isfinite(float(lin.weight.sum()))):
        raise FoldUnavailable("the input or the weights are not finite")
    if plan.kind == "element" and (z.dim() != 2 or z.shape[1] != lin.in_features):
        raise FoldUnavailable("Linear after element-wise dropout needs a 2-D input")
    if plan.kind == "channel" and z.dim() != 4:
        raise FoldUnavailable("Conv2d after channel dropout needs a 4-D input")
    mask = _draw_masks(ch[plan.start], plan.kind, in_shape, n, batch, consistent)
    if plan.kind == "element" and mask.shape[-1] != z.shape[1]:
        raise FoldUnavailable("the element-wise mask does not line up with the Linear input")
    scale = float(mask.amax()) if mask.numel() else 1.0
    weight = lin.weight.detach()
    bias = None if bias is None else bias.detach()
    try:
        if plan.kind == "element":
            out = kernels.mask_fold(weight.t().reshape(z.shape[1], 1, -1), z.reshape(batch, -1, 1, 1, 1), mask,
                                    scale, 1, 1, bias, plan.relu)
            y = out.reshape(n * batch, -1)
            post: list[nn.Module] = []
        else:
            y = _fold_conv(plan, lin, z, mask, scale, n, bias)
            post = ch[plan.linear + 1 + plan.relu: plan.pool] if plan.pool is not None else []
    except ValueError as exc:  # a mask that is not {0, s}: not a plain dropout after all
        raise FoldUnavailable(str(exc)) from exc
    for m in post:
        y = m(y)
    for m in ch[plan.end:]:
        y = m(y)
    return y


def _fold_conv(plan: FoldPlan, conv: nn.Conv2d, z: torch.Tensor, mask: torch.Tensor, scale: float, n: int,
               bias: torch.Tensor | None) -> torch.Tensor:
    batch, C, H, W = z.shape
    O, _, kh, kw = conv.weight.shape
    K = kh * kw
    cols = F.unfold(z, (kh, kw), dilation=conv.dilation, padding=conv.padding, stride=conv.stride)  # (B, C*K, L)
    Ho = (H + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    Wo = (W + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    if plan.pool is not None:
        qh, qw = _pool_window(plan.children[plan.pool])
        Hp, Wp = Ho // qh, Wo // qw
        X = (cols.view(batch, C, K, Ho, Wo)[:, :, :, : Hp * qh, : Wp * qw]
             .reshape(batch, C, K, Hp, qh, Wp, qw).permute(0, 1, 2, 4, 6, 3, 5).reshape(batch, C, K, qh * qw, Hp * Wp))
        R = qh * qw
    else:
        Hp, Wp, R = Ho, Wo, 1
        X = cols.view(batch, C, K, 1, Ho * Wo)
    A = conv.weight.detach().reshape(O, C, K).permute(1, 2, 0)  # (C, K, O)
    out = kernels.mask_fold(A.contiguous(), X.contiguous(), mask, scale, R, Hp * Wp, bias, plan.relu)  # channels last
    return out.view(n * batch, Hp, Wp, O).permute(0, 3, 1, 2)
