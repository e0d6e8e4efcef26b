/* Internal declarations shared by the driver (dropkit_cpu.c) and the per-target bodies
 * (dk_target_*.c, which include dk_body.h). Not part of the ABI. */
#ifndef DK_INTERNAL_H
#define DK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dropkit_cpu.h"

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

/* Uniform samples of elements e0 .. e0 + len - 1 into out (float or double per dtype). */
typedef void (*dk_uniform_fn)(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
DK_HIDDEN void dk_uniform_chunk_base(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
#if defined(__x86_64__)
DK_HIDDEN void dk_uniform_chunk_avx2(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
DK_HIDDEN void dk_uniform_chunk_avx512(int dtype, void *out, size_t len, uint64_t e0, const dk_rng *r);
#endif

#endif
