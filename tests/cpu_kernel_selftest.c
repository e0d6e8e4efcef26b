/* Cross-ISA self test of src/dropkit/kernels/cpu/dropkit_cpu.c: every SIMD level this CPU
 * supports (AVX2, AVX-512, NEON) must equal the portable scalar path bit for bit, on random
 * bit patterns (NaN payloads, subnormals, infinities), sizes, offsets, thresholds, alignments
 * and 1-3 threads. Run by tests/test_kernels_dropout.py; by hand:
 *   K=src/dropkit/kernels/cpu; cc -O2 -std=gnu11 -pthread -ffp-contract=off -I $K tests/cpu_kernel_selftest.c \
 *      $K/mask_fold.c $K/dk_target_*.c -o selftest && ./selftest
 * or for AArch64 NEON on an x86 host (apt install gcc-aarch64-linux-gnu qemu-user): the same with
 *   aarch64-linux-gnu-gcc ... -static, run under qemu-aarch64.
 * dk_uniform is checked the same way (every ISA == the scalar ISA, float32 and float64), and so
 * are dk_normal and dk_gaussian_mul (every dtype, x contiguous or one value broadcast). */
#include "dropkit_cpu.c"
#include <stdio.h>
#include <stdlib.h>
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
int main(void) {
    int feats = dk_cpu_features(), fails = 0, checks = 0;
    printf("features 0x%x\n", feats);
    static const size_t esz[5] = {4, 8, 2, 2, 1};
    size_t sizes[] = {0, 1, 7, 8, 9, 15, 17, 31, 33, 63, 65, 127, 1000, 4095, 4097, 9000, 70001};
    for (int isa = 1; isa <= 3; isa++) {
        if (!(feats & (1 << isa))) continue;
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t n = sizes[si];
            for (int kind = 0; kind < 5; kind++) {
                for (int rep = 0; rep < 3; rep++) {
                    uint64_t seed = rnd(), stream = rnd() >> (rep * 20), offset = rnd() >> (20 + rep * 15);
                    uint32_t thr = rep == 0 ? 32768 : (uint32_t)(rnd() % 65537);
                    size_t lead = rnd() % 8;
                    char *x = malloc(n * 8 + 64), *a = malloc(n * 8 + 64), *b = malloc(n * 8 + 64);
                    for (size_t j = 0; j < n * 8 + 64; j++) x[j] = (char)rnd();
                    memset(a, 0, n * 8 + 64); memset(b, 0, n * 8 + 64);
                    int nt = 1 + (int)(rnd() % 3);
                    if (kind == DK_MASK) {
                        dk_keep_mask((uint8_t *)a + lead, (int64_t)n, thr, seed, stream, offset, 0, 1);
                        dk_keep_mask((uint8_t *)b + lead, (int64_t)n, thr, seed, stream, offset, isa, nt);
                    } else {
                        dk_dropout_mul(kind, x + lead * esz[kind], a + lead * esz[kind], (int64_t)n, thr, 1.7, seed, stream, offset, 0, 1);
                        dk_dropout_mul(kind, x + lead * esz[kind], b + lead * esz[kind], (int64_t)n, thr, 1.7, seed, stream, offset, isa, nt);
                    }
                    checks++;
                    if (memcmp(a, b, n * 8 + 64)) {
                        fails++;
                        if (fails < 10) printf("FAIL isa=%d kind=%d n=%zu thr=%u off=%llu\n", isa, kind, n, thr, (unsigned long long)offset);
                    }
                    free(x); free(a); free(b);
                }
            }
        }
    }
    for (int isa = 1; isa <= 3; isa++) {
        if (!(feats & (1 << isa))) continue;
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t n = sizes[si];
            for (int dtype = 0; dtype < 2; dtype++) {
                uint64_t seed = rnd(), stream = rnd(), offset = rnd() >> (20 + si);
                size_t lead = rnd() % 8;
                char *a = malloc(n * 8 + 64), *b = malloc(n * 8 + 64);
                memset(a, 0, n * 8 + 64); memset(b, 0, n * 8 + 64);
                dk_uniform(dtype, a + lead * esz[dtype], (int64_t)n, seed, stream, offset, 0, 1);
                dk_uniform(dtype, b + lead * esz[dtype], (int64_t)n, seed, stream, offset, isa, 1 + (int)(rnd() % 3));
                checks++;
                if (memcmp(a, b, n * 8 + 64)) {
                    fails++;
                    if (fails < 10) printf("FAIL uniform isa=%d dtype=%d n=%zu\n", isa, dtype, n);
                }
                free(a); free(b);
            }
        }
    }
    for (int isa = 1; isa <= 3; isa++) {
        if (!(feats & (1 << isa))) continue;
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t n = sizes[si];
            for (int kind = -1; kind < 4; kind++) { /* -1: dk_normal */
                for (int xs = 0; xs < 2; xs++) {
                    if (kind < 0 && xs == 0) continue;
                    uint64_t seed = rnd(), stream = rnd(), offset = rnd() >> (20 + si);
                    size_t lead = rnd() % 8, w = kind < 0 ? 4 : esz[kind];
                    double sigma = (double)(rnd() % 100000) / 25000.0;
                    char *x = malloc(n * 8 + 64), *a = malloc(n * 8 + 64), *b = malloc(n * 8 + 64);
                    for (size_t j = 0; j < n * 8 + 64; j++) x[j] = (char)rnd();
                    memset(a, 0, n * 8 + 64); memset(b, 0, n * 8 + 64);
                    int nt = 1 + (int)(rnd() % 3);
                    if (kind < 0) {
                        dk_normal((float *)(a + lead * 4), (int64_t)n, seed, stream, offset, 0, 1);
                        dk_normal((float *)(b + lead * 4), (int64_t)n, seed, stream, offset, isa, nt);
                    } else {
                        dk_gaussian_mul(kind, x + lead * w, xs, a + lead * w, (int64_t)n, sigma, seed, stream, offset, 0, 1);
                        dk_gaussian_mul(kind, x + lead * w, xs, b + lead * w, (int64_t)n, sigma, seed, stream, offset, isa, nt);
                    }
                    checks++;
                    if (memcmp(a, b, n * 8 + 64)) {
                        fails++;
                        if (fails < 10) printf("FAIL gauss isa=%d kind=%d xs=%d n=%zu\n", isa, kind, xs, n);
                    }
                    free(x); free(a); free(b);
                }
            }
        }
    }
    printf("%d checks, %d failures\n", checks, fails);
    return fails != 0;
}
