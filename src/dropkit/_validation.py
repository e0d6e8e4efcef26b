"""Argument checks shared by every op and module: one message template for every argument.

Messages name the argument, what is accepted and what was received, in the form
``Invalid value for `p`: expected a real number in [0, 1] (the probability of
dropping an element). Received: p=1.5``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import cast

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCALINGS = ("inverted", "classic")


def check_p(p: object, name: str = "p", *, allow_one: bool = True) -> float:
    """A drop probability: a real number in [0, 1] (or [0, 1) when ``allow_one`` is False)."""
    if type(p) is float and 0.0 <= p and (p <= 1.0 if allow_one else p < 1.0):  # the common call (NaN fails)
        return p
    upper = "1]" if allow_one else "1)"
    what = f"a real number in [0, {upper} (the probability of dropping an element)"
    if isinstance(p, torch.Tensor) and p.numel() == 1 and not p.requires_grad:
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"Invalid type for `{name}`: expected {what}. Received: {name}={p!r} ({type(p).__name__})")
    value = float(p)
    if math.isnan(value) or value < 0.0 or value > 1.0 or (value == 1.0 and not allow_one):
        raise ValueError(f"Invalid value for `{name}`: expected {what}. Received: {name}={p!r}")
    return value


def check_float_tensor(x: object, name: str = "input") -> torch.Tensor:
    """A floating-point tensor of one of the supported dtypes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; received {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)
        raise TypeError(f"`{name}` must have a floating dtype ({names}); received dtype={x.dtype}")
    if x.layout != torch.strided or x.is_nested:
        what = "a nested tensor" if x.is_nested else f"layout={x.layout}"
        raise TypeError(
            f"`{name}` must be a dense (strided) tensor; received {what}. Apply dropout to the values "
            "(e.g. sparse.values() or each nested component) or call .to_dense() first"
        )
    return x


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; received {value!r} ({type(value).__name__})")
    return value


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"Invalid value for `{name}`: expected one of {tuple(choices)}. Received: {name}={value!r}")
    return value  # type: ignore[return-value]


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    if type(value) is int and (minimum is None or value >= minimum):  # the common call
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int; received {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"Invalid value for `{name}`: expected an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_noise_shape(noise_shape: object, shape: torch.Size) -> tuple[int, ...] | None:
    """Keras semantics: one entry per input dimension; 1 shares the mask along that dimension,
    ``None`` or the dimension's size means independent. Returns the resolved shape or
    ``None`` when the mask is element-wise."""
    if noise_shape is None:
        return None
    if isinstance(noise_shape, (str, bytes)) or not isinstance(noise_shape, Sequence):
        raise TypeError(
            f"`noise_shape` must be a sequence with one entry per input dimension (int or None); received {noise_shape!r}"
        )
    if torch.jit.is_tracing():  # a trace gives sizes as 0-d tensors: validate their values
        shape = torch.Size(int(d) for d in shape)
        noise_shape = tuple(int(n) if isinstance(n, torch.Tensor) and n.dim() == 0 else n for n in noise_shape)
    if len(noise_shape) != len(shape):
        raise ValueError(
            f"`noise_shape` must have one entry per input dimension ({len(shape)} for input shape {tuple(shape)}); "
            f"received noise_shape={tuple(noise_shape)!r}"
        )
    resolved = []
    for i, (n, d) in enumerate(zip(noise_shape, shape, strict=True)):
        if n is None:
            resolved.append(d)
        elif isinstance(n, bool) or not isinstance(n, (numbers.Integral, torch.SymInt)) or n not in (1, d):
            raise ValueError(
                f"`noise_shape[{i}]` must be 1 (shared mask), None or {d} (the input's size); "
                f"received noise_shape={tuple(noise_shape)!r} for input shape {tuple(shape)}"
            )
        else:
            resolved.append(
                cast(int, n) if isinstance(n, torch.SymInt) else int(n)
            )  # a symbolic size (export's Dim) stays one
    resolved_t = tuple(resolved)
    return None if resolved_t == tuple(shape) else resolved_t


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """A finite real number in an interval, e.g. ``check_real(std, "std", low=0.0)`` for ``[0, inf)``.

    ``what`` is appended to the description (``"(the noise's standard deviation)"``).
    """
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    desc = f"a finite real number in {left}{lo}, {hi}{right}" + (f" {what}" if what else "")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid type for `{name}`: expected {desc}. Received: {name}={value!r} ({type(value).__name__})"
        )
    v = float(value)
    bad = (
        v != v or abs(v) == math.inf
    )  # not math.isfinite: comparisons also hold a SymFloat (torch.compile(dynamic=True))
    if low is not None:
        bad = bad or v < low or (low_open and v == low)
    if high is not None:
        bad = bad or v > high or (high_open and v == high)
    if bad:
        raise ValueError(f"Invalid value for `{name}`: expected {desc}. Received: {name}={value!r}")
    return v


def check_rank(x: torch.Tensor, ranks: Sequence[int], op: str, layout: str) -> int:
    """``x.dim()`` if it is one of ``ranks``, else a ValueError naming the accepted ranks and layouts."""
    if x.dim() not in ranks:
        accepted = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(
            f"Invalid shape for `input` of {op}: expected a {accepted} tensor ({layout}). "
            f"Received: a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    return x.dim()
