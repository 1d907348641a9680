// Interface between the ATen-facing CPU ops (langevin_cpu.cpp) and the SIMD block
// kernels (simd_kernels.h), which are compiled once per instruction set:
// simd_baseline.cpp for any x86-64 (SSE2) or other CPU, simd_avx2.cpp for AVX2.
// The block kernels see raw pointers only (no torch headers), so that nothing
// compiled for AVX2 can leak into code that runs on older CPUs.
//
// Every table computes bit-identical results: same float operations in the same
// order as philox.h, no FMA contraction (no table enables FMA), and the same
// rounding of float16/bfloat16 as c10's conversions.
#pragma once

#include <cstdint>

namespace langevin {
namespace cpu {

// Coefficients of y = clamp(x - a*(g + lam*x) + s*xi, lo, hi); lo/hi are +-inf
// when there is no clamp.
struct Coeffs {
  double a, s, lam, lo, hi;
};

// float16 and bfloat16 travel as their raw 16-bit patterns.
struct KernelTable {
  const char* isa;
  // out[0 .. 4*groups) = the normals of counters first_counter, first_counter + 1, ...
  void (*normals)(uint64_t seed, uint64_t first_counter, int64_t groups, float* out);
  // y[i] = update(x[i], g[i], xi[i]) for i < n; y may be x (same pointer).
  void (*step_f32)(const float* x, const float* g, const float* xi, float* y, int64_t n,
                   const Coeffs& c);
  void (*step_bf16)(const uint16_t* x, const uint16_t* g, const float* xi, uint16_t* y,
                    int64_t n, const Coeffs& c);
  void (*step_f16)(const uint16_t* x, const uint16_t* g, const float* xi, uint16_t* y,
                   int64_t n, const Coeffs& c);
  void (*step_f64)(const double* x, const double* g, const float* xi, double* y, int64_t n,
                   const Coeffs& c);
  void (*step_f64_explicit)(const double* x, const double* g, const double* xi, double* y,
                            int64_t n, const Coeffs& c);
  // Widening of explicit 16-bit noise to float32 (exact).
  void (*bf16_to_f32)(const uint16_t* in, float* out, int64_t n);
  void (*f16_to_f32)(const uint16_t* in, float* out, int64_t n);
};

// The SIMD code uses GCC's vector extensions (__builtin_shuffle and vector selects);
// other compilers get the scalar header's loop in the baseline table and no AVX2 table.
#if defined(__GNUC__) && !defined(__clang__)
#define LANGEVIN_GNU_VECTORS 1
#endif

extern const KernelTable kBaselineTable;
#if (defined(__x86_64__) || defined(__i386__)) && defined(LANGEVIN_GNU_VECTORS)
#define LANGEVIN_HAVE_AVX2_TABLE 1
extern const KernelTable kAvx2Table;
#endif

// The table the CPU ops use now (LANGEVIN_CPU_ISA / _ext_cpu_isa; langevin_cpu.cpp), so that
// every CPU op draws its noise with the same, switchable, SIMD kernels.
const KernelTable& active_table();

}  // namespace cpu
}  // namespace langevin
