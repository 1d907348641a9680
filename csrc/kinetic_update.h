// The per-element update of the kinetic (underdamped) Langevin op, docs/samplers.md, shared by
// the C++ CPU kernel (cpu/kinetic_cpu.cpp) and the CUDA kernel (cuda/kinetic_cuda.cu); the
// Triton kernel (langevin_kernels/triton_kernels.py) writes the same four lines.
//
//   v1 = v - kick * grad;  x1 = x + h/2 * v1;  v2 = c1 * v1 + c2 * xi;  x2 = x1 + h/2 * v2
//
// with c1 = exp(-gamma h), c2 = sqrt(1 - c1^2), computed once on the host in double and then
// rounded to the math type (float for 16/32-bit states, double for float64), as the eager
// reference (reference.kinetic_step) rounds its Python-float coefficients.
#pragma once

#include <cmath>

#include "philox.h"  // LK_HD

namespace langevin {

template <typename T>
struct KineticCoeffs {
  T kick, half_h, c1, c2;
};

// c2 through expm1: 1 - c1^2 cancels for small gamma h (the reference does the same).
inline KineticCoeffs<double> kinetic_coeffs(double step_size, double friction, double kick) {
  return {kick, 0.5 * step_size, std::exp(-friction * step_size),
          std::sqrt(-std::expm1(-2.0 * friction * step_size))};
}

template <typename T>
inline KineticCoeffs<T> cast_coeffs(const KineticCoeffs<double>& c) {
  return {static_cast<T>(c.kick), static_cast<T>(c.half_h), static_cast<T>(c.c1),
          static_cast<T>(c.c2)};
}

// B(kick) A(h/2) O A(h/2) on one element; reads everything before the caller writes, so the
// outputs may overwrite the inputs.
template <typename T>
LK_HD void kinetic_update(T x, T v, T g, T xi, const KineticCoeffs<T>& c, T* x_new, T* v_new) {
  const T v1 = v - c.kick * g;
  const T x1 = x + c.half_h * v1;
  const T v2 = c.c1 * v1 + c.c2 * xi;
  *x_new = x1 + c.half_h * v2;
  *v_new = v2;
}

}  // namespace langevin
