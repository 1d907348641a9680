// CPU and CUDA kernels of the public kinetic ops kinetic_step and kinetic_step_ (schemas in
// register.cpp, contract in docs/samplers.md): every argument check, the in-place rules, and the
// route to the backend that computes the update.
//
// The checks raise the exception types and messages of the fake kernels in
// langevin_kernels/kinetic_ops.py (TypeError for dtypes, ValueError for values), so a user sees
// one wording whichever device or tracing mode the call took.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "op_common.h"

namespace {

using langevin::contiguous;
using langevin::dtype_name;
using langevin::empty_contiguous;
using langevin::float_str;
using langevin::shape_str;
using langevin::shares_memory;

struct KineticArgs {
  const at::Tensor& x;
  const at::Tensor& v;
  const at::Tensor& grad;
  double step_size, friction, kick;
  int64_t seed, offset;
  const std::optional<at::Tensor>& noise;
  const std::optional<at::Tensor>& rng_state;
};

// ----------------------------------------------------------------------------- checks

void check_coefficients(const KineticArgs& a) {
  TORCH_CHECK_VALUE(std::isfinite(a.step_size) && a.step_size > 0, "step_size=", float_str(a.step_size),
                    " is not allowed: the kinetic step needs a finite step_size > 0");
  TORCH_CHECK_VALUE(std::isfinite(a.friction) && a.friction > 0, "friction=", float_str(a.friction),
                    " is not allowed: the kinetic step needs a finite friction > 0 "
                    "(friction 0 is Hamiltonian dynamics, which does not sample)");
  TORCH_CHECK_VALUE(std::isfinite(a.kick) && a.kick >= 0, "kick=", float_str(a.kick),
                    " is not allowed: the kick (gradient coefficient) must be finite and >= 0");
}

// Shape and device of v, grad or noise; their dtypes may differ from x's (routed, see launch).
void check_like_x(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), name, " has shape ", shape_str(t.sizes()), " but x has shape ",
                    shape_str(x.sizes()), "; they must match");
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device(),
                    "; they must be on one device");
}

void check_tensors(const KineticArgs& a) {
  TORCH_CHECK_TYPE(langevin::dtype_slot(a.x.scalar_type()) >= 0, "x has dtype ", dtype_name(a.x.scalar_type()),
                   "; allowed: float16, bfloat16, float32, float64");
  check_like_x("v", a.v, a.x);
  TORCH_CHECK_TYPE(a.v.scalar_type() == a.x.scalar_type(), "v has dtype ", dtype_name(a.v.scalar_type()),
                   " but x has dtype ", dtype_name(a.x.scalar_type()), "; they must match");
  check_like_x("grad", a.grad, a.x);
  if (a.noise.has_value()) check_like_x("noise", *a.noise, a.x);
  if (a.rng_state.has_value()) {
    const at::Tensor& st = *a.rng_state;
    TORCH_CHECK_VALUE(st.scalar_type() == at::kLong && st.dim() == 1 && st.size(0) == 2 && st.device() == a.x.device(),
                      "rng_state must be an int64 tensor of shape [2] on ", a.x.device(),
                      " (seed, base offset); got ", dtype_name(st.scalar_type()), " shape ", shape_str(st.sizes()),
                      " on ", st.device());
  }
}

void check(const KineticArgs& a) {  // in the order of kinetic_ops._check: the first problem is named
  check_coefficients(a);
  check_tensors(a);
}

// ----------------------------------------------------------------------------- routes

// Must match the native kernels' C++ signature exactly (x_out, v_out by value).
using RawKinetic = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        at::Tensor, at::Tensor, double, double, double, int64_t, int64_t,
                        const std::optional<at::Tensor>&);

const c10::TypedOperatorHandle<RawKinetic>& raw_kinetic(bool native) {
  static const auto ext = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("langevin_kernels::_ext_kinetic_step", "")
                              .typed<RawKinetic>();
  if (native) return ext;
  // _routed_kinetic_step's kernels are registered from Python after this library loads.
  static const auto routed = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("langevin_kernels::_routed_kinetic_step", "")
                                 .typed<RawKinetic>();
  return routed;
}

// The native kernels take one dtype; a grad or noise of another dtype than x goes to Python too,
// where the eager reference computes it (with the selected backend's noise).
bool takes_native_route(const KineticArgs& a) {
  const at::ScalarType t = a.x.scalar_type();
  return langevin::runs_native(a.x) && a.grad.scalar_type() == t &&
         (!a.noise.has_value() || a.noise->scalar_type() == t);
}

void launch(const KineticArgs& a, const at::Tensor& x_out, const at::Tensor& v_out) {
  raw_kinetic(takes_native_route(a))
      .call(a.x.contiguous(), a.v.contiguous(), a.grad.contiguous(), contiguous(a.noise), x_out, v_out,
            a.step_size, a.friction, a.kick, a.seed, a.offset, a.rng_state);
}

// ----------------------------------------------------------------------------- kernels

std::tuple<at::Tensor, at::Tensor> kinetic_step(const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad,
                                                double step_size, double friction, double kick, int64_t seed,
                                                int64_t offset, const std::optional<at::Tensor>& noise,
                                                const std::optional<at::Tensor>& rng_state) {
  const KineticArgs a{x, v, grad, step_size, friction, kick, seed, offset, noise, rng_state};
  check(a);
  at::Tensor x_out = empty_contiguous(x);
  at::Tensor v_out = empty_contiguous(v);
  if (x.numel() > 0) launch(a, x_out, v_out);
  return {x_out, v_out};
}

// Whether the kernel may write x and v where they lie: contiguous (noise element i is the i-th in
// row-major order) and no input overlapping them (an element of x or v could change before it is
// read, e.g. v = buf[1:], grad = buf[:-1]).
bool writes_in_place(const KineticArgs& a) {
  if (!a.x.is_contiguous() || !a.v.is_contiguous() || shares_memory(a.x, a.v)) return false;
  for (const at::Tensor* t : {&a.x, &a.v}) {
    if (shares_memory(*t, a.grad) || shares_memory(*t, a.noise)) return false;
  }
  return true;
}

void kinetic_step_(const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad, double step_size,
                   double friction, double kick, int64_t seed, int64_t offset,
                   const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& rng_state) {
  const KineticArgs a{x, v, grad, step_size, friction, kick, seed, offset, noise, rng_state};
  check(a);
  if (x.numel() == 0) return;
  if (writes_in_place(a)) {
    launch(a, x, v);
    return;
  }
  const at::Tensor x_new = empty_contiguous(x);
  const at::Tensor v_new = empty_contiguous(v);
  launch(a, x_new, v_new);
  x.copy_(x_new);
  v.copy_(v_new);
}

}  // namespace

TORCH_LIBRARY_IMPL(langevin_kernels, CPU, m) {
  m.impl("kinetic_step", &kinetic_step);
  m.impl("kinetic_step_", &kinetic_step_);
}

#if defined(LANGEVIN_WITH_CUDA)
TORCH_LIBRARY_IMPL(langevin_kernels, CUDA, m) {
  m.impl("kinetic_step", &kinetic_step);
  m.impl("kinetic_step_", &kinetic_step_);
}
#endif
