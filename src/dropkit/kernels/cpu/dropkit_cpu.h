/*
 * dropkit CPU kernel: the ABI shared by the C sources and read by the Python loader
 * (src/dropkit/kernels/cpu/__init__.py reads the codes below from the library through
 * dk_abi_constant(), never from a copy).
 *
 * Plain C on raw pointers, no dependence on torch's C++ ABI; loaded with ctypes.
 */
#ifndef DROPKIT_CPU_H
#define DROPKIT_CPU_H

#include <stdint.h>

#define DK_API __attribute__((visibility("default")))

/* ABI version: bumped whenever a prototype or a code below changes meaning. */
#define DK_ABI_VERSION 3

/* Instruction sets. They are not ordered: a CPU supports a set of them (dk_cpu_features()
 * has bit 1 << code set for each), and a call runs exactly the one it is given. */
enum { DK_ISA_SCALAR = 0, DK_ISA_AVX2 = 1, DK_ISA_AVX512 = 2, DK_ISA_NEON = 3, DK_ISA_COUNT = 4 };

/* Element types (dtype codes) and the keep-mask "type" (bytes 0/1). */
enum { DK_F32 = 0, DK_F64 = 1, DK_F16 = 2, DK_BF16 = 3, DK_MASK = 4 };

/* A named constant of this ABI (e.g. "DK_F32", "DK_ISA_AVX512", "DK_ABI_VERSION"); -1 if unknown. */
DK_API int64_t dk_abi_constant(const char *name);

/* The source hash the library was built from (kernels/cpu/_sources.py: source_hash). */
DK_API const char *dk_source_hash(void);

/* Bit (1 << isa) set for every ISA this CPU (and OS) can run. */
DK_API int dk_cpu_features(void);

/* out[j] = 1 if element offset + j is kept, else 0, for j < n. Returns 0, or -1 on bad
 * arguments, -4 when isa is not supported by this CPU. */
DK_API int dk_keep_mask(uint8_t *out, int64_t n, uint32_t thr, uint64_t seed, uint64_t stream, uint64_t offset,
                        int isa, int nthreads);

/* out = x * (keep ? scale : 0) elementwise for dtype DK_F32/F64/F16/BF16. The product is
 * taken in float32 (float64 for F64), scale rounded to float32 first, and rounded once to
 * the dtype. out may equal x. An out of 4 MiB or more that is not x gets madvise(MADV_HUGEPAGE) on its
 * 2 MiB-aligned interior before the first write (Linux; a fresh output then faults in 2 MiB pages, not 4 KiB
 * ones). Returns as dk_keep_mask. */
DK_API int dk_dropout_mul(int dtype, const void *x, void *out, int64_t n, uint32_t thr, double scale, uint64_t seed,
                          uint64_t stream, uint64_t offset, int isa, int nthreads);

/* out[j] = (w + 0.5) * 2**-32 computed in float64, then rounded to dtype (DK_F32 or DK_F64),
 * w = the 32-bit Philox word of element offset + j (element e: word e % 4 of block e / 4).
 * Returns as dk_keep_mask. */
DK_API int dk_uniform(int dtype, void *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, int isa,
                      int nthreads);

/* out[j] = the float32 standard normal of element offset + j (normal contract v2, docs/rng.md:
 * element e uses block e / 4, lane e % 4). Returns as dk_keep_mask. */
DK_API int dk_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, int isa, int nthreads);

/* out = x * (1 + sigma * z) elementwise, z the normals of dk_normal, for dtype DK_F32/F64/F16/BF16:
 * in float32 with sigma rounded to float32 once (float64 for F64: x * (1 + sigma * (double)z)),
 * rounded once to the dtype (16-bit NaN rule). x_stride 1: x has n elements; 0: x is one value,
 * broadcast. out may equal x; huge-page advice as dk_dropout_mul. Returns as dk_keep_mask (-1 also for an
 * x_stride other than 0, 1). */
DK_API int dk_gaussian_mul(int dtype, const void *x, int64_t x_stride, void *out, int64_t n, double sigma, uint64_t seed,
                           uint64_t stream, uint64_t offset, int isa, int nthreads);

/* See mask_fold.c. */
DK_API int dk_mask_fold_f32(const float *A, const float *X, int64_t sXb, const float *mask, int64_t smt, int64_t smb,
                            float *out, int64_t sot, int64_t sob, int64_t T, int64_t B, int64_t D, int64_t O, int64_t K,
                            int64_t R, int64_t P, float scale, const float *bias, int relu, int isa, int nthreads);

/* How long an idle worker of the own thread pool spins before it sleeps (0: sleep at
 * once); returns the old value. */
DK_API long long dk_set_spin_us(long long us);

#endif
