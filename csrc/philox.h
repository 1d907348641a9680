// The one noise stream of langevin-kernels (docs/noise.md), shared by the
// C++ CPU kernel and the CUDA kernel. The Triton kernel
// (langevin_kernels/triton_kernels.py) implements the same arithmetic step by step,
// and langevin_kernels/reference.py is an independent float64 rendering of the
// spec that the tests compare every backend against.
//
// Element i of a tensor draws from counter c = offset + i/4:
//   (r0, r1, r2, r3) = Philox4x32-10(counter = (lo32(c), hi32(c), 0, 0),
//                                     key     = (lo32(seed), hi32(seed)))
//   u_k = (r_k + 0.5) * 2^-32
//   (n0, n1) = BoxMuller(u0, u1), (n2, n3) = BoxMuller(u2, u3)
//   BoxMuller(u, v) = sqrt(-2 ln u) * (cos 2 pi v, sin 2 pi v)
//   noise_i = n_(i mod 4)
//
// The float32 math below is branch-free (selects only) so that the CPU kernel's
// loops vectorise, and it avoids two precision traps of a literal float32
// rendering: ln u for u close to 1 is computed from 1 - u (which the 32-bit word
// gives exactly), and the angle is reduced to an octant before the polynomial.
// Both keep every backend within ~3e-6 of the exact stream.
#pragma once

#include <cstdint>
#if !defined(__CUDACC__)
#include <math.h>  // sqrtf
#endif

#if defined(__CUDACC__)
#define LK_HD __host__ __device__ __forceinline__
#else
#define LK_HD inline __attribute__((always_inline))
#endif

namespace langevin {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// ----------------------------------------------------------------------------- lanes
// The formulas below are written once, as templates over a "lanes" type L that says
// how its values are stored: ScalarLanes (one float per value; the CUDA kernel and the
// scalar CPU loop) here, and W-wide SIMD vectors in cpu/simd_kernels.h. A mask is what
// L's comparisons return (bool, or all-ones/zero lanes), and `mask ? a : b` selects
// for both, so one text gives bit-identical results on every backend.

LK_HD float bits_as_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  union { uint32_t u; float f; } v{b};
  return v.f;
#endif
}

LK_HD uint32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  union { float f; uint32_t u; } v{f};
  return v.u;
#endif
}

struct ScalarLanes {
  using F = float;     // float values
  using U = uint32_t;  // 32-bit words
  using I = int32_t;   // signed integers
  static LK_HD F as_float(U bits) { return bits_as_float(bits); }
  static LK_HD U as_bits(F v) { return float_as_bits(v); }
  static LK_HD I as_signed(U v) { return static_cast<I>(v); }
  static LK_HD F to_float(I v) { return static_cast<F>(v); }
  static LK_HD I to_int(F v) { return static_cast<I>(v); }  // truncation
  static LK_HD F word_to_float(U r) { return static_cast<F>(r); }  // correctly rounded
  static LK_HD F sqrt(F v) { return sqrtf(v); }
  static LK_HD bool below_half(U r) { return r < 0x80000000u; }
  static LK_HD bool and_not(bool a, bool b) { return !a && b; }  // b and not a
  // hi and lo 32 bits of m * a
  static LK_HD void mul_hilo(uint32_t m, U a, U* hi, U* lo) {
    const uint64_t p = static_cast<uint64_t>(m) * a;
    *hi = static_cast<U>(p >> 32);
    *lo = static_cast<U>(p);
  }
};

#include "noise_formulas.h"  // philox_round, log_open_unit, cos_sin_turn, box_muller

// Philox4x32 with 10 rounds. Updates ctr in place.
LK_HD void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    philox_round<ScalarLanes>(ctr, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The four normals of counter c (a 64-bit group index) under a 64-bit seed.
LK_HD void normals_at(uint64_t seed, uint64_t c, float n[4]) {
  uint32_t ctr[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u};
  philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller<ScalarLanes>(ctr, n);
}

// The update of docs/op.md in the math type T (float for 16- and 32-bit
// states, double for float64). Bounds are +-inf when no clamp is asked for; the
// comparisons (not fmin/fmax) keep NaN as NaN, as torch.clamp does.
template <typename T>
LK_HD T langevin_update(T x, T g, T xi, T a, T s, T lam, T lo, T hi) {
  const T y = x - a * (g + lam * x) + s * xi;
  return y < lo ? lo : (y > hi ? hi : y);
}

}  // namespace langevin
