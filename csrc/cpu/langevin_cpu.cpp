// C++ CPU kernels of the internal ops declared in ../register.cpp.
// One Philox call serves four consecutive elements (DESIGN section 4); work is
// split over ATen's thread pool (OpenMP) in whole groups of four.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../philox.h"

namespace {

using langevin::langevin_update;
using langevin::normals_at;

template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Groups of four elements per parallel task: large enough to amortise the
// scheduling, small enough to balance two to a few dozen threads.
constexpr int64_t kGrainGroups = 4096;

struct StepParams {
  double a, s, lam, lo, hi;
  uint64_t seed, offset;
};

StepParams resolve(double a, double s, double lam, double lo, double hi, int64_t seed,
                   int64_t offset, const std::optional<at::Tensor>& rng_state) {
  StepParams p{a, s, lam, lo, hi, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
  if (rng_state.has_value()) {
    const int64_t* st = rng_state->data_ptr<int64_t>();
    p.seed = static_cast<uint64_t>(st[0]);
    p.offset += static_cast<uint64_t>(st[1]);
  }
  return p;
}

template <typename scalar_t>
void step_cpu_typed(const at::Tensor& x, const at::Tensor& grad, const at::Tensor* noise,
                    at::Tensor& out, const StepParams& p) {
  using M = math_t<scalar_t>;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = grad.data_ptr<scalar_t>();
  const scalar_t* np_ = noise ? noise->data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = out.data_ptr<scalar_t>();
  const int64_t numel = x.numel();
  const int64_t groups = (numel + 3) / 4;
  const M a = static_cast<M>(p.a), s = static_cast<M>(p.s), lam = static_cast<M>(p.lam);
  const M lo = static_cast<M>(p.lo), hi = static_cast<M>(p.hi);
  at::parallel_for(0, groups, kGrainGroups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      float n[4];
      if (np_ == nullptr) normals_at(p.seed, p.offset + static_cast<uint64_t>(g), n);
      const int64_t base = 4 * g;
      const int64_t count = std::min<int64_t>(4, numel - base);
      for (int64_t k = 0; k < count; ++k) {
        const int64_t i = base + k;
        const M xi = np_ ? static_cast<M>(np_[i]) : static_cast<M>(n[k]);
        yp[i] = static_cast<scalar_t>(langevin_update<M>(
            static_cast<M>(xp[i]), static_cast<M>(gp[i]), xi, a, s, lam, lo, hi));
      }
    }
  });
}

void ext_step_cpu(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                  at::Tensor out, double step_size, double noise_scale, double prior_weight,
                  double clamp_lo, double clamp_hi, int64_t seed, int64_t offset,
                  const std::optional<at::Tensor>& rng_state) {
  TORCH_CHECK(x.is_contiguous() && grad.is_contiguous() && out.is_contiguous(),
              "_ext_step: x, grad and out must be contiguous");
  TORCH_CHECK(!noise.has_value() || noise->is_contiguous(), "_ext_step: noise must be contiguous");
  const StepParams p = resolve(step_size, noise_scale, prior_weight, clamp_lo, clamp_hi, seed,
                               offset, rng_state);
  const at::Tensor* noise_ptr = noise.has_value() ? &noise.value() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_ext_step_cpu", [&] {
    step_cpu_typed<scalar_t>(x, grad, noise_ptr, out, p);
  });
}

void ext_normal_cpu(at::Tensor out, int64_t seed, int64_t offset,
                    const std::optional<at::Tensor>& rng_state) {
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous(),
              "_ext_normal: out must be a contiguous float32 tensor");
  const StepParams p = resolve(0, 0, 0, 0, 0, seed, offset, rng_state);
  float* op = out.data_ptr<float>();
  const int64_t numel = out.numel();
  at::parallel_for(0, (numel + 3) / 4, kGrainGroups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      float n[4];
      normals_at(p.seed, p.offset + static_cast<uint64_t>(g), n);
      for (int64_t k = 0; k < 4 && 4 * g + k < numel; ++k) op[4 * g + k] = n[k];
    }
  });
}

at::Tensor ext_philox_cpu(const at::Tensor& counters, int64_t key0, int64_t key1) {
  TORCH_CHECK(counters.scalar_type() == at::kLong && counters.dim() == 2 && counters.size(1) == 4,
              "_ext_philox: counters must be int64 [N, 4]");
  at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* cp = c.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t row = 0; row < c.size(0); ++row) {
    uint32_t ctr[4];
    for (int k = 0; k < 4; ++k) ctr[k] = static_cast<uint32_t>(cp[4 * row + k]);
    langevin::philox4x32_10(ctr, static_cast<uint32_t>(key0), static_cast<uint32_t>(key1));
    for (int k = 0; k < 4; ++k) op[4 * row + k] = static_cast<int64_t>(ctr[k]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(langevin_kernels, CPU, m) {
  m.impl("_ext_step", &ext_step_cpu);
  m.impl("_ext_normal", &ext_normal_cpu);
  m.impl("_ext_philox", &ext_philox_cpu);
}
