// SIMD block kernels behind cpu_kernels.h, written once with GCC/Clang vector
// extensions and compiled once per instruction set. The including file defines
//   LK_ISA_NS     namespace of this copy (e.g. avx2)
//   LK_W          lanes of 32 bits per vector (4: SSE2/generic, 8: AVX2)
//   LK_MUL        LK_MUL_SSE2, LK_MUL_AVX2 or LK_MUL_GENERIC: how 32x32->64 products are made
//   LK_TABLE      name of the KernelTable to define
// and includes <immintrin.h> (x86) and the torch-free headers before any target pragma.
//
// Noise: W Philox counters at a time, through the formulas of philox.h instantiated
// for vectors (VectorLanes below), so the results are bit-identical to the scalar
// path. The update loops are one template of plain element loops that the compiler
// vectorises (checked with -fopt-info-vec).
#include <cstdint>
#include <cstring>

#include "../philox.h"
#include "cpu_kernels.h"

#define LK_VI static inline __attribute__((always_inline))

namespace langevin {
namespace cpu {
namespace LK_ISA_NS {
namespace {

#if defined(LANGEVIN_GNU_VECTORS)
constexpr int W = LK_W;
typedef float vf __attribute__((vector_size(4 * LK_W)));
typedef uint32_t vu __attribute__((vector_size(4 * LK_W)));
typedef int32_t vi __attribute__((vector_size(4 * LK_W)));

// philox.h's lanes interface for W-wide vectors (see ScalarLanes there).
struct VectorLanes {
  using F = vf;
  using U = vu;
  using I = vi;
  LK_VI F as_float(U bits) { return (vf)bits; }
  LK_VI U as_bits(F v) { return (vu)v; }
  LK_VI I as_signed(U v) { return (vi)v; }
  LK_VI F to_float(I v) { return __builtin_convertvector(v, vf); }
  LK_VI I to_int(F v) { return __builtin_convertvector(v, vi); }  // truncation
  // static_cast<float>(r) is the correctly rounded value of r; the two 16-bit halves
  // convert exactly and their sum is rounded once, which gives the same float without
  // an unsigned conversion instruction (SSE2/AVX2 have none).
  LK_VI F word_to_float(U r) { return to_float((vi)(r >> 16)) * 65536.0f + to_float((vi)(r & 0xffffu)); }
  LK_VI I below_half(U r) { return (vi)r >= 0; }  // r < 0x80000000 (signed compare: SSE2 has no unsigned one)
  LK_VI I and_not(I a, I b) { return ~a & b; }
  LK_VI F sqrt(F v) {
#if defined(LK_MUL_AVX2)
    return (vf)_mm256_sqrt_ps((__m256)v);
#elif defined(LK_MUL_SSE2)
    return (vf)_mm_sqrt_ps((__m128)v);
#else
    for (int k = 0; k < W; ++k) v[k] = __builtin_sqrtf(v[k]);
    return v;
#endif
  }

  // hi and lo 32 bits of m * a per lane.
  LK_VI void mul_hilo(uint32_t m, U a, U* hi, U* lo) {
#if defined(LK_MUL_GENERIC)
    for (int k = 0; k < W; ++k) {
      const uint64_t p = static_cast<uint64_t>(m) * a[k];
      (*hi)[k] = static_cast<uint32_t>(p >> 32);
      (*lo)[k] = static_cast<uint32_t>(p);
    }
#else
    // The multiply instruction takes the even 32-bit lanes: products of the even lanes
    // from a, of the odd lanes from a shifted down by one lane within each 64 bits.
#if defined(LK_MUL_AVX2)
    const __m256i mv = _mm256_set1_epi32(static_cast<int>(m));
    const vu even = (vu)_mm256_mul_epu32((__m256i)a, mv);
    const vu odd = (vu)_mm256_mul_epu32(_mm256_srli_epi64((__m256i)a, 32), mv);
#elif defined(LK_MUL_SSE2)
    const __m128i mv = _mm_set1_epi32(static_cast<int>(m));
    const vu even = (vu)_mm_mul_epu32((__m128i)a, mv);
    const vu odd = (vu)_mm_mul_epu32(_mm_srli_epi64((__m128i)a, 32), mv);
#else
#error "define LK_MUL_AVX2, LK_MUL_SSE2 or LK_MUL_GENERIC"
#endif
#if LK_W == 8
    *lo = __builtin_shuffle(even, odd, vu{0, 8, 2, 10, 4, 12, 6, 14});
    *hi = __builtin_shuffle(even, odd, vu{1, 9, 3, 11, 5, 13, 7, 15});
#else
    *lo = __builtin_shuffle(even, odd, vu{0, 4, 2, 6});
    *hi = __builtin_shuffle(even, odd, vu{1, 5, 3, 7});
#endif
#endif
  }
};

// philox.h's formulas, compiled here with this file's instruction set.
#include "../noise_formulas.h"

// philox4x32_10 of philox.h on U independent vectors of W counters each; the U
// dependency chains interleave round by round, which keeps the multipliers busy.
template <int U>
LK_VI void philox_lanes(vu ctr[U][4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    for (int v = 0; v < U; ++v) philox_round<VectorLanes>(ctr[v], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// box_muller of philox.h on W Philox outputs, written in element order (4 per counter).
LK_VI void box_muller_lanes(const vu ctr[4], float* out) {
  vf n[4];
  box_muller<VectorLanes>(ctr, n);
  // Interleave to element order n0[0] n1[0] n2[0] n3[0] n0[1] ...: zip(n0, n2) and
  // zip(n1, n3), then zip those.
#if LK_W == 8
  const vi zip_lo = {0, 8, 1, 9, 2, 10, 3, 11}, zip_hi = {4, 12, 5, 13, 6, 14, 7, 15};
#else
  const vi zip_lo = {0, 4, 1, 5}, zip_hi = {2, 6, 3, 7};
#endif
  const vf p_lo = __builtin_shuffle(n[0], n[2], zip_lo), p_hi = __builtin_shuffle(n[0], n[2], zip_hi);
  const vf q_lo = __builtin_shuffle(n[1], n[3], zip_lo), q_hi = __builtin_shuffle(n[1], n[3], zip_hi);
  const vf o0 = __builtin_shuffle(p_lo, q_lo, zip_lo), o1 = __builtin_shuffle(p_lo, q_lo, zip_hi);
  const vf o2 = __builtin_shuffle(p_hi, q_hi, zip_lo), o3 = __builtin_shuffle(p_hi, q_hi, zip_hi);
  std::memcpy(out, &o0, sizeof(vf));
  std::memcpy(out + W, &o1, sizeof(vf));
  std::memcpy(out + 2 * W, &o2, sizeof(vf));
  std::memcpy(out + 3 * W, &o3, sizeof(vf));
}

// Two vectors of counters per call (see philox_lanes).
constexpr int kVectorsPerCall = 4;
constexpr int kGroupsPerCall = kVectorsPerCall * W;

// The normals of kGroupsPerCall consecutive counters, in element order.
LK_VI void normals_lanes(uint64_t seed, uint64_t first_counter, float* out) {
  vu ctr[kVectorsPerCall][4];
  for (int v = 0; v < kVectorsPerCall; ++v) {
    uint32_t lo[W], hi[W];
    for (int k = 0; k < W; ++k) {
      const uint64_t c = first_counter + static_cast<uint64_t>(v * W + k);
      lo[k] = static_cast<uint32_t>(c);
      hi[k] = static_cast<uint32_t>(c >> 32);
    }
    std::memcpy(&ctr[v][0], lo, sizeof(lo));
    std::memcpy(&ctr[v][1], hi, sizeof(hi));
    ctr[v][2] = vu{};
    ctr[v][3] = vu{};
  }
  philox_lanes<kVectorsPerCall>(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  for (int v = 0; v < kVectorsPerCall; ++v) box_muller_lanes(ctr[v], out + 4 * W * v);
}

void normals(uint64_t seed, uint64_t first_counter, int64_t groups, float* out) {
  int64_t g = 0;
  for (; g + kGroupsPerCall <= groups; g += kGroupsPerCall)
    normals_lanes(seed, first_counter + g, out + 4 * g);
  if (g < groups) {
    float tail[4 * kGroupsPerCall];
    normals_lanes(seed, first_counter + g, tail);
    std::memcpy(out + 4 * g, tail, sizeof(float) * 4 * (groups - g));
  }
}

#else  // scalar: the loop of philox.h, one counter at a time

void normals(uint64_t seed, uint64_t first_counter, int64_t groups, float* out) {
  for (int64_t g = 0; g < groups; ++g) normals_at(seed, first_counter + g, out + 4 * g);
}

#endif  // LANGEVIN_GNU_VECTORS

// ---- element conversions: branch-free so that the loops vectorise --------------

LK_VI float bits_f(uint32_t b) { return bits_as_float(b); }
LK_VI uint32_t f_bits(float f) { return float_as_bits(f); }

LK_VI float bf16_to_float(uint16_t h) { return bits_f(static_cast<uint32_t>(h) << 16); }

// c10::BFloat16(float): round to nearest even; every NaN becomes 0x7FC0.
LK_VI uint16_t float_to_bf16(float f) {
  const uint32_t b = f_bits(f);
  const int32_t magnitude = static_cast<int32_t>(b & 0x7fffffffu);
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(magnitude > 0x7f800000 ? 0x7fc0u : rounded);
}

// IEEE half -> float (exact). Normal, infinite and NaN halves move their exponent
// and mantissa bits into place and rebias the exponent by 127 - 15 = 112 (twice for
// the all-ones exponent); subnormals are mantissa * 2^-24, exact in float.
LK_VI float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const int32_t magnitude = h & 0x7fff;
  // Selects as masks: GCC does not if-convert the ternary form of this function.
  const uint32_t inf_or_nan = 0u - static_cast<uint32_t>(magnitude >= 0x7c00);
  const uint32_t is_subnormal = 0u - static_cast<uint32_t>(magnitude < 0x400);
  const uint32_t normal =
      (static_cast<uint32_t>(magnitude) << 13) + (112u << 23) + (inf_or_nan & (112u << 23));
  const float subnormal = static_cast<float>(magnitude) * 5.9604644775390625e-08f;
  const uint32_t bits = (f_bits(subnormal) & is_subnormal) | (normal & ~is_subnormal);
  return bits_f(bits | sign);
}

// float -> IEEE half, round to nearest even, as c10::Half(float): NaN -> sign|0x7E00.
// Normal results: rebias and round away the 13 low mantissa bits (a carry moves into
// the exponent; from 65520 up the result reaches 0x7C00 = inf and is capped there).
// Subnormal results (|f| < 2^-14): |f| + 0.5 lies in [0.5, 1), where floats are
// spaced 2^-24 = the half subnormal step, so the float add rounds |f| to the half
// grid (to nearest even) and the low bits of the sum are the half's bits.
LK_VI uint16_t float_to_f16(float f) {
  const uint32_t b = f_bits(f);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int32_t magnitude = static_cast<int32_t>(b & 0x7fffffffu);
  const uint32_t mag = static_cast<uint32_t>(magnitude);
  int32_t normal = static_cast<int32_t>((mag - (112u << 23) + 0xfffu + ((mag >> 13) & 1u)) >> 13);
  normal = normal > 0x7c00 ? 0x7c00 : normal;
  const int32_t subnormal = static_cast<int32_t>(f_bits(bits_f(mag) + 0.5f) - 0x3f000000u);
  const int32_t is_subnormal = 0 - static_cast<int32_t>(magnitude < 0x38800000);
  const int32_t is_nan = 0 - static_cast<int32_t>(magnitude > 0x7f800000);
  int32_t h = (subnormal & is_subnormal) | (normal & ~is_subnormal);
  h = (0x7e00 & is_nan) | (h & ~is_nan);
  return static_cast<uint16_t>(static_cast<uint32_t>(h) | sign);
}

// ---- the update loops -----------------------------------------------------------
// `#pragma GCC ivdep`: y may be x itself, which the compiler cannot rule out but
// which is safe (each element is read before it is written, one index at a time).

LK_VI float same_f32(float v) { return v; }

// 16- and 32-bit states: float math, with the state's load and store conversions.
template <typename S, float (*Load)(S), S (*Store)(float)>
LK_VI void step_in_float(const S* x, const S* g, const float* xi, S* y, int64_t n, const Coeffs& c) {
  const float a = static_cast<float>(c.a), s = static_cast<float>(c.s);
  const float lam = static_cast<float>(c.lam), lo = static_cast<float>(c.lo),
              hi = static_cast<float>(c.hi);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i)
    y[i] = Store(langevin_update<float>(Load(x[i]), Load(g[i]), xi[i], a, s, lam, lo, hi));
}

void step_f32(const float* x, const float* g, const float* xi, float* y, int64_t n,
              const Coeffs& c) {
  step_in_float<float, same_f32, same_f32>(x, g, xi, y, n, c);
}

void step_bf16(const uint16_t* x, const uint16_t* g, const float* xi, uint16_t* y, int64_t n,
               const Coeffs& c) {
  step_in_float<uint16_t, bf16_to_float, float_to_bf16>(x, g, xi, y, n, c);
}

void step_f16(const uint16_t* x, const uint16_t* g, const float* xi, uint16_t* y, int64_t n,
              const Coeffs& c) {
  step_in_float<uint16_t, f16_to_float, float_to_f16>(x, g, xi, y, n, c);
}

template <typename noise_t>
void step_f64_any(const double* x, const double* g, const noise_t* xi, double* y, int64_t n,
                  const Coeffs& c) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i)
    y[i] = langevin_update<double>(x[i], g[i], static_cast<double>(xi[i]), c.a, c.s, c.lam, c.lo,
                                   c.hi);
}

void step_f64(const double* x, const double* g, const float* xi, double* y, int64_t n,
              const Coeffs& c) {
  step_f64_any<float>(x, g, xi, y, n, c);
}

void step_f64_explicit(const double* x, const double* g, const double* xi, double* y, int64_t n,
                       const Coeffs& c) {
  step_f64_any<double>(x, g, xi, y, n, c);
}

void bf16_to_f32(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

void f16_to_f32(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = f16_to_float(in[i]);
}

}  // namespace
}  // namespace LK_ISA_NS

extern const KernelTable LK_TABLE = {
    LK_ISA_NAME,          LK_ISA_NS::normals,  LK_ISA_NS::step_f32,
    LK_ISA_NS::step_bf16, LK_ISA_NS::step_f16, LK_ISA_NS::step_f64,
    LK_ISA_NS::step_f64_explicit, LK_ISA_NS::bf16_to_f32, LK_ISA_NS::f16_to_f32,
};

}  // namespace cpu
}  // namespace langevin
