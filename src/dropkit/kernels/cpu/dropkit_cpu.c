/*
 * dropkit compiled CPU kernel, the driver: entry points, threads, dispatch to the
 * per-target bodies. The ABI is in dropkit_cpu.h; the work itself (Philox words, keep
 * mask, dropout_mul per dtype, uniform samples) is written once in dk_body.h and compiled
 * per instruction set by dk_target_{base,avx2,avx512}.c.
 *
 * Contract, in one paragraph (src/dropkit/rng.py): element e (global index = offset + j)
 * uses Philox4x32-10 at counter (lo32(e/8), hi32(e/8), lo32(stream), hi32(stream)), key
 * (lo32(seed), hi32(seed)); the four output words give eight 16-bit lanes (word k -> lanes
 * 2k = low half, 2k+1 = high half); e takes lane e % 8 and is kept iff lane >= thr.
 * Uniform samples use 32-bit lanes: element e takes word e % 4 of block e / 4. Normal samples
 * (contract v2) use the same blocks: lane l = e % 4 takes the word pair (w[2(l/2)], w[2(l/2)+1])
 * and Box-Muller in exactly rounded float32 arithmetic (dk_box_muller in dk_internal.h).
 *
 * Layout of the work: a call's elements are split into contiguous ranges of whole
 * 64-element units, one per thread; each range is walked in chunks of DK_CHUNK elements
 * whose Philox words stay in L1. Every element depends only on its global index, so the
 * result does not depend on the thread count or the chunking.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define DK_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define DK_NEON 1
#endif

#include "dk_internal.h"

/* Below this many elements a call does not wait for sleeping workers to wake (measured:
 * a wake-up costs ~50 us on a 2-vCPU VM, about the time one thread needs for 2^18 elements). */
#define DK_MAXTHREADS 256
#define DK_COLD_MIN (1u << 19)

/* ------------------------------------------------------------------------- */
/* Driver: chunks, threads, dispatch                                          */
/* ------------------------------------------------------------------------- */
enum { DK_OP_MASKED = 0, DK_OP_UNIFORM = 1, DK_OP_GAUSS = 2 };

typedef struct {
    int op; /* DK_OP_MASKED (keep mask / dropout_mul), DK_OP_UNIFORM or DK_OP_GAUSS (normal / gaussian_mul) */
    int kind, isa;
    int xs; /* DK_OP_GAUSS: x stride in elements, 1 or 0 (one value, broadcast) */
    const char *x;
    char *out;
    size_t esz;
    uint64_t offset;
    float sf;
    double sd;
    dk_rng r;
} dk_job;

/* The per-target bodies (dk_body.h) for an ISA the caller has checked is supported. */
static dk_masked_fn dk_masked_for(int isa) {
#if defined(__x86_64__)
    if (isa == DK_ISA_AVX512) return dk_masked_chunk_avx512;
    if (isa == DK_ISA_AVX2) return dk_masked_chunk_avx2;
#endif
    (void)isa; /* scalar, and NEON (AArch64's baseline: the base build is NEON code) */
    return dk_masked_chunk_base;
}

static dk_uniform_fn dk_uniform_for(int isa) {
#if defined(__x86_64__)
    if (isa == DK_ISA_AVX512) return dk_uniform_chunk_avx512;
    if (isa == DK_ISA_AVX2) return dk_uniform_chunk_avx2;
#endif
    (void)isa;
    return dk_uniform_chunk_base;
}

static dk_gauss_fn dk_gauss_for(int isa) {
#if defined(__x86_64__)
    if (isa == DK_ISA_AVX512) return dk_gauss_chunk_avx512;
    if (isa == DK_ISA_AVX2) return dk_gauss_chunk_avx2;
#endif
    (void)isa;
    return dk_gauss_chunk_base;
}

/* Elements j0 .. j1 - 1 of a call, chunk by chunk (a chunk's Philox words stay in L1). Every
 * element depends only on its global index, so the result does not depend on the split. */
static void run_range(const dk_job *J, size_t j0, size_t j1) {
    if (J->op == DK_OP_UNIFORM) {
        dk_uniform_fn fn = dk_uniform_for(J->isa);
        for (size_t j = j0; j < j1; j += DK_CHUNK) {
            size_t len = j1 - j < DK_CHUNK ? j1 - j : DK_CHUNK;
            fn(J->kind, J->out + j * J->esz, len, J->offset + j, &J->r);
        }
        return;
    }
    if (J->op == DK_OP_GAUSS) {
        dk_gauss_fn fn = dk_gauss_for(J->isa);
        for (size_t j = j0; j < j1; j += DK_CHUNK) {
            size_t len = j1 - j < DK_CHUNK ? j1 - j : DK_CHUNK;
            fn(J->kind, J->x ? J->x + j * J->esz * (size_t)J->xs : NULL, J->xs, J->out + j * J->esz, len, J->offset + j,
               &J->r, J->sf, J->sd);
        }
        return;
    }
    dk_masked_fn fn = dk_masked_for(J->isa);
    for (size_t j = j0; j < j1; j += DK_CHUNK) {
        size_t len = j1 - j < DK_CHUNK ? j1 - j : DK_CHUNK;
        fn(J->kind, J->x ? J->x + j * J->esz : NULL, J->out + j * J->esz, len, J->offset + j, &J->r, J->sf, J->sd);
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

static int dk_isa_ok(int isa) { return isa >= 0 && isa < DK_ISA_COUNT && (dk_cpu_features() & (1 << isa)); }

/* Element sizes of the float kinds DK_F32, DK_F64, DK_F16, DK_BF16. */
static const size_t dk_esz[4] = {4, 8, 2, 2};

/* A large output that the call writes in full and that is not its input (a fresh tensor, as a rule): ask the
 * kernel for transparent huge pages on its 2 MiB-aligned interior before the first write. Without it, each 4 KiB
 * page of a freshly mapped output faults on first touch (on a KVM guest, 16 MiB = 4096 faults, about 4 ms,
 * twice the kernel's own time on one thread). Advice only: where THP is off ("never"), the call is a no-op. */
static void dk_advise_huge_pages(const void *x, void *out, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    if (out == x || bytes < 2 * huge) return;
    uintptr_t a = ((uintptr_t)out + huge - 1) & ~(huge - 1), e = ((uintptr_t)out + bytes) & ~(huge - 1);
    if (e > a) (void)madvise((void *)a, (size_t)(e - a), MADV_HUGEPAGE);
#else
    (void)x, (void)out, (void)bytes;
#endif
}

/* A job of every entry point: op and kind on isa, esz-byte elements written to out from element offset
 * on, Philox keyed by (seed, stream) with mask threshold thr (0 where nothing is masked); no input. */
static dk_job dk_job_init(int op, int kind, int isa, void *out, size_t esz, uint64_t offset, uint32_t thr, uint64_t seed,
                          uint64_t stream) {
    dk_job J;
    memset(&J, 0, sizeof J);
    J.op = op;
    J.kind = kind;
    J.isa = isa;
    J.out = (char *)out;
    J.esz = esz;
    J.offset = offset;
    dk_rng_init(&J.r, thr, seed, stream);
    return J;
}

/* out[j] = 1 if element offset + j is kept, else 0, for j < n. */
DK_API int dk_keep_mask(uint8_t *out, int64_t n, uint32_t thr, uint64_t seed, uint64_t stream, uint64_t offset,
                        int isa, int nthreads) {
    if (n < 0 || thr > 65536) return -1;
    if (!dk_isa_ok(isa)) return -4;
    dk_job J = dk_job_init(DK_OP_MASKED, DK_MASK, isa, out, 1, offset, thr, seed, stream);
    return dk_run(&J, (size_t)n, nthreads);
}

DK_API int dk_dropout_mul(int dtype, const void *x, void *out, int64_t n, uint32_t thr, double scale, uint64_t seed,
                          uint64_t stream, uint64_t offset, int isa, int nthreads) {
    if (n < 0 || dtype < 0 || dtype > 3 || thr > 65536) return -1;
    if (!dk_isa_ok(isa)) return -4;
    dk_advise_huge_pages(x, out, (size_t)n * dk_esz[dtype]);
    dk_job J = dk_job_init(DK_OP_MASKED, dtype, isa, out, dk_esz[dtype], offset, thr, seed, stream);
    J.x = (const char *)x;
    J.sf = (float)scale;
    J.sd = scale;
    return dk_run(&J, (size_t)n, nthreads);
}

DK_API int dk_uniform(int dtype, void *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, int isa,
                      int nthreads) {
    if (n < 0 || (dtype != DK_F32 && dtype != DK_F64)) return -1;
    if (!dk_isa_ok(isa)) return -4;
    dk_job J = dk_job_init(DK_OP_UNIFORM, dtype, isa, out, dk_esz[dtype], offset, 0, seed, stream);
    return dk_run(&J, (size_t)n, nthreads);
}

DK_API int dk_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, int isa, int nthreads) {
    if (n < 0) return -1;
    if (!dk_isa_ok(isa)) return -4;
    dk_job J = dk_job_init(DK_OP_GAUSS, DK_KIND_NORMAL, isa, out, 4, offset, 0, seed, stream);
    return dk_run(&J, (size_t)n, nthreads);
}

DK_API int dk_gaussian_mul(int dtype, const void *x, int64_t x_stride, void *out, int64_t n, double sigma, uint64_t seed,
                           uint64_t stream, uint64_t offset, int isa, int nthreads) {
    if (n < 0 || dtype < 0 || dtype > 3 || (x_stride != 0 && x_stride != 1)) return -1;
    if (!dk_isa_ok(isa)) return -4;
    dk_advise_huge_pages(x, out, (size_t)n * dk_esz[dtype]);
    dk_job J = dk_job_init(DK_OP_GAUSS, dtype, isa, out, dk_esz[dtype], offset, 0, seed, stream);
    J.x = (const char *)x;
    J.xs = (int)x_stride;
    J.sf = (float)sigma;
    J.sd = sigma;
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
