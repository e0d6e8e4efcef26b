"""Triton kernels for the mask contract of :mod:`dropkit.rng` (Philox4x32-10, 16-bit lanes).

This file is loaded by :mod:`dropkit.kernels.triton` (never imported directly): once with
``TRITON_INTERPRET`` off for CUDA tensors and, when the interpreter is on, once more
under another module name so the same source runs on CPU tensors. Keep it free of
module-level state.

Layout of every kernel: program ``pid`` owns ``BLOCK_B`` consecutive Philox blocks
(``8 * BLOCK_B`` mask elements). Block ``i`` of the program is
``b = b_first + pid * BLOCK_B + i``, whose counter is ``(lo32(b), hi32(b), lo32(stream),
hi32(stream))``; Philox runs once per block and element ``8 * i + l`` of the program takes
lane ``l`` (word ``l // 2``, low half for even ``l``, high half for odd ``l``). That element
is global element ``e = 8 * b + l`` and local element ``j = e - offset``; elements at the
edges are masked by ``0 <= j < n``. ``START = offset - 8 * b_first`` (0..7) is a compile-time
constant so the common aligned case (``START == 0``) keeps vectorised loads.

Use only builtins of ``triton.language`` here, not its ``@jit`` helpers (``tl.zeros``,
``tl.sigmoid``, ``tl.cdiv``, ...): those are decorated when Triton is imported, so they stay
compiled-mode functions when the interpreter is switched on later in the process. Device-only
code (PTX inline assembly) sits behind ``if INTERPRETED`` (the interpreter cannot run it).

No result may depend on FP contraction: a product that feeds an addition goes through
:func:`_mad`, so the kernels give the same bits whether they are compiled with ``enable_fp_fusion``
on (Triton's default, and how Inductor compiles user kernels in a graph) or off.

The key arrives as four 32-bit scalar arguments (eager launches) or, with ``KEY_IN_MEMORY``, as the
int64 key tensor ``(4,)`` on the device (graph launches: there the key is a tensor computed in the
graph, whose values are not known when the graph is traced).

64-bit integers (seed, stream, ``b_first``, float64 ``scale``) travel as two signed 32-bit
halves and are not specialised on, so one compiled kernel serves every key.
"""

import triton
import triton.language as tl

#: This copy of the file runs under Triton's interpreter (``_module`` loads it with the knob set).
INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))

# Philox4x32 constants (Random123).
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)

_KEY_ARGS = ["b_lo", "b_hi", "seed_lo", "seed_hi", "stream_lo", "stream_hi", "thr", "scale_lo", "scale_hi"]


@triton.jit
def _u32(v):
    """A signed 32-bit scalar argument reinterpreted as uint32."""
    return v.to(tl.int32).to(tl.uint32, bitcast=True)


@triton.jit
def _i64(lo, hi):
    """The int64 whose halves are the 32-bit arguments ``lo`` (low) and ``hi`` (high)."""
    return (hi.to(tl.int32).to(tl.int64) << 32) | _u32(lo).to(tl.int64)


@triton.jit
def _mul_rn(a, b):
    """``a * b`` (tensors of one float dtype) by an explicitly rounded PTX multiply, ``mul.rn``: never
    contracted into a fused multiply-add and never flushed to zero, whatever the compile options."""
    if a.dtype == tl.float64:
        r = tl.inline_asm_elementwise(
            "mul.rn.f64 $0, $1, $2;", "=l,l,l", [a, b], dtype=tl.float64, is_pure=True, pack=1
        )
    else:
        r = tl.inline_asm_elementwise(
            "mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True, pack=1
        )
    return r


@triton.jit
def _mad(a, b, c):
    """``a * b + c`` rounded twice, never contracted into one fused multiply-add (:func:`_mul_rn`), so
    the bits do not depend on the compile options: Inductor compiles a graph's user kernels with FP
    fusion on, as eager launches do. The interpreter computes it in NumPy, which never fuses."""
    if INTERPRETED:
        r = a * b + c
    else:
        r = _mul_rn(a, b) + c
    return r


@triton.jit
def _madk(a, K: tl.constexpr, c):
    """:func:`_mad` with a constant multiplier ``K``."""
    if INTERPRETED:
        r = a * K + c
    else:
        r = _mul_rn(a, tl.full(a.shape, K, a.dtype)) + c
    return r


@triton.jit
def _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY: tl.constexpr):
    """The key's four 32-bit words: the scalar arguments, or (``KEY_IN_MEMORY``) the int64 key tensor
    ``(seed_lo, seed_hi, stream_lo, stream_hi)`` at ``key_ptr`` on the device (graph launches, whose key
    is a tensor computed in the graph)."""
    if KEY_IN_MEMORY:
        seed_lo = tl.load(key_ptr).to(tl.int32)
        seed_hi = tl.load(key_ptr + 1).to(tl.int32)
        stream_lo = tl.load(key_ptr + 2).to(tl.int32)
        stream_hi = tl.load(key_ptr + 3).to(tl.int32)
    return seed_lo, seed_hi, stream_lo, stream_hi


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox4x32 rounds; ``c*`` are uint32 tensors, ``k*`` uint32 scalars."""
    m0 = tl.full(c0.shape, PHILOX_M0, tl.uint32)
    m1 = tl.full(c0.shape, PHILOX_M1, tl.uint32)
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + tl.full((), PHILOX_W0, tl.uint32)
            k1 = k1 + tl.full((), PHILOX_W1, tl.uint32)
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def _tile(pid, n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START: tl.constexpr, BLOCK_B: tl.constexpr):
    """Local indices ``j`` (int64), their validity and the 16-bit lanes (int32) of one program.

    All three are 1-D of ``8 * BLOCK_B`` elements in element order: Philox runs once per
    block of eight and its lanes are interleaved back into element order with joins
    (``tl.join`` appends a minor axis, so lanes differing by 4, then 2, then 1 are
    paired), which keeps the loads and stores plain contiguous 1-D accesses.
    """
    rel = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    b = _i64(b_lo, b_hi) + rel
    c0 = (b & 0xFFFFFFFF).to(tl.uint32)
    c1 = (b >> 32).to(tl.uint32)
    zero = tl.full((BLOCK_B,), 0, tl.uint32)
    c2 = zero + _u32(stream_lo)
    c3 = zero + _u32(stream_hi)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, c2, c3, _u32(seed_lo), _u32(seed_hi))
    # lane 2k = low half of word k, lane 2k+1 = high half
    l04 = tl.join(w0 & 0xFFFF, w2 & 0xFFFF)
    l15 = tl.join(w0 >> 16, w2 >> 16)
    l26 = tl.join(w1 & 0xFFFF, w3 & 0xFFFF)
    l37 = tl.join(w1 >> 16, w3 >> 16)
    lanes = tl.join(tl.join(l04, l26), tl.join(l15, l37))  # [i, x, y, z] = lane 4x + 2y + z
    lane = tl.reshape(lanes, (8 * BLOCK_B,)).to(tl.int32)
    j = pid.to(tl.int64) * (8 * BLOCK_B) + tl.arange(0, 8 * BLOCK_B) - START
    valid = (j >= 0) & (j < n)
    return j, valid, lane


@triton.jit
def _scale(scale_lo, scale_hi, F64: tl.constexpr):
    """The scale factor from its bits: float64 from both halves, else float32 from ``scale_lo``."""
    if F64:
        s = _i64(scale_lo, scale_hi).to(tl.float64, bitcast=True)
    else:
        s = scale_lo.to(tl.int32).to(tl.float32, bitcast=True)
    return s


@triton.jit
def _load(ptr, j, valid, F64: tl.constexpr, BF16: tl.constexpr):
    """Load and widen to the compute dtype (float64 for float64, else float32).

    bfloat16 tensors arrive as int16 views and are widened here (the bits shifted up, exact
    for every value): Triton's interpreter mis-converts bfloat16 subnormals.
    """
    if BF16:
        bits = tl.load(ptr + j, mask=valid, other=0).to(tl.uint16, bitcast=True).to(tl.uint32)
        v = (bits << 16).to(tl.float32, bitcast=True)
    elif F64:
        v = tl.load(ptr + j, mask=valid, other=0.0).to(tl.float64)
    else:
        v = tl.load(ptr + j, mask=valid, other=0.0).to(tl.float32)
    return v


@triton.jit
def _cast_out(v, out_ty, BF16: tl.constexpr):
    """``v`` (float32 / float64) rounded once to the output's dtype.

    bfloat16 outputs arrive as an int16 view and are rounded here, to nearest even with
    NaN -> 0x7FC0 (the 16-bit NaN rule of docs/rng.md), in integer ops: Triton's interpreter truncates
    float32 -> bfloat16, so a plain ``.to`` would differ between the interpreter and the GPU.
    """
    if BF16:
        bits = v.to(tl.uint32, bitcast=True)
        r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        r = tl.where(v != v, 0x7FC0, r)
        out = r.to(tl.uint16).to(tl.int16, bitcast=True)
    elif out_ty == tl.float16:  # the 16-bit NaN rule (docs/rng.md): NaN -> 0x7E00
        bits = v.to(tl.float16).to(tl.int16, bitcast=True)
        out = tl.where(v != v, 0x7E00, bits).to(tl.int16).to(tl.float16, bitcast=True)
    else:
        out = v.to(out_ty)
    return out


@triton.jit
def _act(h, ACT: tl.constexpr, F64: tl.constexpr):
    """relu / exact (erf) gelu / silu of ``h``, in ``h``'s dtype."""
    if ACT == 1:
        a = tl.where(h < 0, 0.0, h).to(h.dtype)  # relu; NaN passes through as in torch
    elif ACT == 2:
        a = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    elif ACT == 3:
        a = h / (1.0 + tl.exp(-h))
    else:
        a = h
    return a


@triton.jit
def _act_grad(h, ACT: tl.constexpr, F64: tl.constexpr):
    """d act / d h at ``h`` (the formulas of torch's relu / gelu / silu backward)."""
    if ACT == 1:
        d = tl.where(h > 0, 1.0, 0.0).to(h.dtype)
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * h * h)
        d = _mad(h, pdf, cdf)
    elif ACT == 3:
        s = 1.0 / (1.0 + tl.exp(-h))
        d = s * _mad(h, 1.0 - s, 1.0)
    else:
        d = tl.full(h.shape, 1.0, h.dtype)
    return d


@triton.jit(do_not_specialize=_KEY_ARGS)
def keep_mask_kernel(
    out_ptr,
    key_ptr,
    n,
    b_lo,
    b_hi,
    seed_lo,
    seed_hi,
    stream_lo,
    stream_hi,
    thr,
    scale_lo,
    scale_hi,
    KEY_IN_MEMORY: tl.constexpr,
    START: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``out[j] = lane(offset + j) >= thr`` as uint8 (viewed as bool by the caller)."""
    seed_lo, seed_hi, stream_lo, stream_hi = _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY)
    pid = tl.program_id(0)
    j, valid, lane = _tile(pid, n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B)
    tl.store(out_ptr + j, (lane >= thr).to(tl.uint8), mask=valid)


@triton.jit
def _factor(lane, thr, scale_lo, scale_hi, F64: tl.constexpr):
    """``keep ? scale : 0`` per element, in the compute dtype."""
    s = _scale(scale_lo, scale_hi, F64)
    return tl.where(lane >= thr, s, 0.0).to(s.dtype)


@triton.jit(do_not_specialize=_KEY_ARGS)
def dropout_mul_kernel(
    x_ptr,
    out_ptr,
    key_ptr,
    n,
    b_lo,
    b_hi,
    seed_lo,
    seed_hi,
    stream_lo,
    stream_hi,
    thr,
    scale_lo,
    scale_hi,
    F64: tl.constexpr,
    BF16: tl.constexpr,
    KEY_IN_MEMORY: tl.constexpr,
    START: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``out[j] = x[j] * (keep ? scale : 0)`` in float32 (float64), rounded once to out's dtype."""
    seed_lo, seed_hi, stream_lo, stream_hi = _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY)
    j, valid, lane = _tile(tl.program_id(0), n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B)
    xc = _load(x_ptr, j, valid, F64, BF16)
    y = xc * _factor(lane, thr, scale_lo, scale_hi, F64)
    tl.store(out_ptr + j, _cast_out(y, out_ptr.dtype.element_ty, BF16), mask=valid)


@triton.jit(do_not_specialize=_KEY_ARGS)
def fused_kernel(
    a_ptr,
    x_ptr,
    bias_ptr,
    out_ptr,
    key_ptr,
    n,
    b_lo,
    b_hi,
    seed_lo,
    seed_hi,
    stream_lo,
    stream_hi,
    thr,
    scale_lo,
    scale_hi,
    H,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BACKWARD: tl.constexpr,
    F64: tl.constexpr,
    BF16: tl.constexpr,
    KEY_IN_MEMORY: tl.constexpr,
    START: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Bias + activation + dropout + residual, with ``h = x + bias`` (bias along the last dim, size H).

    Forward (``a`` = residual): ``out = residual + act(h) * (keep ? scale : 0)``.
    Backward (``a`` = grad of out): ``out = grad * (keep ? scale : 0) * act'(h)``, the gradient
    of ``x`` (and, summed over rows, of ``bias``), with the mask regenerated.
    """
    seed_lo, seed_hi, stream_lo, stream_hi = _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY)
    j, valid, lane = _tile(tl.program_id(0), n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B)
    h = _load(x_ptr, j, valid, F64, BF16)
    if HAS_BIAS:
        h = h + _load(bias_ptr, j % H, valid, F64, BF16)
    factor = _factor(lane, thr, scale_lo, scale_hi, F64)
    a = _load(a_ptr, j, valid, F64, BF16)
    if BACKWARD:
        y = (a * factor) * _act_grad(h, ACT, F64)
    else:
        y = _mad(_act(h, ACT, F64), factor, a)
    tl.store(out_ptr + j, _cast_out(y, out_ptr.dtype.element_ty, BF16), mask=valid)


# --------------------------------------------------------------------------- normal contract v2
# Box-Muller in exactly rounded float32 arithmetic (docs/rng.md; dropkit.rng.box_muller_f32_numpy):
# the same operations in the same order, every constant an exact float32. Division and square root
# are the correctly rounded ones (tl.div_rn, tl.sqrt_rn: Triton's `/` and tl.sqrt are approximate
# on the GPU), and the launches pass enable_fp_fusion=False, so no multiply-add is contracted.
LOG_P0 = tl.constexpr(float.fromhex("0x1.555556p-2"))
LOG_P1 = tl.constexpr(float.fromhex("0x1.9999eep-3"))
LOG_P2 = tl.constexpr(float.fromhex("0x1.245b92p-3"))
LOG_P3 = tl.constexpr(float.fromhex("0x1.ddea92p-4"))
COS_C0 = tl.constexpr(float.fromhex("-0x1.3bd3ccp+0"))
COS_C1 = tl.constexpr(float.fromhex("0x1.03c1eap-2"))
COS_C2 = tl.constexpr(float.fromhex("-0x1.55cb98p-6"))
COS_C3 = tl.constexpr(float.fromhex("0x1.db64d8p-11"))
SIN_S0 = tl.constexpr(float.fromhex("0x1.921fb6p+0"))
SIN_S1 = tl.constexpr(float.fromhex("-0x1.4abbcep-1"))
SIN_S2 = tl.constexpr(float.fromhex("0x1.466bbap-4"))
SIN_S3 = tl.constexpr(float.fromhex("-0x1.32ca9ep-8"))
SIN_S4 = tl.constexpr(float.fromhex("0x1.4bc85cp-13"))
LN2_HI = tl.constexpr(float.fromhex("0x1.62e3p-1"))
LN2_LO = tl.constexpr(float.fromhex("0x1.2fefa4p-17"))
TWO_M31 = tl.constexpr(2.0**-31)
TWO_M22 = tl.constexpr(2.0**-22)
TWO_M32 = tl.constexpr(2.0**-32)

_NORMAL_KEY_ARGS = ["b_lo", "b_hi", "seed_lo", "seed_hi", "stream_lo", "stream_hi", "scale_lo", "scale_hi"]


@triton.jit
def _box_muller(a, b):
    """The word pairs ``(a, b)`` (uint32 tensors) -> ``(r cos theta, r sin theta)``, float32."""
    u1 = ((a >> 1).to(tl.int32).to(tl.float32) + 1.0) * TWO_M31
    ix = u1.to(tl.int32, bitcast=True) + 0x004AFB0D
    kf = ((ix >> 23) - 127).to(tl.float32)
    m = ((ix & 0x007FFFFF) + 0x3F3504F3).to(tl.float32, bitcast=True)
    f = m - 1.0
    s = tl.div_rn(f, f + 2.0)
    z = s * s
    t = s + s
    p = _mad(_mad(_madk(z, LOG_P3, LOG_P2), z, LOG_P1), z, LOG_P0)
    log_m = _mad(t, z * p, t)
    log_u1 = _madk(kf, LN2_HI, _madk(kf, LN2_LO, log_m))
    r = tl.sqrt_rn(log_u1 * -2.0)
    tt = ((b >> 8) + (1 << 21)) & 0xFFFFFF
    q = (tt >> 22).to(tl.int32)
    fr = ((tt & 0x3FFFFF).to(tl.int32) - (1 << 21)).to(tl.float32) * TWO_M22
    g = fr * fr
    c = _mad(g, _mad(_mad(_madk(g, COS_C3, COS_C2), g, COS_C1), g, COS_C0), 1.0)
    sn = fr * _mad(_mad(_mad(_madk(g, SIN_S4, SIN_S3), g, SIN_S2), g, SIN_S1), g, SIN_S0)
    swap = (q & 1) != 0
    cos_t = tl.where(swap, sn, c)
    sin_t = tl.where(swap, c, sn)
    cos_t = tl.where(((q + 1) & 2) != 0, -cos_t, cos_t)
    sin_t = tl.where((q & 2) != 0, -sin_t, sin_t)
    return r * cos_t, r * sin_t


@triton.jit
def _words(pid, n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START: tl.constexpr, BLOCK_B: tl.constexpr):
    """Local indices ``j``, validity and the Philox words of one program of the 32-bit lane layout.

    Program ``pid`` owns Philox blocks ``b_first + pid * BLOCK_B + i``; block ``b`` feeds elements
    ``4b .. 4b + 3``. Returns ``j`` and ``valid`` over the program's ``4 * BLOCK_B`` elements in element
    order and the four words ``w0 .. w3`` (uint32, one per block). ``START = offset - 4 * b_first`` (0..3).
    """
    rel = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    b = _i64(b_lo, b_hi) + rel
    c0 = (b & 0xFFFFFFFF).to(tl.uint32)
    c1 = (b >> 32).to(tl.uint32)
    zero = tl.full((BLOCK_B,), 0, tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(
        c0, c1, zero + _u32(stream_lo), zero + _u32(stream_hi), _u32(seed_lo), _u32(seed_hi)
    )
    j = pid.to(tl.int64) * (4 * BLOCK_B) + tl.arange(0, 4 * BLOCK_B) - START
    valid = (j >= 0) & (j < n)
    return j, valid, w0, w1, w2, w3


@triton.jit
def _in_element_order(v0, v1, v2, v3, BLOCK_B: tl.constexpr):
    """Four per-block values (lanes 0..3) interleaved into element order: ``[i, y, x]`` = lane ``2y + x``."""
    return tl.reshape(tl.join(tl.join(v0, v2), tl.join(v1, v3)), (4 * BLOCK_B,))


@triton.jit
def _normal_tile(
    pid, n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START: tl.constexpr, BLOCK_B: tl.constexpr
):
    """Local indices ``j``, validity and the float32 normals of one program (``4 * BLOCK_B`` elements):
    lanes 0, 1 of a block are the cosine and sine halves of words (w0, w1), lanes 2, 3 of (w2, w3)."""
    j, valid, w0, w1, w2, w3 = _words(pid, n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    return j, valid, _in_element_order(z0, z1, z2, z3, BLOCK_B)


@triton.jit(do_not_specialize=_NORMAL_KEY_ARGS)
def uniform_kernel(
    out_ptr,
    key_ptr,
    n,
    b_lo,
    b_hi,
    seed_lo,
    seed_hi,
    stream_lo,
    stream_hi,
    scale_lo,
    scale_hi,
    KEY_IN_MEMORY: tl.constexpr,
    START: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``out[j] = (w + 0.5) * 2**-32`` in float64 (exact), rounded to out's dtype (float32 or float64),
    ``w`` the 32-bit word of element ``offset + j`` (word ``e % 4`` of block ``e // 4``)."""
    seed_lo, seed_hi, stream_lo, stream_hi = _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY)
    j, valid, w0, w1, w2, w3 = _words(
        tl.program_id(0), n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B
    )
    w = _in_element_order(w0, w1, w2, w3, BLOCK_B)
    u = (w.to(tl.float64) + 0.5) * TWO_M32
    tl.store(out_ptr + j, u.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=_NORMAL_KEY_ARGS)
def normal_kernel(
    out_ptr,
    key_ptr,
    n,
    b_lo,
    b_hi,
    seed_lo,
    seed_hi,
    stream_lo,
    stream_hi,
    scale_lo,
    scale_hi,
    KEY_IN_MEMORY: tl.constexpr,
    START: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``out[j]`` = the float32 normal of element ``offset + j`` (normal contract v2)."""
    seed_lo, seed_hi, stream_lo, stream_hi = _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY)
    j, valid, z = _normal_tile(tl.program_id(0), n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B)
    tl.store(out_ptr + j, z, mask=valid)


@triton.jit(do_not_specialize=_NORMAL_KEY_ARGS)
def gaussian_mul_kernel(
    x_ptr,
    out_ptr,
    key_ptr,
    n,
    b_lo,
    b_hi,
    seed_lo,
    seed_hi,
    stream_lo,
    stream_hi,
    scale_lo,
    scale_hi,
    F64: tl.constexpr,
    BF16: tl.constexpr,
    KEY_IN_MEMORY: tl.constexpr,
    START: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``out[j] = x[j] * (1 + sigma * z)`` in float32 (float64 for float64 ``x``), rounded once to out's dtype."""
    seed_lo, seed_hi, stream_lo, stream_hi = _key_words(key_ptr, seed_lo, seed_hi, stream_lo, stream_hi, KEY_IN_MEMORY)
    j, valid, z = _normal_tile(tl.program_id(0), n, b_lo, b_hi, seed_lo, seed_hi, stream_lo, stream_hi, START, BLOCK_B)
    xc = _load(x_ptr, j, valid, F64, BF16)
    s = _scale(scale_lo, scale_hi, F64)
    if F64:
        y = xc * _mad(z.to(tl.float64), s, 1.0)
    else:
        y = xc * _mad(z, s, 1.0)
    tl.store(out_ptr + j, _cast_out(y, out_ptr.dtype.element_ty, BF16), mask=valid)
