// SIMD block kernels for any CPU: 128-bit vectors (SSE2 on x86-64, which every
// x86-64 CPU has; generic vector code elsewhere). See simd_kernels.h.
#include <cstdint>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LK_MUL_SSE2 1
#else
#define LK_MUL_GENERIC 1
#endif

#define LK_ISA_NS baseline
#define LK_ISA_NAME "baseline"
#define LK_W 4
#define LK_TABLE kBaselineTable
#include "simd_kernels.h"
