// Schemas of the extension's internal ops. The public, autograd-aware ops
// (langevin_kernels::langevin_step / langevin_step_) are defined in Python
// (langevin_kernels/ops.py) so that they exist even when this extension is not
// built; their CPU and CUDA implementations call these ops when the "cpp" or
// "cuda" backend is selected. Kernels: cpu/langevin_cpu.cpp, cuda/langevin_cuda.cu.
//
// Contract shared by the kernels (the Python side guarantees it):
//   x, grad, noise, out: contiguous, same dtype, same numel; out may alias x.
//   clamp_lo/clamp_hi: +-inf when no clamp. seed/offset: uint64 bit patterns.
//   rng_state (optional): int64[2] on x's device = (seed, base offset); when given,
//   the kernel uses seed = rng_state[0] and offset = rng_state[1] + offset, read on
//   the device so that a captured CUDA graph draws fresh noise on every replay.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A Python module with no methods: importing it runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY_FRAGMENT(langevin_kernels, m) {
  m.def(
      "_ext_step(Tensor x, Tensor grad, Tensor? noise, Tensor(a!) out, float step_size, "
      "float noise_scale, float prior_weight, float clamp_lo, float clamp_hi, int seed, "
      "int offset, Tensor? rng_state) -> ()");
  m.def("_ext_normal(Tensor(a!) out, int seed, int offset, Tensor? rng_state) -> ()");
  m.def("_ext_philox(Tensor counters, int key0, int key1) -> Tensor");
}
