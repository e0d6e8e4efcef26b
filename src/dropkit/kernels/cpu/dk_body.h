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
