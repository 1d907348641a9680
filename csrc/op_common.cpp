// Definitions of op_common.h, and the `_set_route` kernel that fills the route table.
#include "op_common.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cmath>
#include <utility>
#include <vector>

namespace langevin {
namespace {

constexpr std::array<at::ScalarType, 4> kDtypes = {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble};
// Slots 0-3: CPU, 4-7: CUDA, in kDtypes order. Atomic: Python may change the selection while
// another thread runs an op.
std::array<std::atomic<bool>, 8> g_native = {true, true, true, true, true, true, true, true};

void set_route(c10::string_view device_type, at::ScalarType dtype, bool native) {
  const int slot = dtype_slot(dtype);
  TORCH_CHECK_VALUE(slot >= 0, "_set_route: dtype ", dtype, " is not a supported state dtype");
  TORCH_CHECK_VALUE(device_type == "cpu" || device_type == "cuda", "_set_route: device_type '",
                    device_type, "' must be 'cpu' or 'cuda'");
  g_native[(device_type == "cuda" ? 4 : 0) + slot].store(native, std::memory_order_relaxed);
}

}  // namespace

int dtype_slot(at::ScalarType t) {
  for (size_t i = 0; i < kDtypes.size(); ++i) {
    if (kDtypes[i] == t) return static_cast<int>(i);
  }
  return -1;
}

bool runs_native(const at::Tensor& x) {
  const int slot = dtype_slot(x.scalar_type());
  if (slot < 0) return false;
  if (x.is_cpu()) return g_native[slot].load(std::memory_order_relaxed);
  if (x.is_cuda()) return g_native[4 + slot].load(std::memory_order_relaxed);
  return false;
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: {
      std::string name = c10::toString(t);
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      return "torch." + name;
    }
  }
}

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + (sizes.size() == 1 ? ",)" : ")");
}

std::string float_str(double v) {  // Python's repr: shortest round trip, ".0" on integers
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
  std::string s(buf, end);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

bool overlaps_itself(const at::Tensor& x) {
  if (x.numel() <= 1 || x.is_contiguous()) return false;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims of size > 1
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) > 1) dims.emplace_back(x.stride(d), x.size(d));
  }
  std::sort(dims.begin(), dims.end());
  // Cheap proof first: each stride steps past everything the smaller strides reach.
  int64_t reach = 0;
  bool may_overlap = false;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) {
      may_overlap = true;
      break;
    }
    reach += stride * (size - 1);
  }
  if (!may_overlap) return false;
  std::vector<int64_t> offsets{0};  // every element's offset, then look for a repeat
  for (const auto& [stride, size] : dims) {
    std::vector<int64_t> next;
    next.reserve(offsets.size() * size);
    for (int64_t base : offsets) {
      for (int64_t i = 0; i < size; ++i) next.push_back(base + i * stride);
    }
    offsets.swap(next);
  }
  std::sort(offsets.begin(), offsets.end());
  return std::adjacent_find(offsets.begin(), offsets.end()) != offsets.end();
}

bool shares_memory(const at::Tensor& a, const std::optional<at::Tensor>& b) {
  if (!b.has_value() || a.numel() == 0 || b->numel() == 0) return false;
  auto span = [](const at::Tensor& t) {
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += t.stride(d) * (t.size(d) - 1);
    const auto* start = static_cast<const char*>(t.data_ptr());
    return std::make_pair(start, start + t.element_size() * (last + 1));
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(*b);
  return a0 < b1 && b0 < a1;
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

at::Tensor empty_contiguous(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace langevin

TORCH_LIBRARY_FRAGMENT(langevin_kernels, m) {
  m.impl("_set_route", &langevin::set_route);  // no tensor arguments: a catch-all kernel
}
