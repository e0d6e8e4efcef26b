"""The dropout fold of :func:`dropkit.mc.predict`: the first dropout's T masks summed through the next convolution.

When the first stochastic module of a model is channel (spatial) dropout -- a binary mask
``m`` (values 0 and ``s``) over the channels of a deterministic input ``z``, the same for
all T samples -- and a Conv2d follows, every sample is

    ``conv(m_t * z) = s * sum_{c kept by m_t} conv_c(z_c) + bias``

where ``conv_c(z_c)`` is the convolution of input channel ``c`` alone. The per-channel
contributions are computed once per example; each sample then costs a sum over its kept
channels, and :func:`dropkit.kernels.mask_fold` sums them four channels at a time from a
table of the 16 subset sums (the method of the Four Russians): C/4 vector adds per output
instead of C * kh * kw multiply-adds. A max-pool after the convolution (through a ReLU and
more channel dropout, which commute with it) is fused into the same pass, so per-sample
feature maps are never materialised at full size; so are the bias and a ReLU right after
the convolution.

Where it applies, as consecutive children of one ``torch.nn.Sequential`` (the only place
where the order of modules is known without tracing):

    ``Dropout2d`` -> (ReLU | LeakyReLU | Identity | MaxPool2d | AvgPool2d)* -> ``Conv2d``
    (groups 1, zero padding) [-> (ReLU | LeakyReLU | Identity | Dropout2d)* -> ``MaxPool2d``
    with stride equal to its kernel (fused)]

``Dropout2d`` is torch's or dropkit's (exact classes, so a subclass that changes
``forward`` is not misread), and the modules the fold replaces carry no hooks. The modules
between the dropout and the convolution commute with a non-negative channel mask
(``f(s x) = s f(x)``), so they run once per example, before the mask. Masks come from the
dropout module itself, called on a ``(rows, C, 1, 1)`` tensor of ones, so they have its
exact distribution (for a seeded dropkit module or torch's global RNG, the very masks the
unfolded model would draw).

The fold is planned only where it saves work: per output it replaces ``C * kh * kw``
multiply-adds by ``C / 4`` table adds plus ``16 * C / 4 / T`` for the table, and a table
add costs several multiply-adds of a tuned matmul; :data:`MIN_GAIN` is the required ratio
of the operation counts (a 3x3 kernel at T = 50: 27; a 1x1 kernel or a Linear layer after
element-wise dropout, whose ratio stays under 4, measured no faster than one batched
matmul, so they take the shared-prefix path). Anything else -- another dtype or device,
an input that is not finite -- leaves :func:`~dropkit.mc.predict` on its general path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dropkit import kernels

__all__ = ["FoldPlan", "plan_fold", "run_fold", "FoldUnavailable", "MIN_GAIN"]

#: Smallest ratio of multiply-adds saved to table adds spent for which the fold is planned.
MIN_GAIN = 6.0


class FoldUnavailable(RuntimeError):
    """The fold cannot run on this input; the caller takes the general path."""


def _channel_dropouts() -> tuple[type, ...]:
    import dropkit.nn

    return (nn.Dropout2d, dropkit.nn.Dropout2d)


def _homogeneous(m: nn.Module) -> bool:
    """``f(s * x) = s * f(x)`` for ``s >= 0``, elementwise and non-decreasing (so it also commutes with a max-pool)."""
    if type(m) in (nn.ReLU, nn.Identity):
        return True
    return type(m) is nn.LeakyReLU and m.negative_slope >= 0


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
    """Where the fold applies: ``container[start]`` is the dropout, ``container[conv]`` the
    convolution, ``container[pool]`` a fused max-pool (or ``None``), ``container[end:]`` the rest."""

    path: str
    container: nn.Sequential
    start: int
    conv: int
    pool: int | None
    end: int
    children: list[nn.Module] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # module path of each child
    relu: bool = False  # container[conv + 1] is a ReLU, fused into the kernel


def plan_fold(named: dict[str, nn.Module], first: str, stochastic: set[str], samples: int) -> FoldPlan | None:
    """The fold for the first stochastic module ``first`` (a path in ``named``, the model's
    ``dict(named_modules())``) and ``samples`` samples, or ``None``."""
    if first == "":
        return None
    parent_path, _, name = first.rpartition(".")
    container = named.get(parent_path)
    if type(container) is not nn.Sequential or _hooked(named[first]) or type(named[first]) not in _channel_dropouts():
        return None
    names = list(container._modules)
    children = list(container._modules.values())
    paths = [f"{parent_path}.{n}" if parent_path else n for n in names]
    start = names.index(name)
    i = start + 1
    while i < len(children) and (_homogeneous(children[i]) or type(children[i]) in (nn.MaxPool2d, nn.AvgPool2d)):
        if paths[i] in stochastic:
            return None
        i += 1
    if i == len(children):
        return None
    conv = children[i]
    if (
        _hooked(conv)
        or paths[i] in stochastic
        or not (
            type(conv) is nn.Conv2d
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )
    ):
        return None
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    if taps / (0.25 + 4.0 / samples) < MIN_GAIN:
        return None
    relu = (
        i + 1 < len(children)
        and type(children[i + 1]) is nn.ReLU
        and not _hooked(children[i + 1])
        and paths[i + 1] not in stochastic
    )
    pool, end = None, i + 1 + relu
    j = end
    while j < len(children) and (_homogeneous(children[j]) or type(children[j]) in _channel_dropouts()):
        m = children[j]
        if _hooked(m) or (type(m) not in _channel_dropouts() and paths[j] in stochastic):
            break
        j += 1
    if j < len(children) and _pool_window(children[j]) is not None:
        pool, end = j, j + 1
    return FoldPlan(first, container, start, i, pool, end, children, paths, relu)


def _draw_masks(drop: nn.Module, channels: int, n: int, batch: int, consistent: bool) -> torch.Tensor:
    """``(n, batch, channels)`` float32 masks from ``drop`` itself (its unpatched ``forward`` on ones)."""
    rows = n if consistent else n * batch
    m = type(drop).forward(drop, torch.ones((rows, channels, 1, 1), dtype=torch.float32))
    m = m.reshape(n, 1 if consistent else batch, channels)
    return m.expand(n, batch, channels) if consistent else m


def run_fold(plan: FoldPlan, x: torch.Tensor, n: int, consistent: bool) -> torch.Tensor:
    """The container's forward on ``x`` (``batch`` rows) for ``n`` samples: ``(n * batch, ...)`` rows, sample-major."""
    ch = plan.children
    z = x
    for m in ch[: plan.start] + ch[plan.start + 1 : plan.conv]:  # all but the dropout, once per example
        z = m(z)
    conv = cast(nn.Conv2d, ch[plan.conv])  # plan_fold checked the type
    bias = conv.bias
    if (
        z.dtype != torch.float32
        or conv.weight.dtype != torch.float32
        or not z.is_cpu
        or z.dim() != 4
        or (bias is not None and bias.dtype != torch.float32)
    ):
        raise FoldUnavailable("the fold needs a 4-D float32 CPU input and float32 weights")
    # NaN * 0 is NaN in the real network, but a dropped channel never enters the fold's sums;
    # one sum per tensor tells whether all are finite (an overflow only sends it to the general path)
    if not (math.isfinite(float(z.sum())) and math.isfinite(float(conv.weight.sum()))):
        raise FoldUnavailable("the input or the weights are not finite")
    batch, C, H, W = z.shape
    mask = _draw_masks(ch[plan.start], C, n, batch, consistent)
    scale = float(mask.amax()) if mask.numel() else 1.0
    O, _, kh, kw = conv.weight.shape
    K = kh * kw
    padding = cast(tuple[int, int], conv.padding)  # plan_fold refused string padding
    cols = F.unfold(z, (kh, kw), dilation=conv.dilation, padding=padding, stride=conv.stride)  # (B, C*K, L)
    Ho = (H + 2 * padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    Wo = (W + 2 * padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    if plan.pool is not None:  # window offsets (dy, dx) as r, pooled positions as p
        qh, qw = cast(tuple[int, int], _pool_window(ch[plan.pool]))  # plan_fold checked the window
        Hp, Wp = Ho // qh, Wo // qw
        X = (
            cols.view(batch, C, K, Ho, Wo)[:, :, :, : Hp * qh, : Wp * qw]
            .reshape(batch, C, K, Hp, qh, Wp, qw)
            .permute(0, 1, 2, 4, 6, 3, 5)
            .reshape(batch, C, K, qh * qw, Hp * Wp)
        )
        R = qh * qw
    else:
        Hp, Wp, R = Ho, Wo, 1
        X = cols.view(batch, C, K, 1, Ho * Wo)
    A = conv.weight.detach().reshape(O, C, K).permute(1, 2, 0)  # (C, K, O)
    try:
        out = kernels.mask_fold(
            A.contiguous(), X.contiguous(), mask, scale, R, Hp * Wp, None if bias is None else bias.detach(), plan.relu
        )
    except ValueError as exc:  # a mask that is not {0, s}: not a plain dropout after all
        raise FoldUnavailable(str(exc)) from exc
    y = out.view(n * batch, Hp, Wp, O).permute(0, 3, 1, 2)  # channels last in memory
    for m in ch[plan.conv + 1 + plan.relu : plan.pool] if plan.pool is not None else ():
        y = m(y)  # ReLUs and channel dropout, on the pooled map (they commute with the max)
    for m in ch[plan.end :]:
        y = m(y)
    return y
