// CPU and CUDA kernels of the public ops langevin_step and langevin_step_ (schemas in
// register.cpp, contract in docs/op.md): every argument check, the in-place rules, and the
// route to the backend that computes the update.
//
// The checks raise the same Python exception types with the same messages as the fake
// kernels in langevin_kernels/ops.py (TypeError for dtypes, ValueError for values), so a
// user sees one wording whichever device or tracing mode the call took.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "op_common.h"

namespace {

using langevin::contiguous;
using langevin::dtype_name;
using langevin::dtype_slot;
using langevin::empty_contiguous;
using langevin::float_str;
using langevin::overlaps_itself;
using langevin::runs_native;
using langevin::shape_str;
using langevin::shares_memory;

// ----------------------------------------------------------------------------- routes

// Must match the native kernels' C++ signature exactly (`out` by value).
using RawStep = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                     at::Tensor, double, double, double, double, double, int64_t, int64_t,
                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&);

const c10::TypedOperatorHandle<RawStep>& raw_step(bool native) {
  static const auto ext = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("langevin_kernels::_ext_step", "")
                              .typed<RawStep>();
  if (native) return ext;
  // _routed_step's kernels are registered from Python after this library loads.
  static const auto routed = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("langevin_kernels::_routed_step", "")
                                 .typed<RawStep>();
  return routed;
}

// ----------------------------------------------------------------------------- checks

constexpr const char* kAllowed = "allowed dtypes: float32, float16, bfloat16, float64";
// The smallest double that float32 rounds to inf (FLT_MAX = 2^128 - 2^104; halfway rounds up).
const double kF32Overflow = std::ldexp(1.0, 128) - std::ldexp(1.0, 103);

void check_float_tensor(const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(dtype_slot(t.scalar_type()) >= 0, name, " has dtype ", dtype_name(t.scalar_type()),
                   "; ", kAllowed);
}

void check_like_x(const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_float_tensor(name, t);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), name, " has shape ", shape_str(t.sizes()),
                    " but x has shape ", shape_str(x.sizes()), "; they must match");
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " has dtype ",
                   dtype_name(t.scalar_type()), " but x has dtype ", dtype_name(x.scalar_type()),
                   "; they must match");
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ",
                    x.device(), "; they must be on one device");
}

void check_coefficient(const char* name, double v, bool nonnegative) {
  TORCH_CHECK_VALUE(std::isfinite(v), name, "=", float_str(v), " must be finite");
  TORCH_CHECK_VALUE(!nonnegative || v >= 0, name, "=", float_str(v), " must be >= 0");
}

// float32 math (16/32-bit states): a coefficient float32 rounds to inf would turn inf * 0 into NaN.
void check_fits_float32(const char* name, double v, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(std::abs(v) < kF32Overflow, name, "=", float_str(v),
                    " does not fit float32, the math type of ", dtype_name(dtype), " states (|", name,
                    "| must be below 3.4028235e38); use float64 states");
}

struct StepArgs {
  const at::Tensor& x;
  const at::Tensor& grad;
  double step_size, noise_scale;
  int64_t seed, offset;
  double prior_weight;
  std::optional<double> clamp_lo, clamp_hi;
  const std::optional<at::Tensor>& noise;
  const std::optional<at::Tensor>& rng_state;
  const std::optional<at::Tensor>& step_size_per_chain;
  const std::optional<at::Tensor>& noise_scale_per_chain;
};

// One coefficient per chain: shape [x.size(0)], a float dtype, x's device. On the CPU the
// values are also checked (finite, >= 0); on CUDA that would need a host sync every step.
void check_per_chain(const char* name, const std::optional<at::Tensor>& t, const at::Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(x.dim() >= 1, name, " needs x with a chain dimension (dim 0); x is a scalar");
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(0), name, " has shape ", shape_str(t->sizes()),
                    " but must be (", x.size(0), ",): one value per chain (dim 0 of x)");
  check_float_tensor(name, *t);
  TORCH_CHECK_VALUE(t->device() == x.device(), name, " is on ", t->device(), " but x is on ", x.device(),
                    "; they must be on one device");
  if (t->is_cpu() && t->numel() > 0) {
    const at::Tensor bad = (~at::isfinite(*t)) | (*t < 0);
    if (bad.any().item<bool>()) {
      const int64_t i = bad.nonzero()[0][0].item<int64_t>();
      TORCH_CHECK_VALUE(false, name, "[", i, "]=", float_str((*t)[i].item<double>()),
                        " must be finite and >= 0");
    }
  }
}

void check_step(const StepArgs& a) {
  check_float_tensor("x", a.x);
  check_like_x("grad", a.grad, a.x);
  if (a.noise.has_value()) check_like_x("noise", *a.noise, a.x);
  if (a.rng_state.has_value()) {
    const at::Tensor& st = *a.rng_state;
    TORCH_CHECK_VALUE(st.scalar_type() == at::kLong && st.numel() == 2,
                      "rng_state must be an int64 tensor of 2 elements (seed, base offset)");
    TORCH_CHECK_VALUE(st.device() == a.x.device(), "rng_state is on ", st.device(), " but x is on ",
                      a.x.device(), "; they must be on one device");
  }
  check_per_chain("step_size_per_chain", a.step_size_per_chain, a.x);
  check_per_chain("noise_scale_per_chain", a.noise_scale_per_chain, a.x);
  check_coefficient("step_size", a.step_size, true);
  check_coefficient("noise_scale", a.noise_scale, true);
  check_coefficient("prior_weight", a.prior_weight, false);
  if (a.x.scalar_type() != at::kDouble) {
    check_fits_float32("step_size", a.step_size, a.x.scalar_type());
    check_fits_float32("noise_scale", a.noise_scale, a.x.scalar_type());
    check_fits_float32("prior_weight", a.prior_weight, a.x.scalar_type());
  }
  TORCH_CHECK_VALUE(!(a.clamp_lo && std::isnan(*a.clamp_lo)),
                    "clamp lower bound is NaN; bounds must be numbers or None");
  TORCH_CHECK_VALUE(!(a.clamp_hi && std::isnan(*a.clamp_hi)),
                    "clamp upper bound is NaN; bounds must be numbers or None");
  TORCH_CHECK_VALUE(!(a.clamp_lo && a.clamp_hi && *a.clamp_lo > *a.clamp_hi), "clamp=(",
                    float_str(*a.clamp_lo), ", ", float_str(*a.clamp_hi), ") has lo > hi; need lo <= hi");
  if (!a.noise.has_value() && !a.rng_state.has_value()) {
    const uint64_t groups = (static_cast<uint64_t>(a.x.numel()) + 3) / 4;
    const uint64_t offset = static_cast<uint64_t>(a.offset);
    // offset + groups <= 2^64, written without overflow
    TORCH_CHECK_VALUE(offset == 0 || groups <= std::numeric_limits<uint64_t>::max() - offset + 1,
                      "offset=", offset, " + ceil(numel/4)=", groups,
                      " passes 2**64: the noise counter would wrap and repeat noise; use a smaller offset");
  }
}

void check_inplace_target(const at::Tensor& x) {
  TORCH_CHECK_VALUE(!(x.requires_grad() && c10::GradMode::is_enabled()),
                    "langevin_step_ cannot update x in place while it requires grad (autograd does "
                    "not track the in-place op); use langevin_step, detach x, or run under torch.no_grad()");
  if (x.numel() == 0) return;  // nothing is written
  for (int64_t d = 0; d < x.dim(); ++d) {
    TORCH_CHECK_VALUE(!(x.stride(d) == 0 && x.size(d) > 1),
                      "x is an expanded view (stride 0): its elements overlap in memory and cannot be "
                      "updated in place; pass x.contiguous() or use langevin_step");
  }
  TORCH_CHECK_VALUE(!overlaps_itself(x), "x is a view whose elements overlap in memory (shape ",
                    shape_str(x.sizes()), ", strides ", shape_str(x.strides()),
                    ") and cannot be updated in place; pass x.contiguous() or use langevin_step");
}

// The kernels read per-chain coefficients in their math type (float64 for float64 states).
std::optional<at::Tensor> in_math_type(const std::optional<at::Tensor>& t, const at::Tensor& x) {
  if (!t.has_value()) return std::nullopt;
  const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return t->to(math).contiguous();
}

void launch(const StepArgs& a, const at::Tensor& out) {
  const double inf = std::numeric_limits<double>::infinity();
  raw_step(runs_native(a.x))
      .call(a.x.contiguous(), a.grad.contiguous(), contiguous(a.noise), out, a.step_size,
            a.noise_scale, a.prior_weight, a.clamp_lo.value_or(-inf), a.clamp_hi.value_or(inf),
            a.seed, a.offset, a.rng_state, in_math_type(a.step_size_per_chain, a.x),
            in_math_type(a.noise_scale_per_chain, a.x));
}

// ----------------------------------------------------------------------------- kernels

at::Tensor langevin_step(const at::Tensor& x, const at::Tensor& grad, double step_size,
                         double noise_scale, int64_t seed, int64_t offset, double prior_weight,
                         std::optional<double> clamp_lo, std::optional<double> clamp_hi,
                         const std::optional<at::Tensor>& noise,
                         const std::optional<at::Tensor>& rng_state,
                         const std::optional<at::Tensor>& step_size_per_chain,
                         const std::optional<at::Tensor>& noise_scale_per_chain) {
  const StepArgs a{x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
                   noise, rng_state, step_size_per_chain, noise_scale_per_chain};
  check_step(a);
  at::Tensor out = empty_contiguous(x);
  if (x.numel() > 0) launch(a, out);
  return out;
}

// Per-chain L2 norms of grad into `out` ([x.size(0)], float32, or float64 for float64 states).
void check_grad_norm_out(const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "grad_norm_out needs x with a chain dimension (dim 0); x is a scalar");
  const at::ScalarType wide = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_VALUE(out.dim() == 1 && out.size(0) == x.size(0), "grad_norm_out has shape ",
                    shape_str(out.sizes()), " but must be (", x.size(0), ",): one norm per chain (dim 0 of x)");
  TORCH_CHECK_TYPE(out.scalar_type() == wide, "grad_norm_out has dtype ", dtype_name(out.scalar_type()),
                   " but must be ", dtype_name(wide), " for ", dtype_name(x.scalar_type()), " states");
  TORCH_CHECK_VALUE(out.device() == x.device(), "grad_norm_out is on ", out.device(), " but x is on ",
                    x.device(), "; they must be on one device");
  TORCH_CHECK_VALUE(out.is_contiguous(), "grad_norm_out must be contiguous");
}

// Row sums of squares (one row per chain), then the square root. Eight partial sums per
// row in the math type (float, double for float64) let the compiler vectorise the loop;
// like torch.linalg.vector_norm, the sum is in float32 for 16/32-bit states.
template <typename scalar_t>
void row_norms_cpu(const at::Tensor& grad, const at::Tensor& out) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  constexpr int kLanes = 8;
  const int64_t rows = out.size(0);
  const int64_t len = grad.numel() / rows;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  acc_t* o = out.mutable_data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(len, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = g + r * len;
      acc_t acc[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= len; i += kLanes) {
        for (int k = 0; k < kLanes; ++k) {
          const acc_t v = static_cast<acc_t>(row[i + k]);
          acc[k] += v * v;
        }
      }
      for (int k = 0; i < len; ++i, ++k) {
        const acc_t v = static_cast<acc_t>(row[i]);
        acc[k] += v * v;
      }
      acc_t total = 0;
      for (int k = 0; k < kLanes; ++k) total += acc[k];
      o[r] = std::sqrt(total);
    }
  });
}

void grad_norms(const at::Tensor& grad, const at::Tensor& out) {
  if (out.numel() == 0) return;
  // Short CPU rows (toy and latent chains): the loop below, which beats ATen's reduction
  // there (4096 x 32: 16 vs 42 us); long rows (images): ATen's vectorised reduction.
  if (grad.is_cpu() && grad.numel() < 256 * out.size(0)) {
    const at::Tensor g = grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_norms", [&] {
      row_norms_cpu<scalar_t>(g, out);
    });
    return;
  }
  at::linalg_vector_norm_out(const_cast<at::Tensor&>(out), grad.reshape({out.size(0), -1}), 2, {1}, false,
                             out.scalar_type());
}

void langevin_step_(const at::Tensor& x, const at::Tensor& grad, double step_size,
                    double noise_scale, int64_t seed, int64_t offset, double prior_weight,
                    std::optional<double> clamp_lo, std::optional<double> clamp_hi,
                    const std::optional<at::Tensor>& noise,
                    const std::optional<at::Tensor>& rng_state,
                    const std::optional<at::Tensor>& grad_norm_out,
                    const std::optional<at::Tensor>& step_size_per_chain,
                    const std::optional<at::Tensor>& noise_scale_per_chain) {
  const StepArgs a{x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
                   noise, rng_state, step_size_per_chain, noise_scale_per_chain};
  check_step(a);
  check_inplace_target(x);
  if (grad_norm_out.has_value()) {
    check_grad_norm_out(*grad_norm_out, x);
    grad_norms(grad, *grad_norm_out);  // before the update: grad may share memory with x
  }
  if (x.numel() == 0) return;
  // Contiguous x is written where it lies. Other layouts go through a contiguous buffer, so
  // that noise element i is always the i-th element in row-major order; so does an x that
  // grad or noise overlaps (written in place, an element of x could change before it is
  // read as grad).
  if (x.is_contiguous() && !shares_memory(x, grad) && !shares_memory(x, noise)) {
    launch(a, x);
    return;
  }
  at::Tensor target = empty_contiguous(x);
  launch(a, target);
  x.copy_(target);
}

}  // namespace

TORCH_LIBRARY_IMPL(langevin_kernels, CPU, m) {
  m.impl("langevin_step", &langevin_step);
  m.impl("langevin_step_", &langevin_step_);
}

#if defined(LANGEVIN_WITH_CUDA)
TORCH_LIBRARY_IMPL(langevin_kernels, CUDA, m) {
  m.impl("langevin_step", &langevin_step);
  m.impl("langevin_step_", &langevin_step_);
}
#endif
