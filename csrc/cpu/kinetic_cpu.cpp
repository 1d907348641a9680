// C++ CPU kernel of the internal op _ext_kinetic_step (schema and contract in ../register.cpp):
// one pass over x, v, grad (and explicit noise) that writes x_out and v_out (which may be x
// and v), with xi drawn in the kernel from the stream of docs/noise.md.
//
// The work is split as in langevin_cpu.cpp: tasks of whole groups of four elements (one
// Philox counter each), walked in blocks whose normals are made by the active SIMD table
// (the same kernels, hence the same bits, as lk.philox_normal on the cpp backend) into a
// buffer that stays in L1. A block's counters follow from its first group alone, so the
// result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../kinetic_checks.h"
#include "../kinetic_update.h"
#include "cpu_kernels.h"

namespace {

using langevin::KineticCoeffs;

constexpr int64_t kGrainGroups = 4096;  // per task: amortises scheduling, balances 2..dozens of threads
constexpr int64_t kBlockGroups = 256;   // per block: 4 KiB of normals stay in L1

// float for 16/32-bit states (widened once, rounded once on store), double for float64.
template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Elements [0, n) of one block; xi holds the block's generated normals when noise is null.
// Templated on the noise source so that the loop has no branch and vectorises.
template <typename T, bool kExplicitNoise>
void kinetic_block(const T* x, const T* v, const T* g, const T* noise, const float* xi, T* x_out,
                   T* v_out, int64_t n, const KineticCoeffs<math_t<T>>& c) {
  using M = math_t<T>;
  // ivdep: outputs may be the inputs themselves, which is safe (element i is read before it
  // is written) but would otherwise make GCC keep a scalar fallback for exactly that case.
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const M e = kExplicitNoise ? static_cast<M>(noise[i]) : static_cast<M>(xi[i]);
    M xn, vn;
    langevin::kinetic_update<M>(static_cast<M>(x[i]), static_cast<M>(v[i]), static_cast<M>(g[i]), e,
                                c, &xn, &vn);
    x_out[i] = static_cast<T>(xn);
    v_out[i] = static_cast<T>(vn);
  }
}

template <typename T>
void kinetic_cpu_typed(const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad,
                       const std::optional<at::Tensor>& noise, at::Tensor& x_out, at::Tensor& v_out,
                       const KineticCoeffs<math_t<T>>& c, uint64_t seed, uint64_t offset) {
  const T* xp = x.const_data_ptr<T>();
  const T* vp = v.const_data_ptr<T>();
  const T* gp = grad.const_data_ptr<T>();
  const T* np_ = noise.has_value() ? noise->const_data_ptr<T>() : nullptr;
  T* xo = x_out.mutable_data_ptr<T>();
  T* vo = v_out.mutable_data_ptr<T>();
  const int64_t numel = x.numel();
  const langevin::cpu::KernelTable& k = langevin::cpu::active_table();
  at::parallel_for(0, (numel + 3) / 4, kGrainGroups, [&](int64_t g0, int64_t g1) {
    alignas(64) float buf[4 * kBlockGroups];
    for (int64_t block = g0; block < g1; block += kBlockGroups) {
      const int64_t groups = std::min(kBlockGroups, g1 - block);
      const int64_t i0 = 4 * block;
      const int64_t count = std::min(4 * groups, numel - i0);
      if (np_ != nullptr) {
        kinetic_block<T, true>(xp + i0, vp + i0, gp + i0, np_ + i0, nullptr, xo + i0, vo + i0, count, c);
      } else {
        k.normals(seed, offset + static_cast<uint64_t>(block), groups, buf);
        kinetic_block<T, false>(xp + i0, vp + i0, gp + i0, nullptr, buf, xo + i0, vo + i0, count, c);
      }
    }
  });
}

void ext_kinetic_step_cpu(const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad,
                          const std::optional<at::Tensor>& noise, at::Tensor x_out, at::Tensor v_out,
                          double step_size, double friction, double kick, int64_t seed, int64_t offset,
                          const std::optional<at::Tensor>& rng_state) {
  langevin::check_kinetic_args(c10::DeviceType::CPU, x, v, grad, noise, x_out, v_out, rng_state);
  if (x.numel() == 0) return;
  uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  if (rng_state.has_value()) {  // on the CPU "on the device" is here
    const int64_t* st = rng_state->const_data_ptr<int64_t>();
    s = static_cast<uint64_t>(st[0]);
    o += static_cast<uint64_t>(st[1]);
  }
  const KineticCoeffs<double> c = langevin::kinetic_coeffs(step_size, friction, kick);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_ext_kinetic_step_cpu", [&] {
    kinetic_cpu_typed<scalar_t>(x, v, grad, noise, x_out, v_out, langevin::cast_coeffs<math_t<scalar_t>>(c),
                                s, o);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(langevin_kernels, CPU, m) {
  m.impl("_ext_kinetic_step", &ext_kinetic_step_cpu);
}
