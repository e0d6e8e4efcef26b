/*
 * Monte-Carlo dropout fold (used by dropkit.mc through src/dropkit/mc/_fold.py): T samples
 * of a binary dropout mask on the input of a linear map, without running the map T times.
 *
 *   out[t][b][p*O + o] = act(scale * max_{r<R} sum_{d<D} [mask[t][b][d] != 0] * U[b][d][r][p*O + o] + bias[o])
 *   U[b][d][r][p*O + o] = sum_{k<K} A[d][k][o] * X[b][d][k][r][p]
 *
 * (bias optional, act = identity or ReLU: the layer's bias and a ReLU that follows it, fused).
 *
 * A Conv2d with a channel mask on its input (what dropkit.mc folds): D = input channels,
 * O = output channels, K = kernel taps, X = the unfolded input (im2col), P = output
 * positions (out is channels-last); R > 1 fuses a non-overlapping max-pool whose window
 * offsets are r (X is laid out window-offset-major by the caller). The same math covers a
 * Linear layer after element-wise dropout (K = R = P = 1, A[d][0][o] = W[o][d],
 * X[b][d] = z[b][d]); dropkit.mc does not fold it, a matmul being as fast (measured).
 *
 * Method of the Four Russians: the D mask units are cut into groups of 4. For one example
 * and one tile of outputs, the 16 subset sums of each group's 4 rows U[b][d] are tabulated
 * (each subset = a smaller subset + one row: 15 vector adds per group), then one sample costs
 * one table row per group: D/4 vector adds per output instead of D multiply-adds. A tile's
 * table stays under DK_FOLD_TABLE bytes so that it is read from L2.
 *
 * Each output element is summed in the same order (group 0, 1, ...; a subset's rows added
 * highest unit first) for every ISA, tile size and thread count: results are reproducible
 * bit for bit, and differ from a dense matmul only by rounding.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#include "dropkit_cpu.h"
#define DK_FOLD_TABLE (256 * 1024)

int dk_parallel_tasks(void (*fn)(void *, int64_t), void *ctx, int64_t n, int nthreads);

typedef struct {
    const float *A, *X, *mask;
    float *out;
    int64_t sXb, smt, smb, sot, sob;
    int64_t T, D, O, K, R, P, G, ptile, otile, np, no;
    float scale;
    const float *bias; /* O values added after scaling, or NULL */
    int relu;          /* then max(0, .) */
    uint8_t *idx; /* [b][t][g]: the subset of group g kept by sample t */
    _Atomic int err;
} dk_fold_job;

/* Phase 1, one task per example: subset indices; a mask value other than 0 and scale is an error. */
static inline __attribute__((always_inline)) void fold_index(dk_fold_job *J, int64_t b) {
    const int64_t D = J->D, G = J->G;
    const float sc = J->scale;
    int bad = 0;
    for (int64_t t = 0; t < J->T; t++) { /* branch-free: mask bits are coin flips */
        const float *m = J->mask + t * J->smt + b * J->smb;
        uint8_t *it = J->idx + (b * J->T + t) * G;
        int64_t g = 0;
        for (; 4 * g + 3 < D; g++) {
            const float *q = m + 4 * g;
            const int n0 = q[0] != 0.0f, n1 = q[1] != 0.0f, n2 = q[2] != 0.0f, n3 = q[3] != 0.0f;
            it[g] = (uint8_t)(n0 | n1 << 1 | n2 << 2 | n3 << 3);
            bad |= (n0 & (q[0] != sc)) | (n1 & (q[1] != sc)) | (n2 & (q[2] != sc)) | (n3 & (q[3] != sc));
        }
        if (g < G) {
            unsigned nib = 0;
            for (int64_t d = 4 * g; d < D; d++) {
                const int nz = m[d] != 0.0f;
                nib |= (unsigned)nz << (d & 3);
                bad |= nz & (m[d] != sc);
            }
            it[g] = (uint8_t)nib;
        }
    }
    if (bad) atomic_store(&J->err, -2);
}

/* 16 floats; GCC/Clang lower it to one zmm, two ymm or four xmm registers per target.
 * aligned(4): loads and stores may be unaligned. */
typedef float dk_v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t dk_i16 __attribute__((vector_size(64), aligned(4)));
#define LD(p) (*(const dk_v16 *)(p))
#define ST(p, v) (*(dk_v16 *)(p) = (v))

/* max(a, b) as a compare and a blend (a macro: a vector-returning function outside a
 * target region would change the ABI). NaN never reaches it: the caller checks that the
 * input is finite. */
#define vmax(a, b)                                                                      \
    ({                                                                                  \
        dk_v16 a_ = (a), b_ = (b);                                                      \
        dk_i16 m_ = a_ > b_;                                                            \
        (dk_v16)(((dk_i16)a_ & m_) | ((dk_i16)b_ & ~m_));                               \
    })

/* Row u[(pp*R + r)*on + oo] = U[b][d][r][(p0 + pp)*O + o0 + oo] for pp < pn, oo < on: a
 * table row keeps the R window offsets of one output position next to each other, so
 * that the sample loop reads it front to back (the hardware prefetcher follows). */
static inline __attribute__((always_inline)) void fold_row(const dk_fold_job *J, const float *X, int64_t d, int64_t p0,
                                                           int64_t pn, int64_t o0, int64_t on, float *u) {
    const int64_t O = J->O, K = J->K, R = J->R, P = J->P;
    const float *Ad = J->A + d * K * O + o0;
    const float *Xd = X + d * K * R * P + p0;
    for (int64_t pp = 0; pp < pn; pp++)
        for (int64_t r = 0; r < R; r++) {
            float *up = u + (pp * R + r) * on;
            const float *xp = Xd + r * P + pp; /* X[d][k][r][p] = xp[k * R * P] */
            const float x0 = xp[0];
            int64_t o = 0;
            for (; o + 16 <= on; o += 16) {
                dk_v16 acc = LD(Ad + o) * x0;
                for (int64_t k = 1; k < K; k++) acc += LD(Ad + k * O + o) * xp[k * R * P];
                ST(up + o, acc);
            }
            for (; o < on; o++) {
                float acc = Ad[o] * x0;
                for (int64_t k = 1; k < K; k++) acc += Ad[k * O + o] * xp[k * R * P];
                up[o] = acc;
            }
        }
}

/* One table per thread, kept between calls (a fresh malloc of this size is an mmap and
 * page faults per task). */
static __thread float *dk_tab;
static __thread size_t dk_tab_cap;

static float *fold_buffer(size_t bytes) {
    if (bytes > dk_tab_cap) {
        free(dk_tab);
        dk_tab = (float *)malloc(bytes);
        dk_tab_cap = dk_tab ? bytes : 0;
    }
    return dk_tab;
}

/* Sum of the selected table rows at offset off: even groups and odd groups in two chains,
 * added at the end. Every path below uses this association, so a value does not depend
 * on the vector width or on where the tile boundaries fall. */
#define DK_SUM(T_, LOAD, rows, G, off, res)                                                      \
    do {                                                                                         \
        T_ e_ = LOAD((rows)[0] + (off));                                                         \
        if ((G) > 1) {                                                                           \
            T_ o_ = LOAD((rows)[1] + (off));                                                     \
            int64_t g_ = 2;                                                                      \
            for (; g_ + 1 < (G); g_ += 2) e_ += LOAD((rows)[g_] + (off)), o_ += LOAD((rows)[g_ + 1] + (off)); \
            if (g_ < (G)) e_ += LOAD((rows)[g_] + (off));                                        \
            e_ += o_;                                                                            \
        }                                                                                        \
        res = e_;                                                                                \
    } while (0)
#define DK_LDS(p) (*(p))

/* Epilogue of 16 outputs at channel o: v * scale (+ bias[o .. o+15]) (then ReLU). */
#define DK_EPI16(v, o)                                                                   \
    ({                                                                                   \
        dk_v16 y_ = (v) * sc;                                                            \
        if (bias) y_ = y_ + LD(bias + (o));                                              \
        if (relu) y_ = vmax(y_, zero);                                                   \
        y_;                                                                              \
    })

/* Phase 2, one task per (example, tile of output positions, tile of output channels): the
 * table, then every sample. (Cutting the groups into chunks whose tables fit in L1, each
 * chunk adding into the output, was measured slower: the table writes dominate.) */
static inline __attribute__((always_inline)) void fold_tile(dk_fold_job *J, int64_t task) {
    const int64_t G = J->G, R = J->R, D = J->D, O = J->O;
    const int64_t b = task / (J->np * J->no), rest = task % (J->np * J->no);
    const int64_t p0 = rest / J->no * J->ptile, o0 = rest % J->no * J->otile;
    const int64_t pn = J->P - p0 < J->ptile ? J->P - p0 : J->ptile;
    const int64_t on = O - o0 < J->otile ? O - o0 : J->otile;
    const int64_t RS = pn * R * on;
    /* a group's 16 rows, padded so that groups do not sit a power of two apart (which would
     * map every group's rows to the same few cache sets) */
    const int64_t GS = 16 * RS + 16;
    const float *X = J->X + b * J->sXb;
    float *tab = fold_buffer((size_t)(G * GS) * sizeof(float) + (size_t)G * sizeof(float *));
    if (tab == NULL) {
        atomic_store(&J->err, -3);
        return;
    }
    const float **rows = (const float **)(tab + G * GS);
    for (int64_t g = 0; g < G; g++) {
        float *tg = tab + g * GS;
        memset(tg, 0, (size_t)RS * sizeof(float));
        for (int k = 0; k < 4; k++) {
            float *u = tg + ((int64_t)1 << k) * RS;
            if (4 * g + k < D)
                fold_row(J, X, 4 * g + k, p0, pn, o0, on, u);
            else
                memset(u, 0, (size_t)RS * sizeof(float));
        }
        for (int s = 3; s < 16; s++) {
            if ((s & (s - 1)) == 0) continue;
            float *ts = tg + s * RS;
            const float *ta = tg + (s & (s - 1)) * RS, *tb = tg + (s & -s) * RS;
            int64_t q = 0;
            for (; q + 16 <= RS; q += 16) ST(ts + q, LD(ta + q) + LD(tb + q));
            for (; q < RS; q++) ts[q] = ta[q] + tb[q];
        }
    }
    const float sc = J->scale, *bias = J->bias;
    const int relu = J->relu;
    const dk_v16 zero = {0};
    for (int64_t t = 0; t < J->T; t++) {
        const uint8_t *it = J->idx + (b * J->T + t) * G;
        for (int64_t g = 0; g < G; g++) rows[g] = tab + g * GS + it[g] * RS;
        float *dst = J->out + t * J->sot + b * J->sob;
        for (int64_t pp = 0; pp < pn; pp++) {
            float *dp = dst + (p0 + pp) * O + o0;
            const int64_t base = pp * R * on;
            int64_t ob = 0;
            for (; ob + 64 <= on; ob += 64) {
                dk_v16 b0, b1, b2, b3, e0, e1, e2, e3;
                DK_SUM(dk_v16, LD, rows, G, base + ob, b0);
                DK_SUM(dk_v16, LD, rows, G, base + ob + 16, b1);
                DK_SUM(dk_v16, LD, rows, G, base + ob + 32, b2);
                DK_SUM(dk_v16, LD, rows, G, base + ob + 48, b3);
                for (int64_t r = 1; r < R; r++) {
                    const int64_t off = base + r * on + ob;
                    DK_SUM(dk_v16, LD, rows, G, off, e0);
                    DK_SUM(dk_v16, LD, rows, G, off + 16, e1);
                    DK_SUM(dk_v16, LD, rows, G, off + 32, e2);
                    DK_SUM(dk_v16, LD, rows, G, off + 48, e3);
                    b0 = vmax(e0, b0), b1 = vmax(e1, b1), b2 = vmax(e2, b2), b3 = vmax(e3, b3);
                }
                ST(dp + ob, DK_EPI16(b0, o0 + ob));
                ST(dp + ob + 16, DK_EPI16(b1, o0 + ob + 16));
                ST(dp + ob + 32, DK_EPI16(b2, o0 + ob + 32));
                ST(dp + ob + 48, DK_EPI16(b3, o0 + ob + 48));
            }
            for (; ob + 16 <= on; ob += 16) {
                dk_v16 b0, e0;
                DK_SUM(dk_v16, LD, rows, G, base + ob, b0);
                for (int64_t r = 1; r < R; r++) {
                    DK_SUM(dk_v16, LD, rows, G, base + r * on + ob, e0);
                    b0 = vmax(e0, b0);
                }
                ST(dp + ob, DK_EPI16(b0, o0 + ob));
            }
            for (; ob < on; ob++) {
                float b0, e0;
                DK_SUM(float, DK_LDS, rows, G, base + ob, b0);
                for (int64_t r = 1; r < R; r++) {
                    DK_SUM(float, DK_LDS, rows, G, base + r * on + ob, e0);
                    b0 = e0 > b0 ? e0 : b0;
                }
                float y = sc * b0;
                if (bias) y = y + bias[o0 + ob];
                if (relu) y = y > 0.0f ? y : 0.0f;
                dp[ob] = y;
            }
        }
    }
}

static void index_scalar(void *c, int64_t i) { fold_index((dk_fold_job *)c, i); }
static void tile_scalar(void *c, int64_t i) { fold_tile((dk_fold_job *)c, i); }
#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx2"))) static void index_avx2(void *c, int64_t i) { fold_index((dk_fold_job *)c, i); }
__attribute__((target("avx2"))) static void tile_avx2(void *c, int64_t i) { fold_tile((dk_fold_job *)c, i); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void index_avx512(void *c, int64_t i) {
    fold_index((dk_fold_job *)c, i);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void tile_avx512(void *c, int64_t i) {
    fold_tile((dk_fold_job *)c, i);
}
#endif


/* See the top of this file. Strides are in floats; X, mask and out rows are contiguous.
 * Returns 0, -1 (bad sizes), -2 (a mask value is neither 0 nor scale; out is then
 * unspecified) or -3 (out of memory). */
DK_API int dk_mask_fold_f32(const float *A, const float *X, int64_t sXb, const float *mask, int64_t smt, int64_t smb,
                            float *out, int64_t sot, int64_t sob, int64_t T, int64_t B, int64_t D, int64_t O, int64_t K,
                            int64_t R, int64_t P, float scale, const float *bias, int relu, int isa,
                            int nthreads) {
    if (T < 0 || B < 0 || D < 1 || O < 1 || K < 1 || R < 1 || P < 1) return -1;
    if (T == 0 || B == 0) return 0;
    dk_fold_job J;
    memset(&J, 0, sizeof J);
    J.A = A;
    J.X = X;
    J.mask = mask;
    J.out = out;
    J.sXb = sXb;
    J.smt = smt;
    J.smb = smb;
    J.sot = sot;
    J.sob = sob;
    J.T = T;
    J.D = D;
    J.O = O;
    J.K = K;
    J.R = R;
    J.P = P;
    J.G = (D + 3) / 4;
    J.scale = scale;
    J.bias = bias;
    J.relu = relu;
    /* tiles: tables up to DK_FOLD_TABLE (L2-resident); all output channels when they fit */
    const int64_t budget = DK_FOLD_TABLE;
    const int64_t row_bytes = J.G * 16 * R * (int64_t)sizeof(float); /* table bytes per (position, channel) */
    J.otile = O;
    if (row_bytes * O > budget) {
        J.otile = budget / row_bytes;
        J.otile = J.otile >= 64 ? J.otile / 64 * 64 : J.otile >= 16 ? J.otile / 16 * 16 : 16;
        if (J.otile > O) J.otile = O;
    }
    J.ptile = budget / (row_bytes * J.otile);
    if (J.ptile < 1) J.ptile = 1;
    if (J.ptile > P) J.ptile = P;
    J.np = (P + J.ptile - 1) / J.ptile;
    J.no = (O + J.otile - 1) / J.otile;
    atomic_store(&J.err, 0);
    J.idx = (uint8_t *)malloc((size_t)(B * T * J.G));
    if (J.idx == NULL) return -3;
    void (*index_fn)(void *, int64_t) = index_scalar, (*tile_fn)(void *, int64_t) = tile_scalar;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa < 0 || isa >= DK_ISA_COUNT || !(dk_cpu_features() & (1 << isa))) {
        free(J.idx);
        return -4;
    }
    if (isa == DK_ISA_AVX2) {
        index_fn = index_avx2;
        tile_fn = tile_avx2;
    } else if (isa == DK_ISA_AVX512) {
        index_fn = index_avx512;
        tile_fn = tile_avx512;
    }
#else
    (void)isa;
#endif
    dk_parallel_tasks(index_fn, &J, B, nthreads);
    if (atomic_load(&J.err) == 0) dk_parallel_tasks(tile_fn, &J, B * J.np * J.no, nthreads);
    free(J.idx);
    return atomic_load(&J.err);
}
