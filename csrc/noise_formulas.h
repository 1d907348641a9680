// The noise formulas of docs/noise.md as templates over a lanes type L (philox.h's
// ScalarLanes, or simd_kernels.h's VectorLanes): Philox rounds, u = (r + 0.5) 2^-32,
// ln u, (cos, sin) of 2 pi u and Box-Muller. Written once, so that every backend
// built from C++ computes the same float operations in the same order.
//
// No include guard and no includes, on purpose: the file is included inside a
// namespace, once by philox.h (namespace langevin) and once per instruction set by
// cpu/simd_kernels.h, so that each copy is compiled with that instruction set's
// target options (GCC compiles a template with the options in force where it is
// defined, and cannot inline AVX2 code into a template defined without them).
// It needs LK_HD and the kPhilox* constants of philox.h.

// One round of Philox4x32 (Salmon et al., SC 2011) on a counter block, in place.
template <class L>
LK_HD void philox_round(typename L::U c[4], uint32_t k0, uint32_t k1) {
  typename L::U hi0, lo0, hi1, lo1;
  L::mul_hilo(kPhiloxM0, c[0], &hi0, &lo0);
  L::mul_hilo(kPhiloxM1, c[2], &hi1, &lo1);
  c[0] = hi1 ^ c[1] ^ k0;
  c[1] = lo1;
  c[2] = hi0 ^ c[3] ^ k1;
  c[3] = lo0;
}

// u = (r + 0.5) * 2^-32 in float32: convert (round to nearest), add, scale.
template <class L>
LK_HD typename L::F word_to_open_unit(typename L::U r) {
  return (L::word_to_float(r) + 0.5f) * 2.3283064365386963e-10f;
}

// ln u for u = (r + 0.5) * 2^-32.
// Below 1/2, u itself is decomposed into 2^e * m. From 1/2 up, d = 1 - u =
// (~r + 0.5) * 2^-32 is exact-ish, and ln(1 - d) is taken from d: directly with
// f = -d while 1 - d > 1/sqrt2, else from the decomposition of 1 - d (exact there).
// Either way ln = e ln2 + ln(1 + f) with |f| <= sqrt2 - 1, and ln(1 + f) = 2 atanh(s),
// s = f / (2 + f), |s| <= 0.1716, an odd series whose 11th-order remainder is < 4e-9.
template <class L>
LK_HD typename L::F log_open_unit(typename L::U r) {
  using F = typename L::F;
  using I = typename L::I;
  const auto low_half = L::below_half(r);
  const F u = word_to_open_unit<L>(r);
  const F d = word_to_open_unit<L>(~r);
  const auto near_one = L::and_not(low_half, d <= 0.29289322f);  // 1 - d >= 1/sqrt2
  const F w = low_half ? u : 1.0f - d;
  // w = 2^e * m with m in [1/sqrt2, sqrt2).
  const typename L::U bits = L::as_bits(w);
  I e = L::as_signed((bits >> 23) & 0xffu) - 127;
  F m = L::as_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const auto big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  F f = m - 1.0f;
  f = near_one ? -d : f;
  const F ef = near_one ? F{} : L::to_float(e);
  const F s = f / (2.0f + f);
  const F s2 = s * s;
  const F series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return ef * 0.69314718f + 2.0f * s * series;
}

// (cos 2 pi v, sin 2 pi v) for v = (r + 0.5) * 2^-32: q = round(4v) quarter turns,
// then a remainder angle in [-pi/4, pi/4] where short Taylor polynomials are
// accurate to ~2e-8 (next terms: x^10/10! and x^11/11! at pi/4).
template <class L>
LK_HD void cos_sin_turn(typename L::U r, typename L::F* c, typename L::F* s) {
  using F = typename L::F;
  const F v = word_to_open_unit<L>(r);
  const typename L::I qi = L::to_int(4.0f * v + 0.5f);  // 0..4
  const F q = L::to_float(qi);
  const F t = 6.28318531f * (v - 0.25f * q);
  const F t2 = t * t;
  const F sin_t =
      t * (1.0f + t2 * (-1.0f / 6 + t2 * (1.0f / 120 + t2 * (-1.0f / 5040 + t2 * (1.0f / 362880)))));
  const F cos_t = 1.0f + t2 * (-0.5f + t2 * (1.0f / 24 + t2 * (-1.0f / 720 + t2 * (1.0f / 40320))));
  // rotate (cos_t, sin_t) by quadrant * 90 degrees
  const typename L::I quadrant = qi & 3;
  const auto swap = (quadrant & 1) != 0;
  const F cc = swap ? sin_t : cos_t;
  const F ss = swap ? cos_t : sin_t;
  *c = (quadrant == 1 || quadrant == 2) ? -cc : cc;
  *s = (quadrant >= 2) ? -ss : ss;
}

// Four standard normals from one Philox output block r[0..3].
template <class L>
LK_HD void box_muller(const typename L::U r[4], typename L::F n[4]) {
  const typename L::F rad0 = L::sqrt(-2.0f * log_open_unit<L>(r[0]));
  const typename L::F rad1 = L::sqrt(-2.0f * log_open_unit<L>(r[2]));
  cos_sin_turn<L>(r[1], &n[0], &n[1]);
  cos_sin_turn<L>(r[3], &n[2], &n[3]);
  n[0] = rad0 * n[0];
  n[1] = rad0 * n[1];
  n[2] = rad1 * n[2];
  n[3] = rad1 * n[3];
}
