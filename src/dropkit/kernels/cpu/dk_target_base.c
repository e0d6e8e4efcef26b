/* dk_body.h for the baseline target (x86-64: SSE2; AArch64: NEON; other: scalar code). */
#define DK_SUFFIX base
#define DK_VB 2
#include "dk_body.h"
