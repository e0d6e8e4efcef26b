/*
 * The per-target bodies: one source, compiled once per instruction set. Each
 * dk_target_<name>.c sets `#pragma GCC target(...)`, defines DK_SUFFIX (the name) and
 * DK_VB (Philox blocks per vector: one block per 64-bit lane) and includes this file;
 * GCC's vector extensions then lower to zmm (AVX-512), ymm (AVX2) or xmm (SSE2/NEON)
 * registers. The only per-ISA lines are in dk_mul32 below: GCC 12 does not turn
 * `(a & 0xFFFFFFFF) * m` on 64-bit lanes into pmuludq by itself (it emits vpmullq,
 * 3x slower on AVX-512, or a multiply-by-parts on AVX2).
 */
#include "dk_internal.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define DK_CAT2(a, b) a##_##b
#define DK_CAT(a, b) DK_CAT2(a, b)
#define DK_NAME(f) DK_CAT(f, DK_SUFFIX)

typedef uint64_t dk_u64v __attribute__((vector_size(8 * DK_VB)));

/* Low 32 bits of each 64-bit lane of a times the 32-bit constant m: the full 64-bit product. */
static inline __attribute__((always_inline)) dk_u64v dk_mul32(dk_u64v a, uint32_t m) {
#if DK_VB == 8 && defined(__AVX512F__)
    return (dk_u64v)_mm512_mul_epu32((__m512i)a, _mm512_set1_epi64(m));
#elif DK_VB == 4 && defined(__AVX2__)
    return (dk_u64v)_mm256_mul_epu32((__m256i)a, _mm256_set1_epi64x(m));
#elif DK_VB == 2 && defined(__SSE2__)
    return (dk_u64v)_mm_mul_epu32((__m128i)a, _mm_set1_epi64x(m));
#else
    return (a & 0xFFFFFFFFu) * (uint64_t)m;
#endif
}

#if DK_VB == 8
#define DK_IOTA {0, 1, 2, 3, 4, 5, 6, 7}
#define DK_LO {0, 8, 1, 9, 2, 10, 3, 11}
#define DK_HI {4, 12, 5, 13, 6, 14, 7, 15}
#elif DK_VB == 4
#define DK_IOTA {0, 1, 2, 3}
#define DK_LO {0, 4, 1, 5}
#define DK_HI {2, 6, 3, 7}
#else
#define DK_IOTA {0, 1}
#define DK_LO {0, 2}
#define DK_HI {1, 3}
#endif

/* Philox4x32-10 of the DK_VB blocks in b (one per lane). On return the low 32 bits of
 * c0..c3 are the output words; the high halves hold garbage (never read: dk_mul32 reads
 * only the low halves, and the callers mask). Round 0 multiplies the constant stream
 * word, so its product is computed once per call (p1c). */
#define DK_PHILOX_V(r, b, p1c, c0, c1, c2, c3)                                                   \
    do {                                                                                        \
        dk_u64v p0_ = dk_mul32((b), PHILOX_M0);                                                 \
        c0 = ((b) >> 32) ^ (uint64_t)((uint32_t)((p1c) >> 32) ^ (r)->k0[0]);                    \
        c1 = (dk_u64v){} + (uint64_t)(uint32_t)(p1c);                                           \
        c2 = (p0_ >> 32) ^ (uint64_t)((r)->s1 ^ (r)->k1[0]);                                    \
        c3 = p0_;                                                                               \
        for (int k_ = 1; k_ < 10; k_++) {                                                       \
            dk_u64v q0_ = dk_mul32(c0, PHILOX_M0), q1_ = dk_mul32(c2, PHILOX_M1);               \
            c0 = (q1_ >> 32) ^ c1 ^ (uint64_t)(r)->k0[k_];                                      \
            c2 = (q0_ >> 32) ^ c3 ^ (uint64_t)(r)->k1[k_];                                      \
            c1 = q1_;                                                                           \
            c3 = q0_;                                                                           \
        }                                                                                       \
    } while (0)

/* The four words of blocks b0 .. b0 + nb - 1, in element order, into w (4 * nb words). */
static inline __attribute__((always_inline)) void dk_words(uint32_t *w, uint64_t b0, size_t nb, const dk_rng *r) {
    const uint64_t p1c = (uint64_t)PHILOX_M1 * r->s0;
    const dk_u64v iota = DK_IOTA, lo = DK_LO, hi = DK_HI;
    const uint64_t m32 = 0xFFFFFFFFu;
    size_t i = 0;
    for (; i + 2 * DK_VB <= nb; i += 2 * DK_VB) {
        dk_u64v ba = iota + (b0 + i), bb = ba + (uint64_t)DK_VB;
        dk_u64v a0, a1, a2, a3, e0, e1, e2, e3;
        DK_PHILOX_V(r, ba, p1c, a0, a1, a2, a3);
        DK_PHILOX_V(r, bb, p1c, e0, e1, e2, e3);
        /* lane l: (word 0, word 1) and (word 2, word 3) of its block, as little-endian pairs */
        dk_u64v a01 = (a0 & m32) | (a1 << 32), a23 = (a2 & m32) | (a3 << 32);
        dk_u64v e01 = (e0 & m32) | (e1 << 32), e23 = (e2 & m32) | (e3 << 32);
        dk_u64v v[4] = {__builtin_shuffle(a01, a23, lo), __builtin_shuffle(a01, a23, hi),
                        __builtin_shuffle(e01, e23, lo), __builtin_shuffle(e01, e23, hi)};
        memcpy(w + 4 * i, v, sizeof v);
    }
    for (; i < nb; i++) dk_philox_words(r, b0 + i, w + 4 * i);
}

DK_HIDDEN void DK_NAME(dk_uniform_chunk)(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r) {
    uint32_t w[DK_CHUNK + 8] __attribute__((aligned(64)));
    size_t s = (size_t)(e0 & 3), nb = (s + len + 3) >> 2;
    dk_words(w, e0 >> 2, nb, r);
    const uint32_t *ws = w + s;
    if (dtype == DK_F64) {
        double *o = (double *)out;
        for (size_t i = 0; i < len; i++) o[i] = ((double)ws[i] + 0.5) * 0x1p-32;
    } else {
        float *o = (float *)out;
        for (size_t i = 0; i < len; i++) o[i] = (float)(((double)ws[i] + 0.5) * 0x1p-32);
    }
}

#if defined(__F16C__) && defined(__AVX2__)
/* Eight float32 results rounded to float16 (nearest even) and stored, NaN -> the canonical DK_F16_NAN. */
static inline __attribute__((always_inline)) void dk_store_f16x8(uint16_t *o, __m256 y) {
    const __m128i qnan = _mm_set1_epi16((short)DK_F16_NAN);
    __m128i h = _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1));
    _mm_storeu_si128((__m128i *)o, _mm_blendv_epi8(h, qnan, nan16));
}
#endif

/* float16 products, 8 at a time with F16C where the target has it: GCC 12 does not vectorize
 * _Float16 conversions, and the bit-exact C conversion is several times slower (measured:
 * see benchmarks/RESULTS.md). The NaN rule is applied after the hardware rounding. */
static inline __attribute__((always_inline)) size_t dk_f16_block(const uint16_t *x, uint16_t *o, const uint16_t *u,
                                                                  uint16_t t, float sf, size_t len) {
    size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(sf), zero = _mm256_setzero_ps();
    const __m128i vt = _mm_set1_epi16((short)t);
    for (; i + 8 <= len; i += 8) {
        __m128i lane = _mm_loadu_si128((const __m128i *)(u + i));
        __m128i keep = _mm_cmpeq_epi16(_mm_max_epu16(lane, vt), lane); /* u >= t */
        __m256 f = _mm256_blendv_ps(zero, vs, _mm256_castsi256_ps(_mm256_cvtepi16_epi32(keep)));
        dk_store_f16x8(o + i, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), f));
    }
#endif
    for (; i < len; i++) o[i] = dk_float_to_half(dk_half_to_float(x[i]) * (u[i] >= t ? sf : 0.0f));
    return len;
}

/* Keep mask / dropout_mul of one chunk: the chunk's Philox words, seen as 16-bit lanes in
 * element order (lane l of block b = element 8b + l), compared with the threshold inside
 * each dtype's loop (GCC vectorizes every loop but float16's, see dk_f16_block). */
DK_HIDDEN void DK_NAME(dk_masked_chunk)(int kind, const void *xv, void *ov, size_t len, uint64_t e0, const dk_rng *r,
                                        float sf, double sd) {
    uint16_t lanes[DK_CHUNK + 16] __attribute__((aligned(64)));
    const size_t s = (size_t)(e0 & 7), nb = (s + len + 7) >> 3;
    uint16_t t; /* keep iff lane >= t */
    if (r->thr == 0) { /* keep all */
        memset(lanes, 0, nb * 16);
        t = 0;
    } else if (r->thr >= 65536) { /* drop all */
        memset(lanes, 0, nb * 16);
        t = 1;
    } else {
        dk_words((uint32_t *)lanes, e0 >> 3, nb, r);
        t = (uint16_t)r->thr;
    }
    const uint16_t *u = lanes + s;
    size_t i;
    switch (kind) {
    case DK_MASK: {
        uint8_t *o = (uint8_t *)ov;
        for (i = 0; i < len; i++) o[i] = u[i] >= t;
        break;
    }
    case DK_F32: {
        const float *x = (const float *)xv;
        float *o = (float *)ov;
        for (i = 0; i < len; i++) o[i] = x[i] * (u[i] >= t ? sf : 0.0f);
        break;
    }
    case DK_F64: {
        const double *x = (const double *)xv;
        double *o = (double *)ov;
        for (i = 0; i < len; i++) o[i] = x[i] * (u[i] >= t ? sd : 0.0);
        break;
    }
    case DK_BF16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        for (i = 0; i < len; i++) o[i] = dk_float_to_bf16(dk_f32_from_bits((uint32_t)x[i] << 16) * (u[i] >= t ? sf : 0.0f));
        break;
    }
    case DK_F16:
        dk_f16_block((const uint16_t *)xv, (uint16_t *)ov, u, t, sf, len);
        break;
    }
}

/* ------------------------------------------------------------------------- */
/* Normal contract v2, 2 * DK_VB float32 lanes per vector: dk_box_muller     */
/* (dk_internal.h) written with vector operations, the same ops in the same order. */
/* ------------------------------------------------------------------------- */
#define DK_NV (2 * DK_VB)
typedef float dk_f32v __attribute__((vector_size(4 * DK_NV)));
typedef int32_t dk_i32v __attribute__((vector_size(4 * DK_NV)));
typedef uint32_t dk_u32v __attribute__((vector_size(4 * DK_NV)));

#if DK_NV == 16
#define DK_EVEN {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#define DK_ODD {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}
#define DK_ZLO {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define DK_ZHI {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#elif DK_NV == 8
#define DK_EVEN {0, 2, 4, 6, 8, 10, 12, 14}
#define DK_ODD {1, 3, 5, 7, 9, 11, 13, 15}
#define DK_ZLO {0, 8, 1, 9, 2, 10, 3, 11}
#define DK_ZHI {4, 12, 5, 13, 6, 14, 7, 15}
#else
#define DK_EVEN {0, 2, 4, 6}
#define DK_ODD {1, 3, 5, 7}
#define DK_ZLO {0, 4, 1, 5}
#define DK_ZHI {2, 6, 3, 7}
#endif

/* dk_words for the normals: three vectors of blocks per step, round by round (independent
 * multiply chains interleaved; measured ~5% faster than dk_words' two vectors one after the other). */
static inline __attribute__((always_inline)) void dk_words3(uint32_t *w, uint64_t b0, size_t nb, const dk_rng *r) {
    const uint64_t p1c = (uint64_t)PHILOX_M1 * r->s0;
    const dk_u64v iota = DK_IOTA, lo = DK_LO, hi = DK_HI;
    const uint64_t m32 = 0xFFFFFFFFu;
    size_t i = 0;
    for (; i + 3 * DK_VB <= nb; i += 3 * DK_VB) {
        dk_u64v c0[3], c1[3], c2[3], c3[3];
        _Pragma("GCC unroll 3") for (int u = 0; u < 3; u++) {
            dk_u64v b = iota + (b0 + i + (uint64_t)(u * DK_VB)), p0 = dk_mul32(b, PHILOX_M0);
            c0[u] = (b >> 32) ^ (uint64_t)((uint32_t)(p1c >> 32) ^ r->k0[0]);
            c1[u] = (dk_u64v){} + (uint64_t)(uint32_t)p1c;
            c2[u] = (p0 >> 32) ^ (uint64_t)(r->s1 ^ r->k1[0]);
            c3[u] = p0;
        }
        for (int k = 1; k < 10; k++) {
            _Pragma("GCC unroll 3") for (int u = 0; u < 3; u++) {
                dk_u64v q0 = dk_mul32(c0[u], PHILOX_M0), q1 = dk_mul32(c2[u], PHILOX_M1);
                c0[u] = (q1 >> 32) ^ c1[u] ^ (uint64_t)r->k0[k];
                c2[u] = (q0 >> 32) ^ c3[u] ^ (uint64_t)r->k1[k];
                c1[u] = q1;
                c3[u] = q0;
            }
        }
        _Pragma("GCC unroll 3") for (int u = 0; u < 3; u++) {
            dk_u64v a01 = (c0[u] & m32) | (c1[u] << 32), a23 = (c2[u] & m32) | (c3[u] << 32);
            dk_u64v v[2] = {__builtin_shuffle(a01, a23, lo), __builtin_shuffle(a01, a23, hi)};
            memcpy(w + 4 * (i + (size_t)u * DK_VB), v, sizeof v);
        }
    }
    for (; i < nb; i++) dk_philox_words(r, b0 + i, w + 4 * i);
}

/* Correctly rounded square root of each lane (IEEE sqrt instruction). */
static inline __attribute__((always_inline)) dk_f32v dk_sqrtv(dk_f32v v) {
#if DK_NV == 16 && defined(__AVX512F__)
    return (dk_f32v)_mm512_sqrt_ps((__m512)v);
#elif DK_NV == 8 && defined(__AVX__)
    return (dk_f32v)_mm256_sqrt_ps((__m256)v);
#elif DK_NV == 4 && defined(__SSE2__)
    return (dk_f32v)_mm_sqrt_ps((__m128)v);
#else
    dk_f32v r;
    for (int i = 0; i < DK_NV; i++) r[i] = dk_sqrtf(v[i]);
    return r;
#endif
}

/* DK_BMU independent vectors at a time, each step written for all of them before the next step:
 * the chains of dependent operations (log -> sqrt -> product) are long, and interleaving them
 * keeps the floating-point units busy (measured on the 2-vCPU AMD EPYC VM, AVX2: 4 vectors at a time are ~15% faster than one). */
#define DK_BMU 4
#define DK_EACH(...)                                                                                                   \
    _Pragma("GCC unroll 4") for (int u = 0; u < DK_BMU; u++) { __VA_ARGS__; }

static inline __attribute__((always_inline)) void dk_box_muller_v(const dk_u32v *a, const dk_u32v *b, dk_f32v *zc,
                                                                  dk_f32v *zs) {
    dk_f32v u1[DK_BMU], kf[DK_BMU], f[DK_BMU], s[DK_BMU], z[DK_BMU], t[DK_BMU], p[DK_BMU], r[DK_BMU];
    dk_f32v fr[DK_BMU], g[DK_BMU], c[DK_BMU], sn[DK_BMU];
    dk_i32v ix[DK_BMU];
    dk_u32v tt[DK_BMU], q[DK_BMU];
    /* u1 * 2^31 (the scaling is exact and leaves the mantissa alone: it is folded into k below) */
    DK_EACH(u1[u] = __builtin_convertvector((dk_i32v)(a[u] >> 1), dk_f32v) + 1.0f)
    DK_EACH(ix[u] = (dk_i32v)u1[u] + 0x004AFB0D)
    DK_EACH(kf[u] = __builtin_convertvector((ix[u] >> 23) - (127 + 31), dk_f32v))
    DK_EACH(f[u] = (dk_f32v)((ix[u] & 0x007FFFFF) + 0x3F3504F3) - 1.0f)
    DK_EACH(s[u] = f[u] / (f[u] + 2.0f))
    DK_EACH(z[u] = s[u] * s[u])
    DK_EACH(t[u] = s[u] + s[u])
    DK_EACH(p[u] = DK_LOG_P3 * z[u] + DK_LOG_P2)
    DK_EACH(p[u] = p[u] * z[u] + DK_LOG_P1)
    DK_EACH(p[u] = p[u] * z[u] + DK_LOG_P0)
    DK_EACH(p[u] = t[u] + t[u] * (z[u] * p[u])) /* log m */
    DK_EACH(p[u] = (kf[u] * DK_LN2_LO + p[u]) + kf[u] * DK_LN2_HI) /* log u1 */
    DK_EACH(r[u] = dk_sqrtv(p[u] * -2.0f))
    DK_EACH(tt[u] = ((b[u] >> 8) + (1u << 21)) & 0xFFFFFFu)
    DK_EACH(q[u] = tt[u] >> 22)
    DK_EACH(fr[u] = __builtin_convertvector((dk_i32v)(tt[u] & 0x3FFFFFu) - (1 << 21), dk_f32v) * 0x1p-22f)
    DK_EACH(g[u] = fr[u] * fr[u])
    DK_EACH(c[u] = DK_COS_C3 * g[u] + DK_COS_C2)
    DK_EACH(sn[u] = DK_SIN_S4 * g[u] + DK_SIN_S3)
    DK_EACH(c[u] = c[u] * g[u] + DK_COS_C1)
    DK_EACH(sn[u] = sn[u] * g[u] + DK_SIN_S2)
    DK_EACH(c[u] = c[u] * g[u] + DK_COS_C0)
    DK_EACH(sn[u] = sn[u] * g[u] + DK_SIN_S1)
    DK_EACH(c[u] = 1.0f + g[u] * c[u])
    DK_EACH(sn[u] = fr[u] * (sn[u] * g[u] + DK_SIN_S0))
    DK_EACH({
        dk_u32v ci = (dk_u32v)c[u], si = (dk_u32v)sn[u], swap = (dk_u32v)((q[u] & 1u) != 0);
        dk_u32v cos_i = (si & swap) | (ci & ~swap), sin_i = (ci & swap) | (si & ~swap);
        cos_i ^= ((q[u] + 1u) & 2u) << 30;
        sin_i ^= (q[u] & 2u) << 30;
        zc[u] = r[u] * (dk_f32v)cos_i;
        zs[u] = r[u] * (dk_f32v)sin_i;
    })
}

/* The normals of blocks b0 .. b0 + nb - 1 (4 * nb floats, element order) into z. */
static inline __attribute__((always_inline)) void dk_normals_to(float *z, const float *x, float sf, uint64_t b0,
                                                                size_t nb, const dk_rng *r, const int fused) {
    uint32_t w[DK_CHUNK + 8 * DK_VB] __attribute__((aligned(64)));
    dk_words3(w, b0, nb, r);
    const dk_i32v even = DK_EVEN, odd = DK_ODD, zlo = DK_ZLO, zhi = DK_ZHI;
    size_t pairs = 2 * nb, i = 0;
    for (; i + DK_BMU * DK_NV <= pairs; i += DK_BMU * DK_NV) {
        /* DK_BMU * DK_NV pairs: twice as many words in, as many normals out */
        dk_u32v a[DK_BMU], b[DK_BMU];
        dk_f32v zc[DK_BMU], zs[DK_BMU];
        DK_EACH({
            dk_u32v v0, v1;
            memcpy(&v0, w + 2 * (i + u * DK_NV), sizeof v0);
            memcpy(&v1, w + 2 * (i + u * DK_NV) + DK_NV, sizeof v1);
            a[u] = __builtin_shuffle(v0, v1, (dk_u32v)even);
            b[u] = __builtin_shuffle(v0, v1, (dk_u32v)odd);
        })
        dk_box_muller_v(a, b, zc, zs);
        DK_EACH({
            dk_f32v o0 = __builtin_shuffle(zc[u], zs[u], zlo), o1 = __builtin_shuffle(zc[u], zs[u], zhi);
            const size_t at = 2 * (i + u * DK_NV);
            if (fused) { /* float32 gaussian_mul: x * (1 + sigma z) straight from the registers */
                dk_f32v x0, x1;
                memcpy(&x0, x + at, sizeof x0);
                memcpy(&x1, x + at + DK_NV, sizeof x1);
                o0 = x0 * (1.0f + sf * o0);
                o1 = x1 * (1.0f + sf * o1);
            }
            memcpy(z + at, &o0, sizeof o0);
            memcpy(z + at + DK_NV, &o1, sizeof o1);
        })
    }
    for (; i < pairs; i++) {
        float zc, zs;
        dk_box_muller(w[2 * i], w[2 * i + 1], &zc, &zs);
        z[2 * i] = fused ? x[2 * i] * (1.0f + sf * zc) : zc;
        z[2 * i + 1] = fused ? x[2 * i + 1] * (1.0f + sf * zs) : zs;
    }
}

/* The normals of blocks b0 .. b0 + nb - 1 (4 * nb floats, element order) into z. */
static inline __attribute__((always_inline)) void dk_normals(float *z, uint64_t b0, size_t nb, const dk_rng *r) {
    dk_normals_to(z, NULL, 0.0f, b0, nb, r, 0);
}

/* float32 gaussian_mul (fused = 1) or the normals themselves (fused = 0) of elements
 * e0 .. e0 + len - 1 in one pass (no normals buffer): a partial first and last block one
 * element at a time, the whole blocks between through dk_normals_to. */
static inline __attribute__((always_inline)) void dk_gauss_f32(const float *x, float *o, size_t len, uint64_t e0,
                                                               const dk_rng *r, float sf, const int fused) {
    size_t j = 0;
    while (j < len && ((e0 + j) & 3)) { /* head */
        uint32_t w[4];
        float zz[4];
        dk_philox_words(r, (e0 + j) >> 2, w);
        dk_box_muller(w[0], w[1], zz, zz + 1);
        dk_box_muller(w[2], w[3], zz + 2, zz + 3);
        for (; j < len && ((e0 + j) & 3); j++) {
            float zj = zz[(e0 + j) & 3];
            o[j] = fused ? x[j] * (1.0f + sf * zj) : zj;
        }
    }
    size_t nb = (len - j) >> 2;
    if (nb) dk_normals_to(o + j, fused ? x + j : NULL, sf, (e0 + j) >> 2, nb, r, fused);
    j += 4 * nb;
    if (j < len) { /* tail */
        uint32_t w[4];
        float zz[4];
        dk_philox_words(r, (e0 + j) >> 2, w);
        dk_box_muller(w[0], w[1], zz, zz + 1);
        dk_box_muller(w[2], w[3], zz + 2, zz + 3);
        for (size_t k = 0; j < len; j++, k++) o[j] = fused ? x[j] * (1.0f + sf * zz[k]) : zz[k];
    }
}

/* float16 gaussian_mul, 8 at a time with F16C where the target has it (as dk_f16_block). */
static inline __attribute__((always_inline)) void dk_f16_gauss(const uint16_t *x, uint16_t *o, const float *z, float sf,
                                                               size_t len) {
    size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(sf), one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= len; i += 8) {
        __m256 fac = _mm256_add_ps(one, _mm256_mul_ps(vs, _mm256_loadu_ps(z + i)));
        dk_store_f16x8(o + i, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), fac));
    }
#endif
    for (; i < len; i++) o[i] = dk_float_to_half(dk_half_to_float(x[i]) * (1.0f + sf * z[i]));
}

/* gaussian_mul of one chunk (kind = dtype), or its normals (kind DK_KIND_NORMAL). */
DK_HIDDEN void DK_NAME(dk_gauss_chunk)(int kind, const void *xv, int xs, void *ov, size_t len, uint64_t e0,
                                       const dk_rng *r, float sf, double sd) {
    if (kind == DK_KIND_NORMAL) {
        dk_gauss_f32(NULL, (float *)ov, len, e0, r, 0.0f, 0);
        return;
    }
    float zb[DK_CHUNK + 8] __attribute__((aligned(64)));
    double xb[xs ? 1 : DK_CHUNK] __attribute__((aligned(64)));
    if (!xs) { /* one value, broadcast: repeat it in L1, then the contiguous loops */
        if (kind == DK_F64) {
            const double v = *(const double *)xv;
            for (size_t i = 0; i < len; i++) xb[i] = v;
        } else if (kind == DK_F32) {
            const float v = *(const float *)xv;
            for (size_t i = 0; i < len; i++) ((float *)xb)[i] = v;
        } else {
            const uint16_t v = *(const uint16_t *)xv;
            for (size_t i = 0; i < len; i++) ((uint16_t *)xb)[i] = v;
        }
        xv = xb;
    }
    if (kind == DK_F32) {
        dk_gauss_f32((const float *)xv, (float *)ov, len, e0, r, sf, 1);
        return;
    }
    const size_t s = (size_t)(e0 & 3), nb = (s + len + 3) >> 2;
    dk_normals(zb, e0 >> 2, nb, r);
    const float *z = zb + s;
    size_t i;
    switch (kind) {
    case DK_F64: {
        const double *x = (const double *)xv;
        double *o = (double *)ov;
        for (i = 0; i < len; i++) o[i] = x[i] * (1.0 + sd * (double)z[i]);
        break;
    }
    case DK_BF16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        for (i = 0; i < len; i++)
            o[i] = dk_float_to_bf16(dk_f32_from_bits((uint32_t)x[i] << 16) * (1.0f + sf * z[i]));
        break;
    }
    case DK_F16:
        dk_f16_gauss((const uint16_t *)xv, (uint16_t *)ov, z, sf, len);
        break;
    }
}
