// CUDA kernels of the internal ops declared in ../register.cpp (same contract as
// ../cpu/langevin_cpu.cpp): x, grad, noise and out are contiguous CUDA tensors of
// one dtype, out may alias x, clamp bounds are +-inf when unset, seed/offset are
// uint64 bit patterns, and the optional rng_state (int64[2] = seed, base offset)
// is read inside the kernels so that a captured CUDA graph draws fresh noise on
// every replay.
//
// Layout of the work: a thread owns whole "chunks" of kChunk elements, where a
// chunk is one 16-byte vector of x, grad and y for 32- and 16-bit types (float4:
// 4 elements = one Philox group; 8 halfs = two groups) and two 16-byte vectors
// for float64 (4 doubles = one group). So every Philox call (csrc/philox.h,
// docs/noise.md) serves exactly four elements, whatever the launch shape, and
// the noise equals the CPU kernel's. Threads stride over the chunks with a grid
// of one resident wave; the last, partial chunk and tensors whose pointers are
// not 16-byte aligned (views with a storage offset) take the element-wise path.
//
// Headers: only light ones, because nvcc parses them once for the host and once
// per GPU architecture. ATen/cuda/CUDAContext.h would also pull in cusparse.h,
// which minimal CUDA toolkits lack (docs/building.md); ATen/ATen.h instead of
// ATen/core/Tensor.h (Tensor methods only) costs ~40% more parse time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../philox.h"

namespace {

using langevin::langevin_update;
using langevin::normals_at;

constexpr int kThreads = 256;

// float32 math for 16- and 32-bit states, double for float64 (noise stays float32).
template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Elements per chunk: whole Philox groups, and at least one 16-byte vector.
template <typename T>
constexpr int chunk_elems() {
  return sizeof(T) == 2 ? 8 : 4;
}

template <typename T>
struct alignas(16) Chunk {
  T v[chunk_elems<T>()];
};

template <typename T>
__device__ __forceinline__ Chunk<T> load_chunk(const T* p) {
  return *reinterpret_cast<const Chunk<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* p, const Chunk<T>& c) {
  *reinterpret_cast<Chunk<T>*>(p) = c;
}

struct StepParams {
  double a, s, lam, lo, hi;
  uint64_t seed, offset;
  const int64_t* rng_state;  // nullptr: use seed/offset as given
  int64_t numel;
  // Per-chain coefficients in the math type (nullptr: a, s above); element i is in chain i / row_len.
  const void* a_per_chain;
  const void* s_per_chain;
  int64_t row_len;
};

// The coefficient of element i: its chain's entry when per-chain values are given.
template <typename M>
__device__ __forceinline__ M chain_coeff(const void* per_chain, M scalar, int64_t i, int64_t row_len) {
  return per_chain == nullptr ? scalar : static_cast<const M*>(per_chain)[i / row_len];
}

// seed := rng_state[0], offset := rng_state[1] + offset, read on the device.
__device__ __forceinline__ void resolve_seed_offset(const int64_t* rng_state, uint64_t& seed,
                                                    uint64_t& offset) {
  if (rng_state != nullptr) {
    seed = static_cast<uint64_t>(rng_state[0]);
    offset += static_cast<uint64_t>(rng_state[1]);
  }
}

// Element-wise update of elements [base, base + count) of one chunk (count <=
// kChunk); base is a multiple of 4, so element base + k uses group base/4 + k/4,
// lane k % 4. Unrolled over the chunk so that the normals stay in registers.
template <typename T, bool kHasNoise>
__device__ __forceinline__ void step_elementwise(const T* x, const T* g, const T* noise, T* y,
                                                 int64_t base, int count, uint64_t seed,
                                                 uint64_t offset, math_t<T> a, math_t<T> s,
                                                 math_t<T> lam, math_t<T> lo, math_t<T> hi,
                                                 const StepParams& p) {
  using M = math_t<T>;
  constexpr int kChunk = chunk_elems<T>();
  float n[kChunk];
#pragma unroll
  for (int k = 0; k < kChunk; ++k) {
    if (k >= count) break;
    const int64_t i = base + k;
    if (!kHasNoise && k % 4 == 0) normals_at(seed, offset + static_cast<uint64_t>(i / 4), n + k);
    const M xi = kHasNoise ? static_cast<M>(noise[i]) : static_cast<M>(n[k]);
    const M ai = chain_coeff<M>(p.a_per_chain, a, i, p.row_len);
    const M si = chain_coeff<M>(p.s_per_chain, s, i, p.row_len);
    y[i] = static_cast<T>(langevin_update<M>(static_cast<M>(x[i]), static_cast<M>(g[i]), xi, ai, si,
                                             lam, lo, hi));
  }
}

// x, y deliberately not __restrict__: out may alias x (the in-place op).
template <typename T, bool kHasNoise, bool kVector>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const T* x, const T* g, const T* noise, T* y, StepParams p) {
  using M = math_t<T>;
  constexpr int kChunk = chunk_elems<T>();
  const M a = static_cast<M>(p.a), s = static_cast<M>(p.s), lam = static_cast<M>(p.lam);
  const M lo = static_cast<M>(p.lo), hi = static_cast<M>(p.hi);
  uint64_t seed = p.seed, offset = p.offset;
  if (!kHasNoise) resolve_seed_offset(p.rng_state, seed, offset);

  const int64_t chunks = (p.numel + kChunk - 1) / kChunk;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += stride) {
    const int64_t base = c * kChunk;
    const int64_t left = p.numel - base;
    if (!kVector || left < kChunk) {
      step_elementwise<T, kHasNoise>(x, g, noise, y, base, static_cast<int>(left < kChunk ? left : kChunk),
                                     seed, offset, a, s, lam, lo, hi, p);
      continue;
    }
    // Loads first, so they are in flight while Philox runs.
    const Chunk<T> xv = load_chunk(x + base);
    const Chunk<T> gv = load_chunk(g + base);
    Chunk<T> nv;
    float n[kChunk];
    if (kHasNoise) {
      nv = load_chunk(noise + base);
    } else {
#pragma unroll
      for (int j = 0; j < kChunk / 4; ++j) {
        normals_at(seed, offset + static_cast<uint64_t>(base / 4 + j), n + 4 * j);
      }
    }
    Chunk<T> yv;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const M xi = kHasNoise ? static_cast<M>(nv.v[k]) : static_cast<M>(n[k]);
      const M ak = chain_coeff<M>(p.a_per_chain, a, base + k, p.row_len);
      const M sk = chain_coeff<M>(p.s_per_chain, s, base + k, p.row_len);
      yv.v[k] = static_cast<T>(langevin_update<M>(static_cast<M>(xv.v[k]), static_cast<M>(gv.v[k]),
                                                  xi, ak, sk, lam, lo, hi));
    }
    store_chunk(y + base, yv);
  }
}

template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    normal_kernel(float* out, int64_t numel, uint64_t seed, uint64_t offset,
                  const int64_t* rng_state) {
  resolve_seed_offset(rng_state, seed, offset);
  const int64_t groups = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t grp = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; grp < groups;
       grp += stride) {
    float4 n;
    normals_at(seed, offset + static_cast<uint64_t>(grp), reinterpret_cast<float*>(&n));
    const int64_t base = 4 * grp;
    if (kVector && base + 4 <= numel) {
      *reinterpret_cast<float4*>(out + base) = n;
    } else {
      const float* nn = reinterpret_cast<const float*>(&n);
      for (int k = 0; k < 4 && base + k < numel; ++k) out[base + k] = nn[k];
    }
  }
}

__global__ void philox_kernel(const int64_t* counters, int64_t* out, int64_t rows, uint32_t k0,
                              uint32_t k1) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  uint32_t ctr[4];
  for (int k = 0; k < 4; ++k) ctr[k] = static_cast<uint32_t>(counters[4 * row + k]);
  langevin::philox4x32_10(ctr, k0, k1);
  for (int k = 0; k < 4; ++k) out[4 * row + k] = static_cast<int64_t>(ctr[k]);
}

// ----------------------------------------------------------------------------- launch

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Multiprocessors of the current device, queried once per device.
int current_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int sms = device < kMaxDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (device < kMaxDevices) cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// Resident blocks of kThreads per multiprocessor for `kernel` (its registers decide).
template <typename Kernel>
int blocks_per_sm(Kernel kernel) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  return per_sm > 0 ? per_sm : 1;
}

// Blocks for `items` thread-items: at most one resident wave (threads then
// stride over the rest), fewer when the items need fewer. One wave keeps every
// SM busy to the end with equal shares and no tail wave.
int64_t grid_for(int64_t items, int per_sm) {
  const int64_t wave = static_cast<int64_t>(current_sm_count()) * per_sm;
  const int64_t needed = (items + kThreads - 1) / kThreads;
  return needed < wave ? needed : wave;
}

template <typename T, bool kHasNoise, bool kVector>
void launch_step(const at::Tensor& x, const at::Tensor& grad, const T* noise, at::Tensor& out,
                 const StepParams& p) {
  auto kernel = step_kernel<T, kHasNoise, kVector>;
  static const int per_sm = blocks_per_sm(kernel);  // one query per instantiation
  const int64_t chunks = (p.numel + chunk_elems<T>() - 1) / chunk_elems<T>();
  const int64_t blocks = grid_for(chunks, per_sm);
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<T>(), grad.const_data_ptr<T>(), noise, out.mutable_data_ptr<T>(), p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void step_typed(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                at::Tensor& out, const StepParams& p) {
  const T* noise_ptr = noise.has_value() ? noise->const_data_ptr<T>() : nullptr;
  const bool vector = aligned16(x.const_data_ptr()) && aligned16(grad.const_data_ptr()) &&
                      aligned16(out.const_data_ptr()) &&
                      (noise_ptr == nullptr || aligned16(noise_ptr));
  if (noise_ptr != nullptr && vector) {
    launch_step<T, true, true>(x, grad, noise_ptr, out, p);
  } else if (noise_ptr != nullptr) {
    launch_step<T, true, false>(x, grad, noise_ptr, out, p);
  } else if (vector) {
    launch_step<T, false, true>(x, grad, nullptr, out, p);
  } else {
    launch_step<T, false, false>(x, grad, nullptr, out, p);
  }
}

// ----------------------------------------------------------------------------- checks

void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " is on ", t.device(),
              " but x is on ", x.device(), "; both must be on the same CUDA device");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type());
  TORCH_CHECK(t.numel() == x.numel(), op, ": ", name, " has ", t.numel(), " elements but x has ",
              x.numel());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

const int64_t* rng_state_ptr(const char* op, const std::optional<at::Tensor>& rng_state,
                             const at::Device& device) {
  if (!rng_state.has_value()) return nullptr;
  const at::Tensor& st = *rng_state;
  TORCH_CHECK(st.scalar_type() == at::kLong && st.numel() == 2 && st.is_contiguous(), op,
              ": rng_state must be a contiguous int64 tensor of 2 elements (seed, base offset), got ",
              st.scalar_type(), " with ", st.numel(), " elements");
  TORCH_CHECK(st.device() == device, op, ": rng_state is on ", st.device(), " but the data is on ",
              device, "; they must be on one device");
  return st.const_data_ptr<int64_t>();
}

// ----------------------------------------------------------------------------- ops

// Per-chain coefficients of the raw op: R contiguous values in the math type, R dividing numel.
const void* per_chain_ptr(const char* op, const char* name, const std::optional<at::Tensor>& t,
                          const at::Tensor& x) {
  if (!t.has_value()) return nullptr;
  const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(t->device() == x.device() && t->scalar_type() == math && t->is_contiguous(), op, ": ", name,
              " must be a contiguous ", math, " tensor on ", x.device(), ", got ", t->scalar_type(), " on ",
              t->device());
  TORCH_CHECK(t->numel() > 0 ? x.numel() % t->numel() == 0 : x.numel() == 0, op, ": ", name, " has ",
              t->numel(), " elements, which must divide x's ", x.numel());
  return t->const_data_ptr();
}

void ext_step_cuda(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                   at::Tensor out, double step_size, double noise_scale, double prior_weight,
                   double clamp_lo, double clamp_hi, int64_t seed, int64_t offset,
                   const std::optional<at::Tensor>& rng_state,
                   const std::optional<at::Tensor>& step_size_per_chain,
                   const std::optional<at::Tensor>& noise_scale_per_chain) {
  constexpr const char* op = "_ext_step";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  check_like_x(op, "grad", grad, x);
  check_like_x(op, "out", out, x);
  if (noise.has_value()) check_like_x(op, "noise", *noise, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const void* a_rows = per_chain_ptr(op, "step_size_per_chain", step_size_per_chain, x);
  const void* s_rows = per_chain_ptr(op, "noise_scale_per_chain", noise_scale_per_chain, x);
  TORCH_CHECK(!(a_rows && s_rows) || step_size_per_chain->numel() == noise_scale_per_chain->numel(), op,
              ": step_size_per_chain and noise_scale_per_chain must have one entry per chain each");
  const int64_t rows = a_rows ? step_size_per_chain->numel() : s_rows ? noise_scale_per_chain->numel() : 1;
  const StepParams p{step_size, noise_scale, prior_weight, clamp_lo, clamp_hi,
                     static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                     rng_state_ptr(op, rng_state, x.device()), x.numel(), a_rows, s_rows,
                     rows > 0 ? x.numel() / rows : 1};
  if (p.numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_ext_step_cuda", [&] {
    step_typed<scalar_t>(x, grad, noise, out, p);
  });
}

void ext_normal_cuda(at::Tensor out, int64_t seed, int64_t offset,
                     const std::optional<at::Tensor>& rng_state) {
  constexpr const char* op = "_ext_normal";
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kFloat && out.is_contiguous(), op,
              ": out must be a contiguous float32 CUDA tensor, got ", out.scalar_type(), " on ",
              out.device());
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t* st = rng_state_ptr(op, rng_state, out.device());
  const int64_t numel = out.numel();
  if (numel == 0) return;
  float* op_ptr = out.mutable_data_ptr<float>();
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  const int64_t groups = (numel + 3) / 4;
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (aligned16(op_ptr)) {
    static const int per_sm = blocks_per_sm(normal_kernel<true>);
    normal_kernel<true><<<grid_for(groups, per_sm), kThreads, 0, stream>>>(op_ptr, numel, s, o, st);
  } else {
    static const int per_sm = blocks_per_sm(normal_kernel<false>);
    normal_kernel<false><<<grid_for(groups, per_sm), kThreads, 0, stream>>>(op_ptr, numel, s, o, st);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor ext_philox_cuda(const at::Tensor& counters, int64_t key0, int64_t key1) {
  TORCH_CHECK(counters.is_cuda() && counters.scalar_type() == at::kLong && counters.dim() == 2 &&
                  counters.size(1) == 4,
              "_ext_philox: counters must be an int64 CUDA tensor of shape [N, 4], got ",
              counters.scalar_type(), " of shape ", counters.sizes(), " on ", counters.device());
  const c10::cuda::CUDAGuard guard(counters.device());
  const at::Tensor c = counters.contiguous();
  at::Tensor out = c.new_empty(c.sizes());
  const int64_t rows = c.size(0);
  if (rows == 0) return out;
  const int64_t blocks = (rows + kThreads - 1) / kThreads;
  philox_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      c.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), rows,
      static_cast<uint32_t>(key0), static_cast<uint32_t>(key1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(langevin_kernels, CUDA, m) {
  m.impl("_ext_step", &ext_step_cuda);
  m.impl("_ext_normal", &ext_normal_cuda);
  m.impl("_ext_philox", &ext_philox_cuda);
}
