/* dk_body.h for AVX-512 (F + BW + VL + DQ). x86-64 only. */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")
#define DK_SUFFIX avx512
#define DK_VB 8
#include "dk_body.h"
#endif
