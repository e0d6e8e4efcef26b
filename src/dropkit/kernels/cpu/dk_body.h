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

/* float16 products, 8 at a time with F16C where the target has it: GCC 12 does not vectorize
 * _Float16 conversions, and the bit-exact C conversion is several times slower (measured:
 * see benchmarks/RESULTS.md). The NaN rule is applied after the hardware rounding. */
static inline __attribute__((always_inline)) size_t dk_f16_block(const uint16_t *x, uint16_t *o, const uint16_t *u,
                                                                  uint16_t t, float sf, size_t len) {
    size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(sf), zero = _mm256_setzero_ps();
    const __m128i vt = _mm_set1_epi16((short)t), qnan = _mm_set1_epi16((short)DK_F16_NAN);
    for (; i + 8 <= len; i += 8) {
        __m128i lane = _mm_loadu_si128((const __m128i *)(u + i));
        __m128i keep = _mm_cmpeq_epi16(_mm_max_epu16(lane, vt), lane); /* u >= t */
        __m256 f = _mm256_blendv_ps(zero, vs, _mm256_castsi256_ps(_mm256_cvtepi16_epi32(keep)));
        __m256 y = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), f);
        __m128i h = _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(y, y, _CMP_UNORD_Q));
        __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1));
        _mm_storeu_si128((__m128i *)(o + i), _mm_blendv_epi8(h, qnan, nan16));
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
