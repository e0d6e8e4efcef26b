/* dk_body.h for AVX2 (+F16C, FMA not used: -ffp-contract=off). x86-64 only. */
#if defined(__x86_64__)
#pragma GCC target("avx2,f16c")
#define DK_SUFFIX avx2
#define DK_VB 4
#include "dk_body.h"
#endif
