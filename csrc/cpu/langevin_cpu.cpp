// C++ CPU kernels of the internal ops declared in ../register.cpp (the public ops'
// checks and routing are in ../step_op.cpp).
//
// Work is split over ATen's thread pool (OpenMP) in whole groups of four elements
// (one Philox counter each, docs/noise.md), so results never depend on the
// thread count. Each task walks its groups in blocks: the block's normals are
// made W counters at a time by the SIMD kernels (simd_kernels.h) into a buffer
// that stays in L1, then the update runs over the block's elements. The SIMD
// kernels exist once per instruction set; the widest one the CPU supports is
// chosen at run time (see select_table), and all of them give bit-identical results.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../philox.h"
#include "cpu_kernels.h"

namespace {

using langevin::cpu::Coeffs;
using langevin::cpu::KernelTable;

// Groups of four elements per parallel task: large enough to amortise the
// scheduling, small enough to balance two to a few dozen threads.
constexpr int64_t kGrainGroups = 4096;
// Groups per block: the block's noise (4 KiB of float) stays in L1 between the
// noise pass and the update pass.
constexpr int64_t kBlockGroups = 256;

bool cpu_has_avx2() {
#if defined(LANGEVIN_HAVE_AVX2_TABLE)
  __builtin_cpu_init();  // harmless if already done; needed if called during static init
  return __builtin_cpu_supports("avx2");  // also checks that the OS saves AVX registers
#else
  return false;
#endif
}

// "auto" -> the widest table this CPU runs; "baseline"/"avx2" -> that table.
const KernelTable* table_named(const std::string& name) {
  if (name == "auto") {
    return table_named(cpu_has_avx2() ? "avx2" : "baseline");
  }
  if (name == "baseline") return &langevin::cpu::kBaselineTable;
  if (name == "avx2") {
    TORCH_CHECK(cpu_has_avx2(),
                "CPU kernel instruction set 'avx2' requested, but this CPU (or build) has no AVX2");
#if defined(LANGEVIN_HAVE_AVX2_TABLE)
    return &langevin::cpu::kAvx2Table;
#endif
  }
  TORCH_CHECK(false, "CPU kernel instruction set '", name,
              "' is unknown; allowed: auto, baseline, avx2");
}

// The table in use. Starts from LANGEVIN_CPU_ISA (default auto); _ext_cpu_isa
// can switch it at run time (tests compare the tables with each other).
std::atomic<const KernelTable*>& active_table_slot() {
  static std::atomic<const KernelTable*> slot{[] {
    const char* env = std::getenv("LANGEVIN_CPU_ISA");
    return table_named(env != nullptr && *env != '\0' ? env : "auto");
  }()};
  return slot;
}

const KernelTable& kernels() { return *active_table_slot().load(std::memory_order_relaxed); }

struct StepParams {
  Coeffs coeffs;
  uint64_t seed, offset;
};

// Per-chain coefficients (nullptr: the scalar in Coeffs); element i belongs to chain
// i / row_len. math_t is float, or double for float64 states.
template <typename math_t>
struct ChainCoeffs {
  const math_t* a = nullptr;
  const math_t* s = nullptr;
  int64_t row_len = 1;
  bool any() const { return a != nullptr || s != nullptr; }
};

// Every tensor the kernels index is checked here: the internal ops are reachable as
// torch.ops.langevin_kernels._ext_*, and a mismatched call must raise, never read or
// write past the end of a buffer.
void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device(), "; both must be CPU tensors");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK(t.numel() == x.numel(), op, ": ", name, " has ", t.numel(), " elements but x has ",
              x.numel(), "; they must match");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_rng_state(const char* op, const std::optional<at::Tensor>& rng_state) {
  if (!rng_state.has_value()) return;
  const at::Tensor& st = *rng_state;
  TORCH_CHECK(st.scalar_type() == at::kLong && st.numel() == 2 && st.is_contiguous(), op,
              ": rng_state must be a contiguous int64 tensor of 2 elements (seed, base offset), got ",
              st.scalar_type(), " with ", st.numel(), " elements");
  TORCH_CHECK(st.device().is_cpu(), op, ": rng_state is on ", st.device(),
              " but the data is on the CPU; they must be on one device");
}

// Per-chain coefficients of the raw op: R contiguous values in the math type, R dividing numel.
void check_per_chain_rows(const char* op, const char* name, const std::optional<at::Tensor>& t,
                          const at::Tensor& x) {
  if (!t.has_value()) return;
  const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(t->device() == x.device() && t->scalar_type() == math && t->is_contiguous(), op, ": ", name,
              " must be a contiguous ", math, " tensor on ", x.device(), ", got ", t->scalar_type(), " on ",
              t->device());
  TORCH_CHECK(t->numel() > 0 ? x.numel() % t->numel() == 0 : x.numel() == 0, op, ": ", name, " has ",
              t->numel(), " elements, which must divide x's ", x.numel());
}

StepParams resolve(double a, double s, double lam, double lo, double hi, int64_t seed,
                   int64_t offset, const std::optional<at::Tensor>& rng_state) {
  StepParams p{{a, s, lam, lo, hi}, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
  if (rng_state.has_value()) {
    const int64_t* st = rng_state->const_data_ptr<int64_t>();
    p.seed = static_cast<uint64_t>(st[0]);
    p.offset += static_cast<uint64_t>(st[1]);
  }
  return p;
}

// The update of `count` elements starting at element i0 of one block. `buf` holds
// the block's generated noise, or receives explicit 16-bit noise widened to float.
template <typename scalar_t>
void step_block(const KernelTable& k, const scalar_t* x, const scalar_t* g, const scalar_t* noise,
                float* buf, scalar_t* y, int64_t count, const Coeffs& c);

template <>
void step_block<float>(const KernelTable& k, const float* x, const float* g, const float* noise,
                       float* buf, float* y, int64_t count, const Coeffs& c) {
  k.step_f32(x, g, noise != nullptr ? noise : buf, y, count, c);
}

template <>
void step_block<double>(const KernelTable& k, const double* x, const double* g,
                        const double* noise, float* buf, double* y, int64_t count,
                        const Coeffs& c) {
  if (noise != nullptr) {
    k.step_f64_explicit(x, g, noise, y, count, c);  // float64 noise keeps its precision
  } else {
    k.step_f64(x, g, buf, y, count, c);
  }
}

template <>
void step_block<at::BFloat16>(const KernelTable& k, const at::BFloat16* x, const at::BFloat16* g,
                              const at::BFloat16* noise, float* buf, at::BFloat16* y,
                              int64_t count, const Coeffs& c) {
  auto bits = [](const at::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); };
  if (noise != nullptr) k.bf16_to_f32(bits(noise), buf, count);
  k.step_bf16(bits(x), bits(g), buf, reinterpret_cast<uint16_t*>(y), count, c);
}

template <>
void step_block<at::Half>(const KernelTable& k, const at::Half* x, const at::Half* g,
                          const at::Half* noise, float* buf, at::Half* y, int64_t count,
                          const Coeffs& c) {
  auto bits = [](const at::Half* p) { return reinterpret_cast<const uint16_t*>(p); };
  if (noise != nullptr) k.f16_to_f32(bits(noise), buf, count);
  k.step_f16(bits(x), bits(g), buf, reinterpret_cast<uint16_t*>(y), count, c);
}

// step_block over elements [i0, i0 + count) of a block whose noise starts at buf, cut at
// chain boundaries so that each piece runs with its chain's coefficients.
template <typename scalar_t, typename math_t>
void step_block_per_chain(const KernelTable& k, const scalar_t* x, const scalar_t* g, const scalar_t* noise,
                          float* buf, scalar_t* y, int64_t i0, int64_t count, const Coeffs& base,
                          const ChainCoeffs<math_t>& chains) {
  for (int64_t i = i0; i < i0 + count;) {
    const int64_t row = i / chains.row_len;
    const int64_t end = std::min(i0 + count, (row + 1) * chains.row_len);
    Coeffs c = base;
    if (chains.a != nullptr) c.a = static_cast<double>(chains.a[row]);
    if (chains.s != nullptr) c.s = static_cast<double>(chains.s[row]);
    // 16-bit explicit noise is widened into buf at the piece's start, so buf is indexed the same way.
    float* piece_buf = buf + (i - i0);
    step_block<scalar_t>(k, x + i, g + i, noise ? noise + i : nullptr, piece_buf, y + i, end - i, c);
    i = end;
  }
}

template <typename scalar_t>
void step_cpu_typed(const at::Tensor& x, const at::Tensor& grad, const at::Tensor* noise,
                    at::Tensor& out, const StepParams& p,
                    const ChainCoeffs<std::conditional_t<std::is_same_v<scalar_t, double>, double, float>>& chains) {
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = grad.data_ptr<scalar_t>();
  const scalar_t* np_ = noise ? noise->data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = out.data_ptr<scalar_t>();
  const int64_t numel = x.numel();
  const KernelTable& k = kernels();
  at::parallel_for(0, (numel + 3) / 4, kGrainGroups, [&](int64_t g0, int64_t g1) {
    alignas(64) float buf[4 * kBlockGroups];
    for (int64_t block = g0; block < g1; block += kBlockGroups) {
      const int64_t groups = std::min(kBlockGroups, g1 - block);
      const int64_t i0 = 4 * block;
      const int64_t count = std::min(4 * groups, numel - i0);
      if (np_ == nullptr) k.normals(p.seed, p.offset + static_cast<uint64_t>(block), groups, buf);
      if (chains.any()) {
        step_block_per_chain(k, xp, gp, np_, buf, yp, i0, count, p.coeffs, chains);
      } else {
        step_block<scalar_t>(k, xp + i0, gp + i0, np_ ? np_ + i0 : nullptr, buf, yp + i0, count,
                             p.coeffs);
      }
    }
  });
}

void ext_step_cpu(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                  at::Tensor out, double step_size, double noise_scale, double prior_weight,
                  double clamp_lo, double clamp_hi, int64_t seed, int64_t offset,
                  const std::optional<at::Tensor>& rng_state,
                  const std::optional<at::Tensor>& step_size_per_chain,
                  const std::optional<at::Tensor>& noise_scale_per_chain) {
  constexpr const char* op = "_ext_step";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  check_like_x(op, "grad", grad, x);
  check_like_x(op, "out", out, x);
  if (noise.has_value()) check_like_x(op, "noise", *noise, x);
  check_rng_state(op, rng_state);
  const StepParams p = resolve(step_size, noise_scale, prior_weight, clamp_lo, clamp_hi, seed,
                               offset, rng_state);
  const at::Tensor* noise_ptr = noise.has_value() ? &noise.value() : nullptr;
  check_per_chain_rows(op, "step_size_per_chain", step_size_per_chain, x);
  check_per_chain_rows(op, "noise_scale_per_chain", noise_scale_per_chain, x);
  TORCH_CHECK(!(step_size_per_chain.has_value() && noise_scale_per_chain.has_value()) ||
                  step_size_per_chain->numel() == noise_scale_per_chain->numel(),
              op, ": step_size_per_chain and noise_scale_per_chain must have one entry per chain each");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_ext_step_cpu", [&] {
    using math_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ChainCoeffs<math_t> chains;
    const auto* rows = step_size_per_chain.has_value() ? &*step_size_per_chain
                       : noise_scale_per_chain.has_value() ? &*noise_scale_per_chain : nullptr;
    if (rows != nullptr && x.numel() > 0) {
      chains.row_len = x.numel() / rows->numel();
      if (step_size_per_chain.has_value()) chains.a = step_size_per_chain->const_data_ptr<math_t>();
      if (noise_scale_per_chain.has_value()) chains.s = noise_scale_per_chain->const_data_ptr<math_t>();
    }
    step_cpu_typed<scalar_t>(x, grad, noise_ptr, out, p, chains);
  });
}

void ext_normal_cpu(at::Tensor out, int64_t seed, int64_t offset,
                    const std::optional<at::Tensor>& rng_state) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.is_contiguous(),
              "_ext_normal: out must be a contiguous float32 CPU tensor, got ", out.scalar_type(),
              " on ", out.device());
  check_rng_state("_ext_normal", rng_state);
  const StepParams p = resolve(0, 0, 0, 0, 0, seed, offset, rng_state);
  float* op = out.data_ptr<float>();
  const int64_t numel = out.numel();
  const KernelTable& k = kernels();
  at::parallel_for(0, (numel + 3) / 4, kGrainGroups, [&](int64_t g0, int64_t g1) {
    for (int64_t block = g0; block < g1; block += kBlockGroups) {
      const int64_t groups = std::min(kBlockGroups, g1 - block);
      const int64_t i0 = 4 * block;
      const int64_t count = std::min(4 * groups, numel - i0);
      const uint64_t counter = p.offset + static_cast<uint64_t>(block);
      if (count == 4 * groups) {
        k.normals(p.seed, counter, groups, op + i0);
      } else {  // the last group is cut short by the end of the tensor
        alignas(64) float buf[4 * kBlockGroups];
        k.normals(p.seed, counter, groups, buf);
        std::memcpy(op + i0, buf, sizeof(float) * count);
      }
    }
  });
}

at::Tensor ext_philox_cpu(const at::Tensor& counters, int64_t key0, int64_t key1) {
  TORCH_CHECK(counters.device().is_cpu() && counters.scalar_type() == at::kLong &&
                  counters.dim() == 2 && counters.size(1) == 4,
              "_ext_philox: counters must be an int64 CPU tensor [N, 4], got ", counters.scalar_type(),
              " ", counters.sizes(), " on ", counters.device());
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

// The CPU kernels' instruction set: returns the one in use, after switching to
// `select` ("auto", "baseline", "avx2") when given. Used by tests and benchmarks.
std::string ext_cpu_isa(const std::optional<std::string>& select) {
  if (select.has_value()) active_table_slot().store(table_named(*select));
  return kernels().isa;
}

}  // namespace

const KernelTable& langevin::cpu::active_table() { return kernels(); }

// Not a tensor op: a catch-all kernel (no dispatch key).
TORCH_LIBRARY_FRAGMENT(langevin_kernels, m) {
  m.impl("_ext_cpu_isa", &ext_cpu_isa);
}

TORCH_LIBRARY_IMPL(langevin_kernels, CPU, m) {
  m.impl("_ext_step", &ext_step_cpu);
  m.impl("_ext_normal", &ext_normal_cpu);
  m.impl("_ext_philox", &ext_philox_cpu);
}
