// CUDA kernel of the internal op _ext_kinetic_step (schema and contract in ../register.cpp;
// checks shared with the CPU kernel in ../kinetic_checks.h).
//
// A thread owns whole groups of four elements: one Philox counter gives the group's four
// normals (normals_at of ../philox.h, the stream of docs/noise.md), so the noise is the one
// lk.philox_normal draws whatever the launch shape. Threads stride over the groups; the
// optional rng_state is read inside the kernel, so a captured CUDA graph draws fresh noise
// on every replay.
//
// Headers: light ones only (see langevin_cuda.cu: nvcc parses them once per architecture).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../kinetic_checks.h"
#include "../kinetic_update.h"

namespace {

using langevin::KineticCoeffs;

constexpr int kThreads = 256;
// Grid cap: more blocks than an H100/H200 keeps resident (132 SMs x 8 blocks of 256); the
// grid-stride loop covers the rest, so no per-device occupancy query is needed.
constexpr int64_t kMaxBlocks = 2048;

// float32 math for 16- and 32-bit states, double for float64 (noise stays float32).
template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct KineticParams {
  uint64_t seed, offset;
  const int64_t* rng_state;  // nullptr: seed/offset as given
  int64_t numel;
};

// x_out/v_out deliberately not __restrict__: they may be x and v (the in-place op).
template <typename T, bool kExplicitNoise>
__global__ void __launch_bounds__(kThreads)
    kinetic_kernel(const T* x, const T* v, const T* g, const T* noise, T* x_out, T* v_out,
                   KineticCoeffs<math_t<T>> c, KineticParams p) {
  using M = math_t<T>;
  uint64_t seed = p.seed, offset = p.offset;
  if (!kExplicitNoise && p.rng_state != nullptr) {
    seed = static_cast<uint64_t>(p.rng_state[0]);
    offset += static_cast<uint64_t>(p.rng_state[1]);
  }
  const int64_t groups = (p.numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t grp = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; grp < groups;
       grp += stride) {
    float n[4];
    if (!kExplicitNoise) langevin::normals_at(seed, offset + static_cast<uint64_t>(grp), n);
    const int64_t base = 4 * grp;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = base + k;
      if (i >= p.numel) break;
      const M xi = kExplicitNoise ? static_cast<M>(noise[i]) : static_cast<M>(n[k]);
      M xn, vn;
      langevin::kinetic_update<M>(static_cast<M>(x[i]), static_cast<M>(v[i]), static_cast<M>(g[i]), xi,
                                  c, &xn, &vn);
      x_out[i] = static_cast<T>(xn);
      v_out[i] = static_cast<T>(vn);
    }
  }
}

template <typename T>
void launch_kinetic(const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad,
                    const std::optional<at::Tensor>& noise, at::Tensor& x_out, at::Tensor& v_out,
                    const KineticCoeffs<math_t<T>>& c, const KineticParams& p) {
  const int64_t needed = ((p.numel + 3) / 4 + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(needed < kMaxBlocks ? needed : kMaxBlocks);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const T* noise_ptr = noise.has_value() ? noise->const_data_ptr<T>() : nullptr;
  if (noise_ptr != nullptr) {
    kinetic_kernel<T, true><<<blocks, kThreads, 0, stream>>>(
        x.const_data_ptr<T>(), v.const_data_ptr<T>(), grad.const_data_ptr<T>(), noise_ptr,
        x_out.mutable_data_ptr<T>(), v_out.mutable_data_ptr<T>(), c, p);
  } else {
    kinetic_kernel<T, false><<<blocks, kThreads, 0, stream>>>(
        x.const_data_ptr<T>(), v.const_data_ptr<T>(), grad.const_data_ptr<T>(), nullptr,
        x_out.mutable_data_ptr<T>(), v_out.mutable_data_ptr<T>(), c, p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ext_kinetic_step_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& grad,
                           const std::optional<at::Tensor>& noise, at::Tensor x_out, at::Tensor v_out,
                           double step_size, double friction, double kick, int64_t seed, int64_t offset,
                           const std::optional<at::Tensor>& rng_state) {
  langevin::check_kinetic_args(c10::DeviceType::CUDA, x, v, grad, noise, x_out, v_out, rng_state);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const KineticParams p{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                        rng_state.has_value() ? rng_state->const_data_ptr<int64_t>() : nullptr,
                        x.numel()};
  const KineticCoeffs<double> c = langevin::kinetic_coeffs(step_size, friction, kick);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_ext_kinetic_step_cuda", [&] {
    using M = math_t<scalar_t>;
    launch_kinetic<scalar_t>(x, v, grad, noise, x_out, v_out, langevin::cast_coeffs<M>(c), p);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(langevin_kernels, CUDA, m) {
  m.impl("_ext_kinetic_step", &ext_kinetic_step_cuda);
}
