// Argument checks of the internal op _ext_kinetic_step (schema in register.cpp), shared by its
// CPU and CUDA kernels. The op is reachable as torch.ops.langevin_kernels._ext_kinetic_step, so
// everything a kernel indexes is checked here: a mismatched call raises (ValueError for sizes,
// devices and layouts, TypeError for dtypes), it never reads or writes past a buffer.
// Host-only; light headers, since nvcc parses this file too.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace langevin {

inline void check_kinetic_operand(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), "_ext_kinetic_step: ", name, " is on ", t.device(),
                    " but x is on ", x.device(), "; they must be on one device");
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "_ext_kinetic_step: ", name, " has dtype ",
                   t.scalar_type(), " but x has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(t.numel() == x.numel(), "_ext_kinetic_step: ", name, " has ", t.numel(),
                    " elements but x has ", x.numel(), "; they must match");
  TORCH_CHECK_VALUE(t.is_contiguous(), "_ext_kinetic_step: ", name, " must be contiguous");
}

// x on a device of `device_type`, every other tensor like x, rng_state int64[2] on x's device.
inline void check_kinetic_args(c10::DeviceType device_type, const at::Tensor& x, const at::Tensor& v,
                               const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                               const at::Tensor& x_out, const at::Tensor& v_out,
                               const std::optional<at::Tensor>& rng_state) {
  TORCH_CHECK_VALUE(x.device().type() == device_type, "_ext_kinetic_step: x is on ", x.device(),
                    "; this kernel runs ", c10::DeviceTypeName(device_type, true), " tensors");
  const at::ScalarType t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "_ext_kinetic_step: x has dtype ", t, "; allowed: float32, float64, float16, bfloat16");
  TORCH_CHECK_VALUE(x.is_contiguous(), "_ext_kinetic_step: x must be contiguous");
  check_kinetic_operand("v", v, x);
  check_kinetic_operand("grad", grad, x);
  if (noise.has_value()) check_kinetic_operand("noise", *noise, x);
  check_kinetic_operand("x_out", x_out, x);
  check_kinetic_operand("v_out", v_out, x);
  if (rng_state.has_value()) {
    const at::Tensor& st = *rng_state;
    TORCH_CHECK_VALUE(st.scalar_type() == at::kLong && st.numel() == 2 && st.is_contiguous(),
                      "_ext_kinetic_step: rng_state must be a contiguous int64 tensor of 2 elements "
                      "(seed, base offset), got ", st.scalar_type(), " with ", st.numel(), " elements");
    TORCH_CHECK_VALUE(st.device() == x.device(), "_ext_kinetic_step: rng_state is on ", st.device(),
                      " but x is on ", x.device(), "; they must be on one device");
  }
}

}  // namespace langevin
