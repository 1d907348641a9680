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

// Philox4x32 with 10 rounds (Salmon et al., SC 2011). Updates ctr in place.
LK_HD void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr[0] = hi1 ^ ctr[1] ^ k0;
    ctr[1] = lo1;
    ctr[2] = hi0 ^ ctr[3] ^ k1;
    ctr[3] = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

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

// u = (r + 0.5) * 2^-32 in float32: convert (round to nearest), add, scale.
LK_HD float word_to_open_unit(uint32_t r) {
  return (static_cast<float>(r) + 0.5f) * 2.3283064365386963e-10f;
}

// ln u for u = (r + 0.5) * 2^-32.
// Below 1/2, u itself is decomposed into 2^e * m. From 1/2 up, d = 1 - u =
// (~r + 0.5) * 2^-32 is exact-ish, and ln(1 - d) is taken from d: directly with
// f = -d while 1 - d > 1/sqrt2, else from the decomposition of 1 - d (exact there).
// Either way ln = e ln2 + ln(1 + f) with |f| <= sqrt2 - 1, and ln(1 + f) = 2 atanh(s),
// s = f / (2 + f), |s| <= 0.1716, an odd series whose 11th-order remainder is < 4e-9.
LK_HD float log_open_unit(uint32_t r) {
  const bool low_half = r < 0x80000000u;
  const float u = word_to_open_unit(r);
  const float d = word_to_open_unit(~r);
  const bool near_one = !low_half && d <= 0.29289322f;  // 1 - d >= 1/sqrt2
  const float w = low_half ? u : 1.0f - d;
  // w = 2^e * m with m in [1/sqrt2, sqrt2).
  const uint32_t bits = float_as_bits(w);
  int e = static_cast<int>((bits >> 23) & 0xffu) - 127;
  float m = bits_as_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  float f = m - 1.0f;
  f = near_one ? -d : f;
  const float ef = near_one ? 0.0f : static_cast<float>(e);
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  const float series =
      1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return ef * 0.69314718f + 2.0f * s * series;
}

// (cos 2 pi v, sin 2 pi v) for v = (r + 0.5) * 2^-32: q = round(4v) quarter turns,
// then a remainder angle in [-pi/4, pi/4] where short Taylor polynomials are
// accurate to ~2e-8 (next terms: x^10/10! and x^11/11! at pi/4).
LK_HD void cos_sin_turn(uint32_t r, float* c, float* s) {
  const float v = word_to_open_unit(r);
  const float q = static_cast<float>(static_cast<int>(4.0f * v + 0.5f));  // 0..4
  const float t = 6.28318531f * (v - 0.25f * q);
  const float t2 = t * t;
  const float sin_t =
      t * (1.0f + t2 * (-1.0f / 6 + t2 * (1.0f / 120 + t2 * (-1.0f / 5040 + t2 * (1.0f / 362880)))));
  const float cos_t =
      1.0f + t2 * (-0.5f + t2 * (1.0f / 24 + t2 * (-1.0f / 720 + t2 * (1.0f / 40320))));
  const int quadrant = static_cast<int>(q) & 3;
  // rotate (cos_t, sin_t) by quadrant * 90 degrees
  const bool swap = quadrant & 1;
  const float cc = swap ? sin_t : cos_t;
  const float ss = swap ? cos_t : sin_t;
  *c = (quadrant == 1 || quadrant == 2) ? -cc : cc;
  *s = (quadrant >= 2) ? -ss : ss;
}

// Four standard normals from one Philox output block.
LK_HD void box_muller4(const uint32_t r[4], float n[4]) {
  const float rad0 = sqrtf(-2.0f * log_open_unit(r[0]));
  const float rad1 = sqrtf(-2.0f * log_open_unit(r[2]));
  float c0, s0, c1, s1;
  cos_sin_turn(r[1], &c0, &s0);
  cos_sin_turn(r[3], &c1, &s1);
  n[0] = rad0 * c0;
  n[1] = rad0 * s0;
  n[2] = rad1 * c1;
  n[3] = rad1 * s1;
}

// The four normals of counter c (a 64-bit group index) under a 64-bit seed.
LK_HD void normals_at(uint64_t seed, uint64_t c, float n[4]) {
  uint32_t ctr[4] = {static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), 0u, 0u};
  philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller4(ctr, n);
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
