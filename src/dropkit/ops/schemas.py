"""The ``dropkit::`` namespace: every op's schema and its fake (meta / FakeTensor) kernel, in one table.

The key is an int64 tensor ``(4,)`` on the CPU (:func:`dropkit.rng.key_tensor`), never a Python int,
so no traced path calls ``.item()``. A fake kernel computes nothing: it returns an empty tensor of the
result's shape, dtype and device, so a meta tensor of any size costs what an ``empty`` costs.
"""

from __future__ import annotations

import torch


__all__ = ["LIB", "KEY_CHECK", "key_ints", "OPS"]

LIB = torch.library.Library("dropkit", "DEF")  # noqa: TOR901 - the namespace is ours

_M32 = 0xFFFFFFFF
KEY_CHECK = "a dropkit key is an int64 tensor of shape (4,) on the CPU (dropkit.rng.key_tensor)"


def key_ints(key: torch.Tensor) -> tuple[int, int]:
    """``(seed, stream)`` of a key tensor, validated."""
    known = getattr(key, "_dropkit_ints", None)  # a key made by rng.key_tensor: valid by construction
    if known is not None:
        return known
    if key.dtype != torch.int64 or key.shape != (4,) or key.device.type != "cpu":
        raise ValueError(f"{KEY_CHECK}; received {key.dtype} {tuple(key.shape)} on {key.device}")
    a, b, c, d = key.tolist()  # rng.key_ints, inlined: this runs in every eager call with a drawn key
    if not (0 <= a <= _M32 and 0 <= b <= _M32 and 0 <= c <= _M32 and 0 <= d <= _M32):
        raise ValueError(f"a dropkit key is 4 int64 words in [0, 2**32); received {[a, b, c, d]!r}")
    return a | (b << 32), c | (d << 32)


def _state_fake(state):
    return torch.empty(4, dtype=torch.int64)


def _mask_fake(key, shape, p, offset, device):
    return torch.empty(tuple(shape), dtype=torch.bool, device=device)


def _random_fake(key, shape, offset, dtype, device):
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _like_fake(x, *args):
    return torch.empty_like(x)


def _inplace_fake(x, *args):
    return None


def _fused_fake(x, *args):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_DROPOUT = "Tensor key, float p, float scale, SymInt[]? noise_shape, int offset"
_RANDOM = "(Tensor key, SymInt[] shape, int offset, ScalarType dtype, Device device) -> Tensor"
_FUSED = "Tensor key, float p, float scale, str activation, int offset"

#: name -> (schema, fake kernel, tags). Adding an op: a row here, its implementation in
#: :mod:`dropkit.ops.kernels` (written once over a backend) and, for an op linear in ``x``, its name
#: in :data:`dropkit.ops.autograd.LINEAR`.
_TABLE = {
    "next_key": ("(Tensor(a!) state) -> Tensor", _state_fake, (torch.Tag.nondeterministic_seeded,)),
    "keep_mask": ("(Tensor key, SymInt[] shape, float p, int offset, Device device) -> Tensor", _mask_fake, ()),
    "uniform": (_RANDOM, _random_fake, ()),
    "normal": (_RANDOM, _random_fake, ()),
    "dropout": (f"(Tensor x, {_DROPOUT}) -> Tensor", _like_fake, ()),
    "dropout_": (f"(Tensor(a!) x, {_DROPOUT}) -> ()", _inplace_fake, ()),
    "gaussian_dropout": ("(Tensor x, Tensor key, float sigma, int offset) -> Tensor", _like_fake, ()),
    "drop_block": (
        "(Tensor x, Tensor key, float gamma, int block_size, SymInt[] seed_shape, int dims, int offset) -> Tensor",
        _like_fake,
        (),
    ),
    "embedding_dropout": (
        "(Tensor x, Tensor key, Tensor indices, int num_embeddings, float p, float scale) -> Tensor",
        _like_fake,
        (),
    ),
    "fused_bias_act_dropout_add": (f"(Tensor x, Tensor? bias, Tensor residual, {_FUSED}) -> Tensor", _fused_fake, ()),
    "fused_bias_act_dropout_add_backward": (
        f"(Tensor grad, Tensor x, Tensor? bias, {_FUSED}) -> Tensor",
        _fused_fake,
        (),
    ),
}


def _define(name: str, schema: str, fake, tags: tuple):
    LIB.define(name + schema, tags=tags)
    torch.library.register_fake(f"dropkit::{name}", fake, lib=LIB)
    return getattr(torch.ops.dropkit, name).default


#: Every registered op (``torch.ops.dropkit.*`` overloads), for opcheck and for tools that classify ops.
OPS = {name: _define(name, *row) for name, row in _TABLE.items()}
