/*
 * dropkit compiled CPU kernel: the dropout mask contract (src/dropkit/rng.py) and
 * out = x * (keep ? scale : 0), bit-identical to src/dropkit/kernels/reference.py.
 *
 * Contract, in one paragraph: element e (global index = offset + j) uses Philox4x32-10
 * at counter (lo32(e/8), hi32(e/8), lo32(stream), hi32(stream)), key (lo32(seed),
 * hi32(seed)); the four output words give eight 16-bit lanes (word k -> lanes 2k = low
 * half, 2k+1 = high half); e takes lane e % 8 and is kept iff lane >= thr.
 *
 * Plain C on raw pointers (no torch ABI), loaded with ctypes. One build runs on any
 * x86-64 or arm64 CPU: the AVX2 and AVX-512 functions carry __attribute__((target)),
 * and dk_cpu_features() tells the caller which ones this CPU can run.
 *
 * Layout of the work: a call's elements are split into contiguous ranges, one per
 * thread; each range is walked in chunks of DK_CHUNK elements. For a chunk the mask
 * of every Philox block it touches is generated into a small byte buffer (one byte
 * per block = 8 mask bits, bit l = lane l; it stays in L1), and the apply pass reads
 * the bits at the chunk's start bit (offset % 8) while it streams x into out. Every
 * element's bit depends only on its global index, so the result does not depend on
 * the thread count or the chunking.
 *
 * Philox state in the SIMD paths: one block per 64-bit lane. _mm*_mul_epu32 reads only
 * the low 32 bits of each 64-bit lane and returns the full 64-bit product, so a round
 * is two multiplies, two shifts and two 3-way XORs, and the high halves of the lanes
 * may hold garbage that is never read.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(_M_X64)
#define DK_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define DK_NEON 1
#include <arm_neon.h>
#endif

#include "dk_internal.h"

/* AddressSanitizer does not instrument AVX-512 masked loads and stores; in an ASan
 * build (DROPKIT_CPU_CFLAGS=-fsanitize=address) check the bytes a mask covers. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define DK_ASAN_MASKED(p, lm, esz)                                                              \
    do { /* a plain read of the first bad byte makes ASan report it with a stack trace */      \
        unsigned long long m_ = (unsigned long long)(lm);                                       \
        const volatile char *bad_ =                                                             \
            m_ ? (const volatile char *)__asan_region_is_poisoned((void *)(p), (64 - __builtin_clzll(m_)) * (esz)) \
               : 0;                                                                             \
        if (bad_) (void)*bad_;                                                                  \
    } while (0)
#else
#define DK_ASAN_MASKED(p, lm, esz) ((void)0)
#endif

/* Below this many elements a call does not wait for sleeping workers to wake (measured:
 * a wake-up costs ~50 us on a 2-vCPU VM, about the time one thread needs for 2^18 elements). */
#define DK_MAXTHREADS 256
#define DK_COLD_MIN (1u << 19)

/* ------------------------------------------------------------------------- */
/* Scalar (portable) path                                                     */
/* ------------------------------------------------------------------------- */
static inline uint8_t philox_block_bits(const dk_rng *r, uint64_t blk) {
    uint32_t c0 = (uint32_t)blk, c1 = (uint32_t)(blk >> 32), c2 = r->s0, c3 = r->s1;
    for (int i = 0; i < 10; i++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ r->k0[i];
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ r->k1[i];
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
    }
    uint32_t w[4] = {c0, c1, c2, c3};
    uint32_t bits = 0;
    for (int l = 0; l < 8; l++) {
        uint32_t u = (w[l >> 1] >> ((l & 1) * 16)) & 0xFFFFu;
        bits |= (uint32_t)(u >= r->thr) << l;
    }
    return (uint8_t)bits;
}

static void gen_scalar(uint8_t *dst, uint64_t b0, size_t nb, const dk_rng *r) {
    for (size_t i = 0; i < nb; i++) dst[i] = philox_block_bits(r, b0 + i);
}

/* Mask bits q .. q+56 of the chunk buffer (the buffer has 8 bytes of padding). */
static inline uint64_t bits_at(const uint8_t *m, size_t q) {
    uint64_t w;
    memcpy(&w, m + (q >> 3), 8);
    return w >> (q & 7);
}

static inline int bit_at(const uint8_t *m, size_t q) { return (m[q >> 3] >> (q & 7)) & 1; }

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t bits_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* IEEE binary16 -> binary32, exact (NaN payload kept, like F16C's vcvtph2ps). */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t ex = (h >> 10) & 0x1Fu, man = h & 0x3FFu, f;
    if (ex == 0) {
        if (man == 0) {
            f = sign;
        } else { /* subnormal: normalise */
            int k = 0;
            while (!(man & 0x400u)) {
                man <<= 1;
                k++;
            }
            f = sign | ((uint32_t)(127 - 14 - k) << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (ex == 31) {
        f = sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0u);
    } else {
        f = sign | ((ex + 112u) << 23) | (man << 13);
    }
    return f32_from_bits(f);
}

/* binary32 -> binary16, round to nearest even, subnormals kept, NaN -> quiet NaN with
 * the top payload bits (what F16C's vcvtps2ph and hence torch's .to(float16) do). */
static inline uint16_t float_to_half(float fv) {
    uint32_t x = bits_from_f32(fv);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    if (ax >= 0x47800000u) return (uint16_t)(sign | 0x7C00u); /* >= 65536 (and inf) */
    if (ax >= 0x38800000u) {                                  /* normal half */
        uint32_t t = ax - 0x38000000u + 0xFFFu + ((ax >> 13) & 1u);
        return (uint16_t)(sign | (t >> 13)); /* may round up to inf: correct */
    }
    uint32_t e = ax >> 23;
    if (e < 102) return sign; /* below half of the smallest subnormal */
    uint32_t m = (ax & 0x7FFFFFu) | 0x800000u, sh = 126 - e; /* 14 .. 24 */
    uint32_t q = m >> sh, rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

/* binary32 -> bfloat16 as torch's x86 vectorised conversion does: round to nearest
 * even, any NaN -> 0xFFFF. */
static inline uint16_t float_to_bf16(float fv) {
    uint32_t x = bits_from_f32(fv);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFFu;
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

static void apply_scalar(int kind, const void *xv, void *ov, size_t len, const uint8_t *m, size_t s,
                         float sf, double sd) {
    size_t i;
    switch (kind) {
    case DK_MASK: {
        uint8_t *o = (uint8_t *)ov;
        for (i = 0; i < len; i++) o[i] = (uint8_t)bit_at(m, s + i);
        break;
    }
    case DK_F32: {
        const float *x = (const float *)xv;
        float *o = (float *)ov;
        const float f[2] = {0.0f, sf};
        for (i = 0; i < len; i++) o[i] = x[i] * f[bit_at(m, s + i)];
        break;
    }
    case DK_F64: {
        const double *x = (const double *)xv;
        double *o = (double *)ov;
        const double f[2] = {0.0, sd};
        for (i = 0; i < len; i++) o[i] = x[i] * f[bit_at(m, s + i)];
        break;
    }
    case DK_F16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const float f[2] = {0.0f, sf};
        for (i = 0; i < len; i++) o[i] = float_to_half(half_to_float(x[i]) * f[bit_at(m, s + i)]);
        break;
    }
    case DK_BF16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const float f[2] = {0.0f, sf};
        for (i = 0; i < len; i++) o[i] = float_to_bf16(f32_from_bits((uint32_t)x[i] << 16) * f[bit_at(m, s + i)]);
        break;
    }
    }
}

/* ------------------------------------------------------------------------- */
/* AVX2 path                                                                  */
/* ------------------------------------------------------------------------- */
#ifdef DK_X86
#define DK_T_AVX2 __attribute__((target("avx2,f16c")))

/* One Philox round on four blocks (64-bit lanes). */
#define DK_ROUND256(c0, c1, c2, c3, K0, K1)                                                      \
    do {                                                                                        \
        __m256i p0_ = _mm256_mul_epu32(c0, M0), p1_ = _mm256_mul_epu32(c2, M1);                 \
        c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1_, 32), c1), K0);            \
        c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0_, 32), c3), K1);            \
        c1 = p1_;                                                                               \
        c3 = p0_;                                                                               \
    } while (0)

/* Keep bits of 4 blocks (32 elements, in order) from the final Philox state. */
DK_T_AVX2 static inline uint32_t avx2_bits4(__m256i c0, __m256i c1, __m256i c2, __m256i c3, __m256i thr) {
    __m256i t01 = _mm256_blend_epi32(c0, _mm256_slli_epi64(c1, 32), 0xAA);
    __m256i t23 = _mm256_blend_epi32(c2, _mm256_slli_epi64(c3, 32), 0xAA);
    __m256i a = _mm256_unpacklo_epi64(t01, t23); /* blocks 0 | 2 */
    __m256i b = _mm256_unpackhi_epi64(t01, t23); /* blocks 1 | 3 */
    __m256i ka = _mm256_cmpeq_epi16(_mm256_max_epu16(a, thr), a);
    __m256i kb = _mm256_cmpeq_epi16(_mm256_max_epu16(b, thr), b);
    return (uint32_t)_mm256_movemask_epi8(_mm256_packs_epi16(ka, kb)); /* blocks 0,1 | 2,3 */
}

DK_T_AVX2 static void gen_avx2(uint8_t *dst, uint64_t b0, size_t nb, const dk_rng *r) {
    const __m256i M0 = _mm256_set1_epi64x(PHILOX_M0), M1 = _mm256_set1_epi64x(PHILOX_M1);
    const __m256i thr = _mm256_set1_epi16((short)r->thr);
    const __m256i iota = _mm256_set_epi64x(3, 2, 1, 0), four = _mm256_set1_epi64x(4);
    /* Round 0 multiplies the constant stream word: fold it. */
    uint64_t p1c = (uint64_t)PHILOX_M1 * r->s0;
    const __m256i r0x0 = _mm256_set1_epi64x((uint32_t)(p1c >> 32) ^ r->k0[0]);
    const __m256i r0c1 = _mm256_set1_epi64x((uint32_t)p1c);
    const __m256i r0x2 = _mm256_set1_epi64x(r->s1 ^ r->k1[0]);
    __m256i K0[10], K1[10];
    for (int k = 1; k < 10; k++) {
        K0[k] = _mm256_set1_epi64x(r->k0[k]);
        K1[k] = _mm256_set1_epi64x(r->k1[k]);
    }
    size_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256i ba = _mm256_add_epi64(_mm256_set1_epi64x((long long)(b0 + i)), iota);
        __m256i bb = _mm256_add_epi64(ba, four);
        __m256i pa = _mm256_mul_epu32(ba, M0), pb = _mm256_mul_epu32(bb, M0);
        __m256i a0 = _mm256_xor_si256(_mm256_srli_epi64(ba, 32), r0x0), a1 = r0c1;
        __m256i a2 = _mm256_xor_si256(_mm256_srli_epi64(pa, 32), r0x2), a3 = pa;
        __m256i e0 = _mm256_xor_si256(_mm256_srli_epi64(bb, 32), r0x0), e1 = r0c1;
        __m256i e2 = _mm256_xor_si256(_mm256_srli_epi64(pb, 32), r0x2), e3 = pb;
        for (int k = 1; k < 10; k++) {
            DK_ROUND256(a0, a1, a2, a3, K0[k], K1[k]);
            DK_ROUND256(e0, e1, e2, e3, K0[k], K1[k]);
        }
        uint32_t lo = avx2_bits4(a0, a1, a2, a3, thr), hi = avx2_bits4(e0, e1, e2, e3, thr);
        uint64_t w = (uint64_t)lo | ((uint64_t)hi << 32);
        memcpy(dst + i, &w, 8);
    }
    for (; i < nb; i++) dst[i] = philox_block_bits(r, b0 + i);
}

/* 8 mask bits -> 8 lanes of all-ones / zeros (32-bit). */
DK_T_AVX2 static inline __m256i avx2_expand8(uint32_t b) {
    const __m256i sel = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)b), sel), sel);
}

DK_T_AVX2 static inline __m256i avx2_bf16_round(__m256 y) {
    __m256i v = _mm256_castps_si256(y);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(1));
    __m256i t = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(t, _mm256_set1_epi32(0xFFFF), nan);
}

DK_T_AVX2 static void apply_avx2(int kind, const void *xv, void *ov, size_t len, const uint8_t *m, size_t s,
                                 float sf, double sd) {
    size_t i = 0;
    switch (kind) {
    case DK_MASK: {
        uint8_t *o = (uint8_t *)ov;
        const __m256i shuf = _mm256_set_epi8(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1,
                                             0, 0, 0, 0, 0, 0, 0, 0);
        const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
        const __m256i one = _mm256_set1_epi8(1);
        for (; i + 32 <= len; i += 32) {
            uint32_t b = (uint32_t)bits_at(m, s + i);
            __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)b), shuf);
            v = _mm256_min_epu8(_mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel), one);
            _mm256_storeu_si256((__m256i *)(o + i), v);
        }
        break;
    }
    case DK_F32: {
        const float *x = (const float *)xv;
        float *o = (float *)ov;
        const __m256 vs = _mm256_set1_ps(sf);
        for (; i + 8 <= len; i += 8) {
            __m256 f = _mm256_and_ps(_mm256_castsi256_ps(avx2_expand8((uint32_t)bits_at(m, s + i))), vs);
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), f));
        }
        break;
    }
    case DK_F64: {
        const double *x = (const double *)xv;
        double *o = (double *)ov;
        const __m256d vs = _mm256_set1_pd(sd);
        const __m256i sel = _mm256_set_epi64x(8, 4, 2, 1);
        for (; i + 4 <= len; i += 4) {
            __m256i k = _mm256_set1_epi64x((long long)(bits_at(m, s + i) & 15));
            k = _mm256_cmpeq_epi64(_mm256_and_si256(k, sel), sel);
            __m256d f = _mm256_and_pd(_mm256_castsi256_pd(k), vs);
            _mm256_storeu_pd(o + i, _mm256_mul_pd(_mm256_loadu_pd(x + i), f));
        }
        break;
    }
    case DK_F16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const __m256 vs = _mm256_set1_ps(sf);
        for (; i + 8 <= len; i += 8) {
            __m256 f = _mm256_and_ps(_mm256_castsi256_ps(avx2_expand8((uint32_t)bits_at(m, s + i))), vs);
            __m256 y = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), f);
            _mm_storeu_si128((__m128i *)(o + i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        break;
    }
    case DK_BF16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const __m256 vs = _mm256_set1_ps(sf);
        for (; i + 8 <= len; i += 8) {
            __m256 f = _mm256_and_ps(_mm256_castsi256_ps(avx2_expand8((uint32_t)bits_at(m, s + i))), vs);
            __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
            __m256 y = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(h, 16)), f);
            __m256i t = avx2_bf16_round(y);
            _mm_storeu_si128((__m128i *)(o + i),
                             _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)));
        }
        break;
    }
    }
    if (i < len) {
        size_t esz = kind == DK_MASK ? 1 : kind == DK_F32 ? 4 : kind == DK_F64 ? 8 : 2;
        apply_scalar(kind, (const char *)xv + i * esz, (char *)ov + i * esz, len - i, m, s + i, sf, sd);
    }
}

/* ------------------------------------------------------------------------- */
/* AVX-512 path (F + BW + VL + DQ)                                            */
/* ------------------------------------------------------------------------- */
#define DK_T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))

#define DK_ROUND512(c0, c1, c2, c3, K0, K1)                                                      \
    do {                                                                                        \
        __m512i p0_ = _mm512_mul_epu32(c0, M0), p1_ = _mm512_mul_epu32(c2, M1);                 \
        c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1_, 32), c1, K0, 0x96);               \
        c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0_, 32), c3, K1, 0x96);               \
        c1 = p1_;                                                                               \
        c3 = p0_;                                                                               \
    } while (0)

/* Keep bits of 8 blocks (64 elements, in order) from the final Philox state. */
DK_T_AVX512 static inline uint64_t avx512_bits8(__m512i c0, __m512i c1, __m512i c2, __m512i c3, __m512i thr) {
    const __m512i ia = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i ib = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    __m512i t01 = _mm512_mask_blend_epi32(0xAAAA, c0, _mm512_slli_epi64(c1, 32));
    __m512i t23 = _mm512_mask_blend_epi32(0xAAAA, c2, _mm512_slli_epi64(c3, 32));
    __m512i a = _mm512_permutex2var_epi64(t01, ia, t23); /* blocks 0..3 */
    __m512i b = _mm512_permutex2var_epi64(t01, ib, t23); /* blocks 4..7 */
    uint64_t ka = (uint32_t)_mm512_cmpge_epu16_mask(a, thr), kb = (uint32_t)_mm512_cmpge_epu16_mask(b, thr);
    return ka | (kb << 32);
}

DK_T_AVX512 static void gen_avx512(uint8_t *dst, uint64_t b0, size_t nb, const dk_rng *r) {
    const __m512i M0 = _mm512_set1_epi64(PHILOX_M0), M1 = _mm512_set1_epi64(PHILOX_M1);
    const __m512i thr = _mm512_set1_epi16((short)r->thr);
    const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), eight = _mm512_set1_epi64(8);
    uint64_t p1c = (uint64_t)PHILOX_M1 * r->s0;
    const __m512i r0x0 = _mm512_set1_epi64((uint32_t)(p1c >> 32) ^ r->k0[0]);
    const __m512i r0c1 = _mm512_set1_epi64((uint32_t)p1c);
    const __m512i r0x2 = _mm512_set1_epi64(r->s1 ^ r->k1[0]);
    __m512i K0[10], K1[10];
    for (int k = 1; k < 10; k++) {
        K0[k] = _mm512_set1_epi64(r->k0[k]);
        K1[k] = _mm512_set1_epi64(r->k1[k]);
    }
    size_t i = 0;
    for (; i + 16 <= nb; i += 16) {
        __m512i ba = _mm512_add_epi64(_mm512_set1_epi64((long long)(b0 + i)), iota);
        __m512i bb = _mm512_add_epi64(ba, eight);
        __m512i pa = _mm512_mul_epu32(ba, M0), pb = _mm512_mul_epu32(bb, M0);
        __m512i a0 = _mm512_xor_si512(_mm512_srli_epi64(ba, 32), r0x0), a1 = r0c1;
        __m512i a2 = _mm512_xor_si512(_mm512_srli_epi64(pa, 32), r0x2), a3 = pa;
        __m512i e0 = _mm512_xor_si512(_mm512_srli_epi64(bb, 32), r0x0), e1 = r0c1;
        __m512i e2 = _mm512_xor_si512(_mm512_srli_epi64(pb, 32), r0x2), e3 = pb;
        for (int k = 1; k < 10; k++) {
            DK_ROUND512(a0, a1, a2, a3, K0[k], K1[k]);
            DK_ROUND512(e0, e1, e2, e3, K0[k], K1[k]);
        }
        uint64_t lo = avx512_bits8(a0, a1, a2, a3, thr), hi = avx512_bits8(e0, e1, e2, e3, thr);
        memcpy(dst + i, &lo, 8);
        memcpy(dst + i + 8, &hi, 8);
    }
    if (i < nb) gen_avx2(dst + i, b0 + i, nb - i, r);
}

DK_T_AVX512 static inline __m256i avx512_bf16_round(__m512 y) {
    __m512i v = _mm512_castps_si512(y);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
    __m512i t = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    t = _mm512_mask_mov_epi32(t, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), _mm512_set1_epi32(0xFFFF));
    return _mm512_cvtepi32_epi16(t);
}

DK_T_AVX512 static void apply_avx512(int kind, const void *xv, void *ov, size_t len, const uint8_t *m, size_t s,
                                     float sf, double sd) {
    size_t i = 0;
    switch (kind) {
    case DK_MASK: {
        uint8_t *o = (uint8_t *)ov;
        const __m256i one = _mm256_set1_epi8(1);
        for (; i < len; i += 32) {
            __mmask32 k = (__mmask32)bits_at(m, s + i);
            __mmask32 lm = len - i >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (len - i)) - 1u);
            DK_ASAN_MASKED(o + i, lm, 1);
            _mm256_mask_storeu_epi8(o + i, lm, _mm256_maskz_mov_epi8(k, one));
        }
        break;
    }
    case DK_F32: {
        const float *x = (const float *)xv;
        float *o = (float *)ov;
        const __m512 vs = _mm512_set1_ps(sf);
        for (; i + 32 <= len; i += 32) {
            uint32_t b = (uint32_t)bits_at(m, s + i);
            __m512 f0 = _mm512_maskz_mov_ps((__mmask16)b, vs), f1 = _mm512_maskz_mov_ps((__mmask16)(b >> 16), vs);
            _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), f0));
            _mm512_storeu_ps(o + i + 16, _mm512_mul_ps(_mm512_loadu_ps(x + i + 16), f1));
        }
        for (; i < len; i += 16) {
            __mmask16 lm = len - i >= 16 ? 0xFFFF : (__mmask16)((1u << (len - i)) - 1u);
            __m512 f = _mm512_maskz_mov_ps((__mmask16)bits_at(m, s + i), vs);
            DK_ASAN_MASKED(x + i, lm, 4);
            DK_ASAN_MASKED(o + i, lm, 4);
            _mm512_mask_storeu_ps(o + i, lm, _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, x + i), f));
        }
        break;
    }
    case DK_F64: {
        const double *x = (const double *)xv;
        double *o = (double *)ov;
        const __m512d vs = _mm512_set1_pd(sd);
        for (; i < len; i += 8) {
            __mmask8 lm = len - i >= 8 ? 0xFF : (__mmask8)((1u << (len - i)) - 1u);
            __m512d f = _mm512_maskz_mov_pd((__mmask8)bits_at(m, s + i), vs);
            DK_ASAN_MASKED(x + i, lm, 8);
            DK_ASAN_MASKED(o + i, lm, 8);
            _mm512_mask_storeu_pd(o + i, lm, _mm512_mul_pd(_mm512_maskz_loadu_pd(lm, x + i), f));
        }
        break;
    }
    case DK_F16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const __m512 vs = _mm512_set1_ps(sf);
        for (; i < len; i += 16) {
            __mmask16 lm = len - i >= 16 ? 0xFFFF : (__mmask16)((1u << (len - i)) - 1u);
            __m512 f = _mm512_maskz_mov_ps((__mmask16)bits_at(m, s + i), vs);
            DK_ASAN_MASKED(x + i, lm, 2);
            DK_ASAN_MASKED(o + i, lm, 2);
            __m512 y = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lm, x + i)), f);
            _mm256_mask_storeu_epi16(o + i, lm, _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        break;
    }
    case DK_BF16: {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const __m512 vs = _mm512_set1_ps(sf);
        for (; i < len; i += 16) {
            __mmask16 lm = len - i >= 16 ? 0xFFFF : (__mmask16)((1u << (len - i)) - 1u);
            __m512 f = _mm512_maskz_mov_ps((__mmask16)bits_at(m, s + i), vs);
            DK_ASAN_MASKED(x + i, lm, 2);
            DK_ASAN_MASKED(o + i, lm, 2);
            __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lm, x + i));
            __m512 y = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(h, 16)), f);
            _mm256_mask_storeu_epi16(o + i, lm, avx512_bf16_round(y));
        }
        break;
    }
    }
}
#endif /* DK_X86 */

/* ------------------------------------------------------------------------- */
/* NEON path (AArch64: NEON is part of the base ISA)                          */
/* ------------------------------------------------------------------------- */
#ifdef DK_NEON
/* One Philox round on four blocks (one block per 32-bit lane): vmull gives the
 * 64-bit products two lanes at a time, uzp2 collects their high words. */
#define DK_ROUND_NEON(c0, c1, c2, c3, K0, K1)                                                    \
    do {                                                                                        \
        uint32x4_t h0_ = vuzp2q_u32(vreinterpretq_u32_u64(vmull_u32(vget_low_u32(c0), vget_low_u32(M0))), \
                                    vreinterpretq_u32_u64(vmull_high_u32(c0, M0)));             \
        uint32x4_t h1_ = vuzp2q_u32(vreinterpretq_u32_u64(vmull_u32(vget_low_u32(c2), vget_low_u32(M1))), \
                                    vreinterpretq_u32_u64(vmull_high_u32(c2, M1)));             \
        uint32x4_t l0_ = vmulq_u32(c0, M0), l1_ = vmulq_u32(c2, M1);                            \
        c0 = veorq_u32(veorq_u32(h1_, c1), K0);                                                 \
        c2 = veorq_u32(veorq_u32(h0_, c3), K1);                                                 \
        c1 = l1_;                                                                               \
        c3 = l0_;                                                                               \
    } while (0)

static void gen_neon(uint8_t *dst, uint64_t b0, size_t nb, const dk_rng *r) {
    const uint32x4_t M0 = vdupq_n_u32(PHILOX_M0), M1 = vdupq_n_u32(PHILOX_M1);
    const uint16x8_t thr = vdupq_n_u16((uint16_t)r->thr);
    static const uint8_t bitw[8] = {1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x8_t bw = vld1_u8(bitw);
    const uint32x4_t s0 = vdupq_n_u32(r->s0), s1 = vdupq_n_u32(r->s1);
    size_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        uint32_t lo[4], hi[4];
        for (int l = 0; l < 4; l++) {
            lo[l] = (uint32_t)(b0 + i + l);
            hi[l] = (uint32_t)((b0 + i + l) >> 32);
        }
        uint32x4_t c0 = vld1q_u32(lo), c1 = vld1q_u32(hi), c2 = s0, c3 = s1;
        for (int k = 0; k < 10; k++) DK_ROUND_NEON(c0, c1, c2, c3, vdupq_n_u32(r->k0[k]), vdupq_n_u32(r->k1[k]));
        /* transpose: block b's words (c0[b], c1[b], c2[b], c3[b]) = its 8 lanes in order */
        uint32x4_t t0 = vtrn1q_u32(c0, c1), t1 = vtrn2q_u32(c0, c1), t2 = vtrn1q_u32(c2, c3), t3 = vtrn2q_u32(c2, c3);
        uint32x4_t blk[4] = {
            vreinterpretq_u32_u64(vtrn1q_u64(vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t2))),
            vreinterpretq_u32_u64(vtrn1q_u64(vreinterpretq_u64_u32(t1), vreinterpretq_u64_u32(t3))),
            vreinterpretq_u32_u64(vtrn2q_u64(vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t2))),
            vreinterpretq_u32_u64(vtrn2q_u64(vreinterpretq_u64_u32(t1), vreinterpretq_u64_u32(t3))),
        };
        for (int b = 0; b < 4; b++) {
            uint8x8_t keep = vmovn_u16(vcgeq_u16(vreinterpretq_u16_u32(blk[b]), thr));
            dst[i + b] = vaddv_u8(vand_u8(keep, bw));
        }
    }
    for (; i < nb; i++) dst[i] = philox_block_bits(r, b0 + i);
}

static void apply_neon(int kind, const void *xv, void *ov, size_t len, const uint8_t *m, size_t s, float sf,
                       double sd) {
    size_t i = 0;
    static const uint32_t bit4[4] = {1, 2, 4, 8};
    const uint32x4_t sel = vld1q_u32(bit4);
    const uint32x4_t vs = vreinterpretq_u32_f32(vdupq_n_f32(sf));
    if (kind == DK_F32) {
        const float *x = (const float *)xv;
        float *o = (float *)ov;
        for (; i + 8 <= len; i += 8) {
            uint32_t b = (uint32_t)bits_at(m, s + i);
            uint32x4_t k0 = vtstq_u32(vdupq_n_u32(b), sel), k1 = vtstq_u32(vdupq_n_u32(b >> 4), sel);
            float32x4_t f0 = vreinterpretq_f32_u32(vandq_u32(k0, vs)), f1 = vreinterpretq_f32_u32(vandq_u32(k1, vs));
            vst1q_f32(o + i, vmulq_f32(vld1q_f32(x + i), f0));
            vst1q_f32(o + i + 4, vmulq_f32(vld1q_f32(x + i + 4), f1));
        }
    } else if (kind == DK_BF16) {
        const uint16_t *x = (const uint16_t *)xv;
        uint16_t *o = (uint16_t *)ov;
        const uint32x4_t one = vdupq_n_u32(1), bias = vdupq_n_u32(0x7FFF);
        for (; i + 4 <= len; i += 4) {
            uint32x4_t k = vtstq_u32(vdupq_n_u32((uint32_t)bits_at(m, s + i)), sel);
            float32x4_t y = vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(x + i), 16)),
                                      vreinterpretq_f32_u32(vandq_u32(k, vs)));
            uint32x4_t v = vreinterpretq_u32_f32(y);
            uint32x4_t t = vshrq_n_u32(vaddq_u32(vaddq_u32(v, bias), vandq_u32(vshrq_n_u32(v, 16), one)), 16);
            t = vbslq_u32(vceqq_f32(y, y), t, vdupq_n_u32(0xFFFF)); /* NaN -> 0xFFFF as on x86 */
            vst1_u16(o + i, vmovn_u32(t));
        }
    }
    (void)sd;
    if (i < len) {
        size_t esz = kind == DK_MASK ? 1 : kind == DK_F32 ? 4 : kind == DK_F64 ? 8 : 2;
        apply_scalar(kind, (const char *)xv + i * esz, (char *)ov + i * esz, len - i, m, s + i, sf, sd);
    }
}
#endif /* DK_NEON */

/* ------------------------------------------------------------------------- */
/* Driver: chunks, threads, dispatch                                          */
/* ------------------------------------------------------------------------- */
enum { DK_OP_MASKED = 0, DK_OP_UNIFORM = 1 };
typedef void (*gen_fn)(uint8_t *, uint64_t, size_t, const dk_rng *);
typedef void (*apply_fn)(int, const void *, void *, size_t, const uint8_t *, size_t, float, double);

typedef struct {
    int op;   /* DK_OP_MASKED (keep mask / dropout_mul) or DK_OP_UNIFORM */
    int kind, isa;
    const char *x;
    char *out;
    size_t esz;
    uint64_t offset;
    uint32_t thr;
    float sf;
    double sd;
    dk_rng r;
} dk_job;

static void dk_select(int isa, gen_fn *g, apply_fn *a) {
    *g = gen_scalar;
    *a = apply_scalar;
#ifdef DK_X86
    if (isa == DK_ISA_AVX2) {
        *g = gen_avx2;
        *a = apply_avx2;
    } else if (isa == DK_ISA_AVX512) {
        *g = gen_avx512;
        *a = apply_avx512;
    }
#elif defined(DK_NEON)
    if (isa == DK_ISA_NEON) {
        *g = gen_neon;
        *a = apply_neon;
    }
#else
    (void)isa;
#endif
}

static dk_uniform_fn dk_uniform_for(int isa) {
#if defined(__x86_64__)
    if (isa == DK_ISA_AVX512) return dk_uniform_chunk_avx512;
    if (isa == DK_ISA_AVX2) return dk_uniform_chunk_avx2;
#endif
    (void)isa;
    return dk_uniform_chunk_base;
}

static void run_uniform(const dk_job *J, size_t j0, size_t j1) {
    dk_uniform_fn fn = dk_uniform_for(J->isa);
    for (size_t j = j0; j < j1; j += DK_CHUNK) {
        size_t len = j1 - j < DK_CHUNK ? j1 - j : DK_CHUNK;
        fn(J->kind, J->out + j * J->esz, len, J->offset + j, &J->r);
    }
}

static void run_range(const dk_job *J, size_t j0, size_t j1) {
    if (J->op == DK_OP_UNIFORM) {
        run_uniform(J, j0, j1);
        return;
    }
    uint8_t mbuf[DK_CHUNK / 8 + 32] __attribute__((aligned(64)));
    gen_fn gen;
    apply_fn apply;
    dk_select(J->isa, &gen, &apply);
    for (size_t j = j0; j < j1; j += DK_CHUNK) {
        size_t len = j1 - j < DK_CHUNK ? j1 - j : DK_CHUNK;
        uint64_t e0 = J->offset + j;
        size_t s = (size_t)(e0 & 7);
        size_t nb = (s + len + 7) >> 3;
        if (J->thr == 0)
            memset(mbuf, 0xFF, nb);
        else if (J->thr >= 65536)
            memset(mbuf, 0x00, nb);
        else
            gen(mbuf, e0 >> 3, nb, &J->r);
        memset(mbuf + nb, 0, 16); /* padding read by bits_at */
        apply(J->kind, J->x + j * J->esz, J->out + j * J->esz, len, mbuf, s, J->sf, J->sd);
    }
}

typedef struct {
    const dk_job *job;
    size_t j0, j1;
#ifdef DK_X86
    unsigned int mxcsr;
#endif
} dk_task;

static void dk_run_task(const dk_task *t) {
#ifdef DK_X86
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(t->mxcsr); /* same FTZ/DAZ/rounding as the calling thread */
    run_range(t->job, t->j0, t->j1);
    _mm_setcsr(saved);
#else
    run_range(t->job, t->j0, t->j1);
#endif
}

/* A persistent pool of worker threads, started on first use.
 *
 * Waking a sleeping thread costs 20-50 us on a virtual machine (the idle vCPU has to be
 * woken through the hypervisor), more than the whole work below ~2^19 elements. So a
 * worker that finished a job spins (pause + sched_yield, so it gives way to any runnable
 * thread) for dk_spin_ns before it sleeps on a condition variable; calls that come in
 * a burst (a training step's forward and backward) find it awake. Each worker has its
 * own slot (generation counter + task), written only while that worker is idle.
 * One call uses the pool at a time; a concurrent caller runs on its own thread. */
typedef struct {
    _Atomic unsigned long gen;
    const dk_task *_Atomic task;
    unsigned long start_gen; /* gen when the worker was created (set before pthread_create) */
    char pad[64 - 2 * sizeof(unsigned long) - sizeof(void *)];
} dk_slot;

static struct {
    pthread_mutex_t busy; /* held by the call that owns the pool */
    pthread_mutex_t mu;   /* with `work`: sleeping workers */
    pthread_cond_t work;
    _Atomic int sleepers;
    _Atomic int remaining;
    _Atomic unsigned long wake; /* bumped to wake sleeping workers without work (prewarm) */
    int nworkers;
    dk_slot slot[DK_MAXTHREADS];
} dk_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, {{0}}};

static _Atomic long long dk_spin_ns = 200000;

/* How long an idle worker spins before it sleeps (0: sleep at once). Returns the old value. */
DK_API long long dk_set_spin_us(long long us) {
    return atomic_exchange(&dk_spin_ns, us < 0 ? 0 : us * 1000) / 1000;
}

static inline long long dk_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void dk_relax(void) {
#ifdef DK_X86
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *dk_worker(void *arg) {
    int me = (int)(intptr_t)arg;
    dk_slot *sl = &dk_pool.slot[me];
    unsigned long seen = sl->start_gen;
    for (;;) {
        long long t0 = dk_now_ns(), spin = atomic_load_explicit(&dk_spin_ns, memory_order_relaxed);
        unsigned int k = 0;
        while (atomic_load_explicit(&sl->gen, memory_order_acquire) == seen) {
            dk_relax();
            if (++k % 64 == 0) {
                if (dk_now_ns() - t0 < spin) {
                    sched_yield();
                    continue;
                }
                pthread_mutex_lock(&dk_pool.mu);
                unsigned long w = atomic_load(&dk_pool.wake);
                atomic_fetch_add(&dk_pool.sleepers, 1);
                while (atomic_load(&sl->gen) == seen && atomic_load(&dk_pool.wake) == w)
                    pthread_cond_wait(&dk_pool.work, &dk_pool.mu);
                atomic_fetch_sub(&dk_pool.sleepers, 1);
                pthread_mutex_unlock(&dk_pool.mu);
                t0 = dk_now_ns(); /* woken: spin again before sleeping */
            }
        }
        seen = atomic_load_explicit(&sl->gen, memory_order_acquire);
        dk_run_task(atomic_load_explicit(&sl->task, memory_order_relaxed));
        atomic_fetch_sub_explicit(&dk_pool.remaining, 1, memory_order_release);
    }
    return NULL;
}

/* After fork() the child has none of the parent's threads: start a fresh pool there. */
static void dk_pool_atfork_child(void) {
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    dk_pool.busy = m;
    dk_pool.mu = m;
    dk_pool.work = c;
    atomic_store(&dk_pool.sleepers, 0);
    atomic_store(&dk_pool.remaining, 0);
    dk_pool.nworkers = 0;
}

static void dk_pool_atfork_init(void) { pthread_atfork(NULL, NULL, dk_pool_atfork_child); }
static pthread_once_t dk_pool_once = PTHREAD_ONCE_INIT;

/* Make sure `want` workers (ids 1..want) exist; returns how many do. Called holding busy. */
static int dk_pool_grow(int want) {
    pthread_once(&dk_pool_once, dk_pool_atfork_init);
    while (dk_pool.nworkers < want) {
        pthread_attr_t attr;
        pthread_t tid;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1 << 20);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        dk_pool.slot[dk_pool.nworkers + 1].start_gen = atomic_load(&dk_pool.slot[dk_pool.nworkers + 1].gen);
        int rc = pthread_create(&tid, &attr, dk_worker, (void *)(intptr_t)(dk_pool.nworkers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        dk_pool.nworkers++;
    }
    return dk_pool.nworkers;
}

/* Contiguous ranges of whole 64-element units, one per thread. */
static void dk_split(const dk_job *J, size_t n, size_t units, int nthreads, dk_task *tasks) {
#ifdef DK_X86
    unsigned int csr = _mm_getcsr();
#endif
    for (int t = 0; t < nthreads; t++) {
        tasks[t].job = J;
        size_t a = units * (size_t)t / (size_t)nthreads * 64, b = units * (size_t)(t + 1) / (size_t)nthreads * 64;
        tasks[t].j0 = a < n ? a : n;
        tasks[t].j1 = b < n ? b : n;
#ifdef DK_X86
        tasks[t].mxcsr = csr;
#endif
    }
}

/* Borrowing torch's OpenMP team. torch's CPU ops run on an OpenMP thread team whose
 * threads spin for a while after each parallel region; a separate pool of ours would
 * fight them for the cores (measured: +0.5 ms per MLP training step on 2 vCPUs). So when
 * the Python side finds the OpenMP runtime torch loaded, it passes GOMP_parallel (the
 * libgomp ABI, also exported by LLVM's libomp) and omp_get_thread_num, and calls run
 * on torch's own threads, exactly as torch's parallel_for does. Not used in a forked
 * child (libgomp's team does not survive fork); the pthread pool serves there. */
typedef void (*dk_gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static dk_gomp_parallel_fn dk_gomp_parallel;
static int (*dk_omp_thread_num)(void);
static pid_t dk_omp_pid;

DK_API int dk_use_openmp(void *gomp_parallel, void *omp_get_thread_num) {
    dk_gomp_parallel = (dk_gomp_parallel_fn)gomp_parallel;
    dk_omp_thread_num = (int (*)(void))omp_get_thread_num;
    dk_omp_pid = getpid();
    return dk_gomp_parallel != NULL && dk_omp_thread_num != NULL;
}

typedef struct {
    const dk_task *tasks;
    int n;
    _Atomic int next;
} dk_omp_ctx;

static void dk_omp_body(void *arg) {
    dk_omp_ctx *c = (dk_omp_ctx *)arg;
    /* tasks are claimed, not assigned by thread number: correct for any team size */
    int i;
    while ((i = atomic_fetch_add(&c->next, 1)) < c->n) dk_run_task(&c->tasks[i]);
}

/* Generic task runner for the other kernels of this library (mask_fold.c): fn(ctx, i) for
 * i < n, tasks claimed in order by torch's OpenMP team when it is borrowed (each thread
 * with the caller's MXCSR), else run on the calling thread. */
typedef struct {
    void (*fn)(void *, int64_t);
    void *ctx;
    int64_t n;
    _Atomic int64_t next;
#ifdef DK_X86
    unsigned int mxcsr;
#endif
} dk_tasks_ctx;

static void dk_tasks_body(void *arg) {
    dk_tasks_ctx *c = (dk_tasks_ctx *)arg;
#ifdef DK_X86
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(c->mxcsr);
#endif
    int64_t i;
    while ((i = atomic_fetch_add(&c->next, 1)) < c->n) c->fn(c->ctx, i);
#ifdef DK_X86
    _mm_setcsr(saved);
#endif
}

int dk_parallel_tasks(void (*fn)(void *, int64_t), void *ctx, int64_t n, int nthreads) {
    dk_tasks_ctx c;
    c.fn = fn;
    c.ctx = ctx;
    c.n = n;
    atomic_store(&c.next, 0);
#ifdef DK_X86
    c.mxcsr = _mm_getcsr();
#endif
    if (nthreads > n) nthreads = (int)n;
    if (nthreads > DK_MAXTHREADS) nthreads = DK_MAXTHREADS;
    if (nthreads > 1 && dk_gomp_parallel != NULL && dk_omp_pid == getpid())
        dk_gomp_parallel(dk_tasks_body, &c, (unsigned)nthreads, 0);
    else
        dk_tasks_body(&c);
    return 0;
}

static int dk_run(dk_job *J, size_t n, int nthreads) {
    if (n == 0) return 0;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > DK_MAXTHREADS) nthreads = DK_MAXTHREADS;
    /* ranges are multiples of 64 elements so threads never share an output cache line */
    size_t units = (n + 63) / 64;
    if ((size_t)nthreads > units) nthreads = (int)units;
    if (nthreads > 1 && dk_gomp_parallel != NULL && dk_omp_pid == getpid()) {
        dk_task tasks[DK_MAXTHREADS];
        dk_split(J, n, units, nthreads, tasks);
        dk_omp_ctx c = {tasks, nthreads, 0};
        dk_gomp_parallel(dk_omp_body, &c, (unsigned)nthreads, 0);
        return 0;
    }
    if (nthreads > 1 && pthread_mutex_trylock(&dk_pool.busy) != 0) nthreads = 1; /* pool in use */
    if (nthreads > 1 && n < DK_COLD_MIN && (dk_pool.nworkers < nthreads - 1 || atomic_load(&dk_pool.sleepers) > 0)) {
        /* Workers asleep (or not started): waking one costs more than this call's work.
         * Do it on this thread, and wake them so that the calls that follow find them spinning. */
        dk_pool_grow(nthreads - 1);
        if (atomic_load(&dk_pool.sleepers) > 0) {
            pthread_mutex_lock(&dk_pool.mu);
            atomic_fetch_add(&dk_pool.wake, 1);
            pthread_cond_broadcast(&dk_pool.work);
            pthread_mutex_unlock(&dk_pool.mu);
        }
        pthread_mutex_unlock(&dk_pool.busy);
        nthreads = 1;
    }
    if (nthreads == 1) {
        run_range(J, 0, n);
        return 0;
    }
    int have = dk_pool_grow(nthreads - 1);
    if (have < nthreads - 1) nthreads = have + 1;
    dk_task tasks[DK_MAXTHREADS];
    dk_split(J, n, units, nthreads, tasks);
    if (nthreads > 1) {
        atomic_store(&dk_pool.remaining, nthreads - 1);
        for (int t = 1; t < nthreads; t++) {
            atomic_store_explicit(&dk_pool.slot[t].task, &tasks[t], memory_order_relaxed);
            atomic_fetch_add(&dk_pool.slot[t].gen, 1); /* seq_cst: ordered before the load of sleepers */
        }
        if (atomic_load(&dk_pool.sleepers) > 0) {
            pthread_mutex_lock(&dk_pool.mu);
            pthread_cond_broadcast(&dk_pool.work);
            pthread_mutex_unlock(&dk_pool.mu);
        }
        run_range(J, tasks[0].j0, tasks[0].j1);
        unsigned int k = 0;
        while (atomic_load_explicit(&dk_pool.remaining, memory_order_acquire) > 0) {
            dk_relax();
            if (++k % 64 == 0) sched_yield();
        }
    } else {
        run_range(J, tasks[0].j0, tasks[0].j1);
    }
    pthread_mutex_unlock(&dk_pool.busy);
    return 0;
}

/* Bit (1 << level) set for every ISA level this CPU (and OS) can run. */
DK_API int dk_cpu_features(void) {
    static volatile int cached = -1;
    if (cached >= 0) return cached;
    int f = 1 << DK_ISA_SCALAR;
#ifdef DK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) f |= 1 << DK_ISA_AVX2;
    if ((f & (1 << DK_ISA_AVX2)) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        f |= 1 << DK_ISA_AVX512;
#endif
#ifdef DK_NEON
    f |= 1 << DK_ISA_NEON;
#endif
    cached = f;
    return f;
}

static int dk_clamp_isa(int isa) {
    int f = dk_cpu_features();
    while (isa > 0 && !(f & (1 << isa))) isa--;
    return isa < 0 ? 0 : isa;
}

/* The ISA level a call with `isa` actually uses (lower when the CPU lacks it). */
DK_API int dk_effective_isa(int isa) { return dk_clamp_isa(isa); }

/* out[j] = 1 if element offset + j is kept, else 0, for j < n. */
DK_API int dk_keep_mask(uint8_t *out, int64_t n, uint32_t thr, uint64_t seed, uint64_t stream, uint64_t offset,
                        int isa, int nthreads) {
    if (n < 0) return -1;
    dk_job J;
    memset(&J, 0, sizeof J);
    J.kind = DK_MASK;
    J.isa = dk_clamp_isa(isa);
    J.x = NULL;
    J.out = (char *)out;
    J.esz = 1;
    J.offset = offset;
    J.thr = thr;
    dk_rng_init(&J.r, thr, seed, stream);
    return dk_run(&J, (size_t)n, nthreads);
}

/* out = x * (keep ? scale : 0) elementwise, dtype: 0 f32, 1 f64, 2 f16, 3 bf16.
 * The product is taken in float32 (float64 for f64), with scale rounded to float32
 * first, and rounded once to the dtype. out may equal x. */
DK_API int dk_dropout_mul(int dtype, const void *x, void *out, int64_t n, uint32_t thr, double scale, uint64_t seed,
                          uint64_t stream, uint64_t offset, int isa, int nthreads) {
    if (n < 0 || dtype < 0 || dtype > 3) return -1;
    static const size_t esz[4] = {4, 8, 2, 2};
    dk_job J;
    memset(&J, 0, sizeof J);
    J.kind = dtype;
    J.isa = dk_clamp_isa(isa);
    J.x = (const char *)x;
    J.out = (char *)out;
    J.esz = esz[dtype];
    J.offset = offset;
    J.thr = thr;
    J.sf = (float)scale;
    J.sd = scale;
    dk_rng_init(&J.r, thr, seed, stream);
    return dk_run(&J, (size_t)n, nthreads);
}

DK_API int dk_uniform(int dtype, void *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, int isa,
                      int nthreads) {
    if (n < 0 || (dtype != DK_F32 && dtype != DK_F64)) return -1;
    dk_job J;
    memset(&J, 0, sizeof J);
    J.op = DK_OP_UNIFORM;
    J.kind = dtype;
    J.isa = dk_clamp_isa(isa);
    J.out = (char *)out;
    J.esz = dtype == DK_F64 ? 8 : 4;
    J.offset = offset;
    dk_rng_init(&J.r, 0, seed, stream);
    return dk_run(&J, (size_t)n, nthreads);
}

DK_API int64_t dk_abi_constant(const char *name) {
    static const struct {
        const char *name;
        int64_t value;
    } table[] = {
        {"DK_ABI_VERSION", DK_ABI_VERSION}, {"DK_ISA_SCALAR", DK_ISA_SCALAR}, {"DK_ISA_AVX2", DK_ISA_AVX2},
        {"DK_ISA_AVX512", DK_ISA_AVX512},   {"DK_ISA_NEON", DK_ISA_NEON},     {"DK_ISA_COUNT", DK_ISA_COUNT},
        {"DK_F32", DK_F32},                 {"DK_F64", DK_F64},               {"DK_F16", DK_F16},
        {"DK_BF16", DK_BF16},               {"DK_MASK", DK_MASK},
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (strcmp(table[i].name, name) == 0) return table[i].value;
    return -1;
}

#ifndef DK_SOURCE_HASH
#define DK_SOURCE_HASH "unknown"
#endif
DK_API const char *dk_source_hash(void) { return DK_SOURCE_HASH; }
