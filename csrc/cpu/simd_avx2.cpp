// SIMD block kernels for AVX2 CPUs: 256-bit vectors. Only this file's own code is
// compiled for AVX2 (every header is included before the target pragma), and it
// runs only where langevin_cpu.cpp has checked that the CPU has AVX2. FMA is
// deliberately not enabled: fused multiply-adds would round differently from the
// scalar header and the other backends. See simd_kernels.h.
#include "cpu_kernels.h"

#if defined(LANGEVIN_HAVE_AVX2_TABLE)
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "../philox.h"

#pragma GCC push_options
#pragma GCC target("avx2")
#define LK_MUL_AVX2 1
#define LK_ISA_NS avx2
#define LK_ISA_NAME "avx2"
#define LK_W 8
#define LK_TABLE kAvx2Table
#include "simd_kernels.h"
#pragma GCC pop_options
#endif
