"""Philox4x32-10 and the mask contract: the one place randomness is defined in dropkit.

Every random number in dropkit (every dropout mask, every noise sample) is a pure
function of ``(seed, stream, element index)`` computed with Philox4x32-10
(Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
the Random123 library). Nothing is drawn serially, so a mask does not depend on
the device, the thread count, the memory layout or the dtype, and backward can
regenerate it instead of storing it. ``docs/rng.md`` states the contract in full;
in one paragraph:

    Element ``j`` (row-major logical index) of a call's noise tensor uses the
    global index ``e = offset + j``. Philox4x32-10 is evaluated at
    ``counter = (lo32(e // 8), hi32(e // 8), lo32(stream), hi32(stream))`` with
    ``key = (lo32(seed), hi32(seed))``; its four 32-bit output words are split
    into eight 16-bit values (word ``k`` gives lanes ``2k`` = low half and
    ``2k + 1`` = high half) and element ``e`` takes lane ``e % 8``. The element
    is **kept** iff that 16-bit value ``u`` satisfies ``u >= threshold(p)`` with
    ``threshold(p) = floor(p * 65536 + 0.5)``, capped at 65535 for every ``p < 1``
    (65536, every element dropped, only at ``p = 1``). So the keep probability
    ``q(p) = 1 - threshold(p) / 65536`` is within ``2**-17`` of ``1 - p`` and never 0
    below ``p = 1``; inverted dropout scales survivors by ``1 / q(p)``, so ``E[y] = x``
    exactly at every ``p < 1``. ``p`` is the probability of *dropping*.

A call's randomness is one **key**: four 32-bit words ``(lo(seed), hi(seed), lo(stream),
hi(stream))`` (:func:`key_words`), carried through registered ops as an int64 tensor of
shape ``(4,)`` (:func:`key_tensor`) so that torch.compile and torch.export see it as data.

Uniform and normal samples (Gaussian dropout, Concrete dropout, ...) use the same
counter layout with 32-bit lanes: element ``e`` uses block ``e // 4``. A uniform takes word
``e % 4`` and maps it to ``(w + 0.5) * 2**-32`` in the open interval (0, 1). A normal (contract
v2, :func:`box_muller_f32_numpy`) takes the word pair ``(w[2k], w[2k+1])``, ``k = (e % 4) // 2``,
and is the cosine (even ``e``) or sine (odd ``e``) half of Box-Muller computed in exactly rounded
float32 operations with polynomial log/cos/sin, so every backend returns the same bits.
"""

from __future__ import annotations

import functools
import math
import numbers
import threading

import numpy as np
import torch

__all__ = [
    "philox4x32_10",
    "threshold",
    "keep_probability",
    "keep_mask_numpy",
    "keep_mask",
    "uniform",
    "normal",
    "normal_numpy",
    "normal_torch",
    "box_muller_f32_numpy",
    "box_muller_f32_torch",
    "resolve_seed",
    "check_seed",
    "check_key_args",
    "check_rng_args",
    "check_offset",
    "key_words",
    "key_tensor",
    "key_ints",
    "inverted_scale",
    "compute_dtype",
    "batch_shard",
    "current_batch_start",
    "ELEMENTS_PER_BLOCK",
    "MASK_BITS",
]

#: Mask elements drawn from one Philox4x32-10 call (eight 16-bit lanes).
ELEMENTS_PER_BLOCK = 8
#: Bits of Philox output compared against the threshold for one mask element.
MASK_BITS = 16

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_ROUNDS = 10


# ---------------------------------------------------------------------------
# Philox4x32-10 in NumPy (the readable definition)
# ---------------------------------------------------------------------------
def philox4x32_10(counters: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32-10 block function (Random123), vectorised in NumPy.

    Args:
        counters: ``uint32`` array of shape ``(..., 4)``; word 0 is the least significant.
        key: ``uint32`` array of shape ``(2,)`` or broadcastable to ``(..., 2)``.

    Returns:
        ``uint32`` array of shape ``(..., 4)``: the four output words.

    Example:
        >>> out = philox4x32_10(np.zeros(4, np.uint32), np.zeros(2, np.uint32))
        >>> [f"{w:08x}" for w in out]
        ['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']
    """
    counters = np.asarray(counters)
    key = np.asarray(key)
    if counters.dtype != np.uint32 or key.dtype != np.uint32:
        raise TypeError(
            f"philox4x32_10 expects uint32 arrays; received counters.dtype={counters.dtype}, key.dtype={key.dtype}"
        )
    if counters.ndim == 0 or counters.shape[-1] != 4:
        raise ValueError(f"counters must have shape (..., 4); received {counters.shape}")
    if key.ndim == 0 or key.shape[-1] != 2:
        raise ValueError(f"key must have shape (2,) or (..., 2); received {key.shape}")
    batch = np.broadcast_shapes(counters.shape[:-1], key.shape[:-1])
    c = [np.broadcast_to(counters[..., i], batch).astype(np.uint64) for i in range(4)]
    k0 = np.broadcast_to(key[..., 0], batch).astype(np.uint64)
    k1 = np.broadcast_to(key[..., 1], batch).astype(np.uint64)
    m32 = np.uint64(_M32)
    for r in range(_ROUNDS):
        if r:  # bump the key between rounds (Weyl sequence)
            k0 = (k0 + np.uint64(_PHILOX_W0)) & m32
            k1 = (k1 + np.uint64(_PHILOX_W1)) & m32
        p0 = np.uint64(_PHILOX_M0) * c[0]  # 32x32 -> 64-bit products
        p1 = np.uint64(_PHILOX_M1) * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ k0,
            p1 & m32,
            (p0 >> np.uint64(32)) ^ c[3] ^ k1,
            p0 & m32,
        ]
    return np.stack(c, axis=-1).astype(np.uint32)


# ---------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------
def _check_rate(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"`p` must be a real number in [0, 1] (the probability of dropping); received p={p!r}")
    return float(p)


def threshold(p: float) -> int:
    """The 16-bit drop threshold for drop probability ``p``: ``floor(p*65536 + 0.5)``, at most 65535 for ``p < 1``.

    An element is dropped iff its 16-bit value is ``< threshold(p)``; only ``p = 1`` gives
    65536 (every element dropped), so a rate below 1 always keeps some elements and
    :func:`inverted_scale` stays finite.
    """
    p = _check_rate(p)
    if p == 1.0:
        return 1 << MASK_BITS
    return min((1 << MASK_BITS) - 1, int(math.floor(p * 65536.0 + 0.5)))


def keep_probability(p: float) -> float:
    """The exact keep probability ``q(p) = 1 - threshold(p) / 65536`` that the contract realises."""
    return 1.0 - threshold(p) / 65536.0


def inverted_scale(p: float) -> float:
    """Inverted dropout's survivor scale ``1 / q(p)`` (the exact keep probability), so ``E[y] = x`` at every ``p < 1``.

    It differs from ``1 / (1 - p)`` by a relative ``|q - (1 - p)| / q <= 2**-17 / q``: 0 at
    ``p = 0.5`` or ``0.75``, under ``1e-5`` for ``p <= 0.5``. ``p = 1`` has no scale (the output is zeros).
    """
    scale = _SCALES.get(p) if type(p) is float else None
    if scale is not None:
        return scale
    q = keep_probability(p)
    if q == 0.0:
        raise ValueError("inverted_scale: p = 1 drops every element; there is no scale (the output is zeros)")
    if type(p) is float and len(_SCALES) < 4096:  # the rates a program uses: a few
        _SCALES[p] = 1.0 / q
    return 1.0 / q


_SCALES: dict[float, float] = {}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which ``x * factor`` is evaluated: float64 for float64 inputs, else float32 (rounded once)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split_key(seed: int) -> tuple[int, int]:
    return seed & _M32, (seed >> 32) & _M32


# ---------------------------------------------------------------------------
# Masks, NumPy (reference) and torch (any device)
# ---------------------------------------------------------------------------
def _philox_range_numpy(b_first: int, b_last: int, seed: int, stream: int) -> np.ndarray:
    """Philox4x32-10 output words ``(blocks, 4)`` of blocks ``b_first .. b_last - 1`` at ``stream``."""
    blocks = np.arange(b_first, max(b_last, b_first), dtype=np.uint64)
    ctr = np.empty(blocks.shape + (4,), np.uint32)
    ctr[:, 0] = (blocks & np.uint64(_M32)).astype(np.uint32)
    ctr[:, 1] = (blocks >> np.uint64(32)).astype(np.uint32)
    ctr[:, 2] = stream & _M32
    ctr[:, 3] = (stream >> 32) & _M32
    return philox4x32_10(ctr, np.array(_split_key(seed), np.uint32))


def keep_mask_numpy(n: int, p: float, seed: int, stream: int = 0, offset: int = 0) -> np.ndarray:
    """Keep mask (``bool``, ``True`` = kept) of ``n`` elements, computed in NumPy.

    This is the contract written as plainly as possible; every other backend must
    return exactly this.
    """
    e0 = offset
    b_first, b_last = e0 // 8, (e0 + n + 7) // 8
    words = _philox_range_numpy(b_first, b_last, seed, stream)
    lanes = words.view(np.uint16) if words.dtype.byteorder in "=<|" and np.little_endian else None
    if lanes is None:  # big-endian host: split explicitly
        lanes = np.stack([words & 0xFFFF, words >> 16], axis=-1).astype(np.uint16)
    lanes = lanes.reshape(-1)
    start = e0 - b_first * 8
    return lanes[start : start + n] >= threshold(p)


def _mulhilo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi32, lo32) of ``a * x`` for a 32-bit constant and an int64 tensor of 32-bit values,
    without overflowing int64."""
    p_lo = (x & 0xFFFF) * a
    mid = (p_lo >> 16) + (x >> 16) * a
    return mid >> 16, ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def philox_blocks_torch(blocks: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """Philox4x32-10 at counters ``(lo(b), hi(b), lo(stream), hi(stream))`` for each block index b.

    ``blocks`` is an int64 tensor on any device; returns int64 ``(..., 4)`` holding 32-bit words.
    Uses only int64 arithmetic, so it runs wherever torch does (the portable fallback).
    """
    c0 = blocks & _M32
    c1 = blocks >> 32
    c2 = torch.full_like(blocks, stream & _M32)
    c3 = torch.full_like(blocks, (stream >> 32) & _M32)
    k0, k1 = _split_key(seed)
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + _PHILOX_W0) & _M32
            k1 = (k1 + _PHILOX_W1) & _M32
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _lane_range(n: int, offset: int, per_block: int, device) -> tuple[torch.Tensor, int]:
    b_first = offset // per_block
    b_last = (offset + n + per_block - 1) // per_block
    blocks = torch.arange(b_first, max(b_last, b_first), dtype=torch.int64, device=device)
    return blocks, offset - b_first * per_block


def keep_mask(
    n: int, p: float, seed: int, stream: int = 0, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Keep mask (``torch.bool``, 1-D, ``True`` = kept) of ``n`` elements per the contract.

    The contract evaluated in plain torch integer ops (NumPy on CPU): the definition, not
    the fast path. :func:`dropkit.kernels.keep_mask` returns the same bits from the fastest
    backend for ``device``.
    """
    n = check_offset(n, "n")
    p = _check_rate(p)
    seed, stream, offset = check_seed(seed), check_seed(stream, "stream"), check_offset(offset)
    check_offset(offset + n, "offset + n")
    if torch.device(device).type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(keep_mask_numpy(n, p, seed, stream, offset)))
    return keep_mask_torch(n, p, seed, stream, offset, device)


def keep_mask_torch(
    n: int, p: float, seed: int, stream: int = 0, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Keep mask computed with plain torch integer ops (the portable reference backend)."""
    blocks, start = _lane_range(n, offset, 8, device)
    words = philox_blocks_torch(blocks, seed, stream)
    lanes = torch.stack([words & 0xFFFF, words >> 16], dim=-1).reshape(-1)
    return lanes[start : start + n] >= threshold(p)


def uniform_words_torch(
    n: int, seed: int, stream: int = 0, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The 32-bit words (as int64) of elements ``offset .. offset + n - 1`` in 32-bit lane layout."""
    blocks, start = _lane_range(n, offset, 4, device)
    return philox_blocks_torch(blocks, seed, stream).reshape(-1)[start : start + n]


def uniform_words_numpy(n: int, seed: int, stream: int = 0, offset: int = 0) -> torch.Tensor:
    """:func:`uniform_words_torch` computed with NumPy's uint64 arithmetic (CPU: the same bits, far faster than int64 torch ops)."""
    b_first, b_last = offset // 4, (offset + n + 3) // 4
    words = _philox_range_numpy(b_first, b_last, seed, stream).reshape(-1)
    start = offset - b_first * 4
    return torch.from_numpy(words[start : start + n].astype(np.int64))


def uniform(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    stream: int = 0,
    offset: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Uniform samples in the open interval (0, 1): ``u = (w + 0.5) * 2**-32`` (computed in float64).

    Element ``j`` of the row-major ``shape`` uses global index ``offset + j`` in the
    32-bit lane layout, so the values are the same on every device.
    """
    n = math.prod(shape)
    if torch.device(device).type == "cpu":
        w = uniform_words_numpy(n, seed, stream, offset)
    else:
        w = uniform_words_torch(n, seed, stream, offset, device)
    u = (w.to(torch.float64) + 0.5) * (2.0**-32)
    return u.reshape(tuple(shape)).to(dtype)


# ---------------------------------------------------------------------------
# Normal samples, contract v2: Box-Muller in exactly rounded float32 arithmetic
# ---------------------------------------------------------------------------
def _f32(hex_literal: str) -> np.float32:
    v = float.fromhex(hex_literal)
    f = np.float32(v)
    assert float(f) == v, hex_literal  # every constant is an exact float32
    return f


#: log: ``P(z)`` with ``log(m) = t + t * (z * P(z))``, ``t = 2s``, ``z = s*s``; ``P[0]`` is the constant term.
NORMAL_LOG_POLY = tuple(_f32(h) for h in ("0x1.555556p-2", "0x1.9999eep-3", "0x1.245b92p-3", "0x1.ddea92p-4"))
#: ``cos(pi f / 2) = 1 + g * C(g)``, ``g = f*f``; ``C[0]`` is the constant term.
NORMAL_COS_POLY = tuple(_f32(h) for h in ("-0x1.3bd3ccp+0", "0x1.03c1eap-2", "-0x1.55cb98p-6", "0x1.db64d8p-11"))
#: ``sin(pi f / 2) = f * S(g)``, ``g = f*f``; ``S[0]`` is the constant term.
NORMAL_SIN_POLY = tuple(
    _f32(h) for h in ("0x1.921fb6p+0", "-0x1.4abbcep-1", "0x1.466bbap-4", "-0x1.32ca9ep-8", "0x1.4bc85cp-13")
)
#: ``ln 2 = LN2_HI + LN2_LO``; ``LN2_HI`` has 17 significant bits, so ``k * LN2_HI`` is exact for |k| <= 127.
NORMAL_LN2_HI = _f32("0x1.62e3p-1")
NORMAL_LN2_LO = _f32("0x1.2fefa4p-17")


def _horner_numpy(coeffs: tuple, x: np.ndarray) -> np.ndarray:
    """``coeffs[0] + x * (coeffs[1] + x * (...))`` in float32, innermost first (one rounding per op)."""
    acc = np.full(x.shape, coeffs[-1], np.float32)
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def box_muller_f32_numpy(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal contract v2 for pairs of 32-bit words ``(a, b)``: ``(r cos theta, r sin theta)`` as float32.

    Every step is one IEEE-754 binary32 operation (``+ - * /``, ``sqrt``, int <-> float
    conversion, bit reinterpretation, selects), so every backend reproduces these bits;
    ``docs/rng.md`` states the algorithm step by step.
    """
    a = np.asarray(a, dtype=np.uint32)
    b = np.asarray(b, dtype=np.uint32)
    with np.errstate(all="ignore"):
        # u1 in (0, 1]; r = sqrt(-2 log u1) with a polynomial log
        u1 = ((a >> np.uint32(1)).astype(np.int32).astype(np.float32) + np.float32(1.0)) * np.float32(2.0**-31)
        ix = u1.view(np.int32) + np.int32(0x004AFB0D)
        kf = ((ix >> 23) - np.int32(127)).astype(np.float32)
        m = ((ix & np.int32(0x007FFFFF)) + np.int32(0x3F3504F3)).view(np.float32)
        f = m - np.float32(1.0)
        s = f / (f + np.float32(2.0))
        z = s * s
        t = s + s
        log_m = t + t * (z * _horner_numpy(NORMAL_LOG_POLY, z))
        log_u1 = (kf * NORMAL_LN2_LO + log_m) + kf * NORMAL_LN2_HI
        r = np.sqrt(log_u1 * np.float32(-2.0))
        # theta = 2 pi (b >> 8) / 2**24 = (pi / 2) (q + fr), fr in [-1/2, 1/2)
        tt = ((b >> np.uint32(8)) + np.uint32(1 << 21)) & np.uint32((1 << 24) - 1)
        q = (tt >> np.uint32(22)).astype(np.int32)
        fr = ((tt & np.uint32((1 << 22) - 1)).astype(np.int32) - np.int32(1 << 21)).astype(np.float32) * np.float32(
            2.0**-22
        )
        g = fr * fr
        c = np.float32(1.0) + g * _horner_numpy(NORMAL_COS_POLY, g)
        sn = fr * _horner_numpy(NORMAL_SIN_POLY, g)
        swap = (q & 1) != 0
        cos_t = np.where(swap, sn, c)
        sin_t = np.where(swap, c, sn)
        cos_t = np.where(((q + 1) & 2) != 0, -cos_t, cos_t)
        sin_t = np.where((q & 2) != 0, -sin_t, sin_t)
        return r * cos_t, r * sin_t


def normal_numpy(n: int, seed: int, stream: int = 0, offset: int = 0) -> np.ndarray:
    """``n`` float32 standard normals of elements ``offset .. offset + n - 1`` (normal contract v2), in NumPy.

    Element ``e`` uses block ``e // 4``; lane ``l = e % 4`` takes the pair of words
    ``(w[2 (l // 2)], w[2 (l // 2) + 1])`` and is its cosine half for even ``l``, sine half for odd.
    """
    b_first, b_last = offset // 4, (offset + n + 3) // 4
    words = _philox_range_numpy(b_first, b_last, seed, stream)
    zc, zs = box_muller_f32_numpy(words[:, 0::2].reshape(-1), words[:, 1::2].reshape(-1))
    z = np.stack([zc, zs], axis=-1).reshape(-1)
    start = offset - b_first * 4
    return z[start : start + n]


def _horner_torch(coeffs: tuple, x: torch.Tensor) -> torch.Tensor:
    acc = torch.full_like(x, float(coeffs[-1]))
    for c in reversed(coeffs[:-1]):
        acc = acc * x + float(c)
    return acc


def box_muller_f32_torch(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`box_muller_f32_numpy` in torch ops (any device): ``a``, ``b`` int64 tensors of 32-bit words.

    The division and the square root are taken in float64 and rounded to float32, which is the
    correctly rounded float32 result (float64 has more than ``2 * 24 + 2`` bits): torch's own
    vectorised float32 ``sqrt`` on CPU is not correctly rounded (measured: 17% of the values of
    ``[0, 100)`` differ from the exact result by 1 ulp on an AVX2 build of torch 2.13).
    """
    u1 = ((a >> 1).to(torch.int32).to(torch.float32) + 1.0) * 2.0**-31
    ix = u1.view(torch.int32) + 0x004AFB0D
    kf = ((ix >> 23) - 127).to(torch.float32)
    m = ((ix & 0x007FFFFF) + 0x3F3504F3).view(torch.float32)
    f = m - 1.0
    s = (f.double() / (f + 2.0).double()).float()
    z = s * s
    t = s + s
    log_m = t + t * (z * _horner_torch(NORMAL_LOG_POLY, z))
    log_u1 = (kf * float(NORMAL_LN2_LO) + log_m) + kf * float(NORMAL_LN2_HI)
    r = torch.sqrt((log_u1 * -2.0).double()).float()
    tt = ((b >> 8) + (1 << 21)) & ((1 << 24) - 1)
    q = (tt >> 22).to(torch.int32)
    fr = ((tt & ((1 << 22) - 1)) - (1 << 21)).to(torch.int32).to(torch.float32) * 2.0**-22
    g = fr * fr
    c = 1.0 + g * _horner_torch(NORMAL_COS_POLY, g)
    sn = fr * _horner_torch(NORMAL_SIN_POLY, g)
    swap = (q & 1) != 0
    cos_t = torch.where(swap, sn, c)
    sin_t = torch.where(swap, c, sn)
    cos_t = torch.where(((q + 1) & 2) != 0, -cos_t, cos_t)
    sin_t = torch.where((q & 2) != 0, -sin_t, sin_t)
    return r * cos_t, r * sin_t


def normal_torch(
    n: int, seed: int, stream: int = 0, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """:func:`normal_numpy` in torch ops on ``device`` (the portable reference): 1-D float32, the same bits."""
    blocks, start = _lane_range(n, offset, 4, device)
    words = philox_blocks_torch(blocks, seed, stream)
    zc, zs = box_muller_f32_torch(words[:, 0::2].reshape(-1), words[:, 1::2].reshape(-1))
    return torch.stack([zc, zs], dim=-1).reshape(-1)[start : start + n]


def normal(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    stream: int = 0,
    offset: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard-normal samples (normal contract v2): Box-Muller in exactly rounded float32 arithmetic.

    Element ``j`` of the row-major ``shape`` has global index ``e = offset + j``; Philox block
    ``e // 4`` gives words ``w0..w3``, lane ``l = e % 4`` uses the pair ``(a, b) = (w[2(l//2)],
    w[2(l//2)+1])``: ``u1 = (float32(a >> 1) + 1) * 2**-31``, ``theta = 2 pi (b >> 8) / 2**24``,
    ``z = sqrt(-2 log u1) * (cos theta if l is even else sin theta)``, with the polynomial log, cos
    and sin of ``docs/rng.md`` (no library math), so the float32 value is bit-identical on every
    backend; it is then converted to ``dtype`` (exact for float64).
    """
    n = math.prod(shape)
    if torch.device(device).type == "cpu":
        z = torch.from_numpy(np.ascontiguousarray(normal_numpy(n, seed, stream, offset)))
    else:
        z = normal_torch(n, seed, stream, offset, device)
    return z.reshape(tuple(shape)).to(dtype)


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------
def check_seed(seed: object, name: str = "seed") -> int:
    """Validate a user seed: an ``int`` in ``[0, 2**64)``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`{name}` must be an int in [0, 2**64) or None; received {seed!r} ({type(seed).__name__})")
    seed = int(seed)
    if not 0 <= seed <= _M64:
        raise ValueError(f"`{name}` must be an int in [0, 2**64) or None; received {name}={seed}")
    return seed


def check_offset(offset: object, name: str = "offset") -> int:
    """A global element index (or count): an int in ``[0, 2**64]`` (the contract's index space)."""
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"`{name}` must be an int in [0, 2**64]; received {offset!r} ({type(offset).__name__})")
    offset = int(offset)
    if not 0 <= offset <= 1 << 64:
        raise ValueError(
            f"`{name}` must be an int in [0, 2**64] (the contract's index space); received {name}={offset}"
        )
    return offset


def key_words(seed: int, stream: int = 0) -> tuple[int, int, int, int]:
    """The four 32-bit key words of a call: ``(lo(seed), hi(seed), lo(stream), hi(stream))``.

    Words 0-1 are Philox's key, words 2-3 the high counter words.
    """
    seed, stream = check_seed(seed), check_seed(stream, "stream")
    return seed & _M32, seed >> 32, stream & _M32, stream >> 32


def key_tensor(seed: int, stream: int = 0) -> torch.Tensor:
    """:func:`key_words` as the int64 tensor ``(4,)`` on the CPU that dropkit's registered ops take.

    Eager calls share one tensor per ``(seed, stream)`` (a small cache: a fixed-seed call costs no
    allocation); treat it as read-only.
    """
    if torch.compiler.is_compiling():
        return torch.tensor(key_words(seed, stream), dtype=torch.int64)
    if type(seed) is int and type(stream) is int and 0 <= seed <= _M64 and 0 <= stream <= _M64:  # valid: no checks
        return _cached_key(seed, stream)
    return _cached_key(check_seed(seed), check_seed(stream, "stream"))


@functools.lru_cache(maxsize=1024)
def _cached_key(seed: int, stream: int) -> torch.Tensor:
    key = torch.tensor(key_words(seed, stream), dtype=torch.int64)
    key._dropkit_ints = (seed, stream)  # type: ignore[attr-defined]  # read back by key_ints without .tolist()
    return key


def key_ints(key: torch.Tensor) -> tuple[int, int]:
    """``(seed, stream)`` of a key tensor (the inverse of :func:`key_tensor`); reads the tensor (eager only)."""
    known = getattr(key, "_dropkit_ints", None)
    if known is not None:
        return known
    w = key.tolist()
    if len(w) != 4 or any(not 0 <= v <= _M32 for v in w):
        raise ValueError(f"a dropkit key is 4 int64 words in [0, 2**32); received {w!r}")
    return w[0] | (w[1] << 32), w[2] | (w[3] << 32)


def check_key_args(seed: object = None, generator: object = None) -> None:
    """Validate ``seed`` / ``generator`` without drawing anything (so eval-mode calls check them too)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either `seed` or `generator`, not both; received both")
    if seed is not None:
        check_seed(seed)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None; received {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(
                "`generator` must be a CPU torch.Generator (keys are drawn on the CPU so the same "
                f"seed gives the same mask on every device); received one on {generator.device}"
            )


def check_rng_args(seed: object = None, generator: object = None, stream: object = 0) -> int:
    """Validate the randomness arguments every op takes (``seed``, ``generator``, ``stream``); returns ``stream``."""
    check_key_args(seed, generator)
    return check_seed(stream, "stream")


def resolve_seed(seed: int | None = None, generator: torch.Generator | None = None) -> int:
    """The 64-bit Philox key of one call.

    ``seed`` given: used as is. Otherwise two 32-bit words are drawn from ``generator``
    (a CPU ``torch.Generator``) or, if ``None``, from torch's default CPU generator, so
    ``torch.manual_seed(s)`` makes every dropkit mask reproducible.
    """
    check_key_args(seed, generator)
    if seed is not None:
        return int(seed)
    words = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=generator)
    return int(words[0]) | (int(words[1]) << 32)


# ---------------------------------------------------------------------------
# Batch sharding (data parallel): masks tied to the global sample index
# ---------------------------------------------------------------------------
class _Local(threading.local):
    batch_start = 0  # a class default: reading it outside batch_shard raises no AttributeError internally


_local = _Local()


class batch_shard:  # noqa: N801 - used as a function: ``with dropkit.rng.batch_shard(start):``
    """Treat dim 0 of every dropkit op's input as a shard starting at global sample ``start``.

    Inside the block, a mask whose noise shape varies along dim 0 is offset by
    ``start * (elements per sample)``, so a process that sees samples ``start ..``
    of a global batch draws exactly the mask elements that a single process holding
    the whole batch would (given the same key). Used by the lab's DDP training.
    (A class, not a generator: torch.compile traces its ``__enter__`` / ``__exit__`` on every torch.)

    Example:
        >>> with dropkit.rng.batch_shard(rank * local_batch):
        ...     loss = model(x_local).sum()
    """

    def __init__(self, start: int) -> None:
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
            raise ValueError(f"`start` must be a non-negative int; received {start!r}")
        self.start = int(start)
        self.prev = 0

    def __enter__(self) -> None:
        self.prev = _local.batch_start
        _local.batch_start = self.start

    def __exit__(self, *exc: object) -> None:
        _local.batch_start = self.prev


def current_batch_start() -> int:
    """The global sample index set by :func:`batch_shard` (0 outside it)."""
    return _local.batch_start
