/* Internal declarations shared by the driver (dropkit_cpu.c) and the per-target bodies
 * (dk_target_*.c, which include dk_body.h). Not part of the ABI. */
#ifndef DK_INTERNAL_H
#define DK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dropkit_cpu.h"
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#define DK_HIDDEN __attribute__((visibility("hidden")))

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Elements per chunk of the driver; a thread walks its range chunk by chunk. */
#define DK_CHUNK 4096

typedef struct {
    uint32_t thr;            /* 1 .. 65535 when the RNG runs (0 and 65536 are constant masks) */
    uint32_t s0, s1;         /* stream words */
    uint32_t k0[10], k1[10]; /* round keys */
} dk_rng;

static inline void dk_rng_init(dk_rng *r, uint32_t thr, uint64_t seed, uint64_t stream) {
    r->thr = thr;
    r->s0 = (uint32_t)stream;
    r->s1 = (uint32_t)(stream >> 32);
    uint32_t a = (uint32_t)seed, b = (uint32_t)(seed >> 32);
    for (int i = 0; i < 10; i++) {
        r->k0[i] = a;
        r->k1[i] = b;
        a += PHILOX_W0;
        b += PHILOX_W1;
    }
}

/* Philox4x32-10 of block blk: the four output words. */
static inline void dk_philox_words(const dk_rng *r, uint64_t blk, uint32_t w[4]) {
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
    w[0] = c0;
    w[1] = c1;
    w[2] = c2;
    w[3] = c3;
}

static inline float dk_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t dk_bits_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The 16-bit NaN rule (docs/rng.md): a NaN result is stored as the canonical quiet NaN of
 * its type, whatever the input's sign and payload: 0x7E00 in float16, 0x7FC0 in bfloat16. */
#define DK_F16_NAN 0x7E00u
#define DK_BF16_NAN 0x7FC0u

/* IEEE binary16 -> binary32, exact (NaN payload kept: it is replaced on output anyway). */
static inline float dk_half_to_float(uint16_t h) {
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
    return dk_f32_from_bits(f);
}

/* binary32 -> binary16, round to nearest even, subnormals kept, NaN -> DK_F16_NAN. */
static inline uint16_t dk_float_to_half(float fv) {
    uint32_t x = dk_bits_from_f32(fv);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return (uint16_t)DK_F16_NAN;
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

/* binary32 -> bfloat16, round to nearest even, NaN -> DK_BF16_NAN (branch-free: vectorizes). */
static inline uint16_t dk_float_to_bf16(float fv) {
    uint32_t x = dk_bits_from_f32(fv);
    uint32_t r = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)((x & 0x7FFFFFFFu) > 0x7F800000u ? DK_BF16_NAN : r);
}

/* ------------------------------------------------------------------------- */
/* Normal contract v2 (docs/rng.md, dropkit.rng.box_muller_f32_numpy): Box-Muller in   */
/* exactly rounded float32 arithmetic. No FMA (-ffp-contract=off), no library math.    */
/* ------------------------------------------------------------------------- */
#define DK_LOG_P0 0x1.555556p-2f
#define DK_LOG_P1 0x1.9999eep-3f
#define DK_LOG_P2 0x1.245b92p-3f
#define DK_LOG_P3 0x1.ddea92p-4f
#define DK_COS_C0 -0x1.3bd3ccp+0f
#define DK_COS_C1 0x1.03c1eap-2f
#define DK_COS_C2 -0x1.55cb98p-6f
#define DK_COS_C3 0x1.db64d8p-11f
#define DK_SIN_S0 0x1.921fb6p+0f
#define DK_SIN_S1 -0x1.4abbcep-1f
#define DK_SIN_S2 0x1.466bbap-4f
#define DK_SIN_S3 -0x1.32ca9ep-8f
#define DK_SIN_S4 0x1.4bc85cp-13f
#define DK_LN2_HI 0x1.62e3p-1f
#define DK_LN2_LO 0x1.2fefa4p-17f

/* Correctly rounded float32 square root: the instruction itself (no libm call, no errno path). */
static inline float dk_sqrtf(float x) {
#if defined(__x86_64__)
    return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(x)));
#elif defined(__aarch64__)
    float r;
    __asm__("fsqrt %s0, %s1" : "=w"(r) : "w"(x));
    return r;
#else
    return __builtin_sqrtf(x);
#endif
}

/* The pair (a, b) of Philox words -> (r cos theta, r sin theta), one element at a time
 * (the vector bodies in dk_body.h compute the same operations lane by lane). */
static inline void dk_box_muller(uint32_t a, uint32_t b, float *zc, float *zs) {
    float u1 = ((float)(int32_t)(a >> 1) + 1.0f) * 0x1p-31f;
    int32_t ix = (int32_t)dk_bits_from_f32(u1) + 0x004AFB0D;
    float kf = (float)((ix >> 23) - 127);
    float m = dk_f32_from_bits((uint32_t)((ix & 0x007FFFFF) + 0x3F3504F3));
    float f = m - 1.0f;
    float s = f / (f + 2.0f);
    float z = s * s, t = s + s;
    float p = ((DK_LOG_P3 * z + DK_LOG_P2) * z + DK_LOG_P1) * z + DK_LOG_P0;
    float log_m = t + t * (z * p);
    float log_u1 = (kf * DK_LN2_LO + log_m) + kf * DK_LN2_HI;
    float r = dk_sqrtf(log_u1 * -2.0f);
    uint32_t tt = ((b >> 8) + (1u << 21)) & 0xFFFFFFu, q = tt >> 22;
    float fr = (float)((int32_t)(tt & 0x3FFFFFu) - (1 << 21)) * 0x1p-22f;
    float g = fr * fr;
    float c = 1.0f + g * (((DK_COS_C3 * g + DK_COS_C2) * g + DK_COS_C1) * g + DK_COS_C0);
    float sn = fr * ((((DK_SIN_S4 * g + DK_SIN_S3) * g + DK_SIN_S2) * g + DK_SIN_S1) * g + DK_SIN_S0);
    uint32_t ci = dk_bits_from_f32(c), si = dk_bits_from_f32(sn);
    uint32_t cos_i = (q & 1u) ? si : ci, sin_i = (q & 1u) ? ci : si;
    cos_i ^= ((q + 1u) & 2u) << 30;
    sin_i ^= (q & 2u) << 30;
    *zc = r * dk_f32_from_bits(cos_i);
    *zs = r * dk_f32_from_bits(sin_i);
}

/* Internal kind of dk_gauss_chunk: write the float32 normals themselves. */
#define DK_KIND_NORMAL 5

/* gaussian_mul (kind = dtype: out = x * (1 + sigma z)) or the normals (DK_KIND_NORMAL, float32 out)
 * of elements e0 .. e0 + len - 1. xs = 1: x holds len elements; xs = 0: x is one value, broadcast
 * (the gradient of a sum arrives as one expanded value: no need to materialise it). */
typedef void (*dk_gauss_fn)(int kind, const void *x, int xs, void *out, size_t len, uint64_t e0, const dk_rng *r,
                            float sf, double sd);
DK_HIDDEN void dk_gauss_chunk_base(int kind, const void *x, int xs, void *out, size_t len, uint64_t e0,
                                   const dk_rng *r, float sf, double sd);
#if defined(__x86_64__)
DK_HIDDEN void dk_gauss_chunk_avx2(int kind, const void *x, int xs, void *out, size_t len, uint64_t e0,
                                   const dk_rng *r, float sf, double sd);
DK_HIDDEN void dk_gauss_chunk_avx512(int kind, const void *x, int xs, void *out, size_t len, uint64_t e0,
                                     const dk_rng *r, float sf, double sd);
#endif

/* Keep mask (kind DK_MASK: bytes 0/1) or dropout_mul (kind = dtype) of elements e0 .. e0 + len - 1. */
typedef void (*dk_masked_fn)(int kind, const void *x, void *out, size_t len, uint64_t e0, const dk_rng *r, float sf,
                             double sd);
DK_HIDDEN void dk_masked_chunk_base(int kind, const void *x, void *out, size_t len, uint64_t e0, const dk_rng *r,
                                    float sf, double sd);
#if defined(__x86_64__)
DK_HIDDEN void dk_masked_chunk_avx2(int kind, const void *x, void *out, size_t len, uint64_t e0, const dk_rng *r,
                                    float sf, double sd);
DK_HIDDEN void dk_masked_chunk_avx512(int kind, const void *x, void *out, size_t len, uint64_t e0, const dk_rng *r,
                                      float sf, double sd);
#endif

/* Uniform samples of elements e0 .. e0 + len - 1 into out (float or double per dtype). */
typedef void (*dk_uniform_fn)(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
DK_HIDDEN void dk_uniform_chunk_base(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
#if defined(__x86_64__)
DK_HIDDEN void dk_uniform_chunk_avx2(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
DK_HIDDEN void dk_uniform_chunk_avx512(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
#endif

#endif
