// Shared by the C++ kernels of the public ops (step_op.cpp: langevin_step[_], kinetic_op.cpp:
// kinetic_step[_]): the route table Python fills, messages formatted as Python prints them, and
// the memory-layout tests behind the in-place rules. Definitions in op_common.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace langevin {

// Whether x's (device type, dtype) runs the native kernel now; false sends the call back to the
// backend Python selected (eager or triton) through a `_routed_*` op. Python pushes the table
// through `_set_route` (dispatch.push_routes); until then every pair runs natively.
bool runs_native(const at::Tensor& x);

// Index of a state dtype (float32, float16, bfloat16, float64) in the route table; -1 otherwise.
int dtype_slot(at::ScalarType t);

// As Python prints them: torch.float32, (3, 4), 0.1.
std::string dtype_name(at::ScalarType t);
std::string shape_str(at::IntArrayRef sizes);
std::string float_str(double v);

// Exact: whether two elements of x share memory (sizes and strides only, no data reads).
bool overlaps_itself(const at::Tensor& x);

// Whether the memory spans of a and b intersect (conservative: interleaved views count).
bool shares_memory(const at::Tensor& a, const std::optional<at::Tensor>& b);

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t);

// A fresh row-major tensor of t's shape, dtype and device (what the kernels write).
at::Tensor empty_contiguous(const at::Tensor& t);

}  // namespace langevin
