// Every schema of the langevin_kernels op library, in one place (docs/op.md).
//
// Public ops (autograd and fake kernels are added from Python: langevin_kernels/ops.py for
// langevin_step[_], langevin_kernels/kinetic_ops.py for kinetic_step[_]):
//   langevin_step   y = clamp(x - a (grad + lam x) + s xi, lo, hi), out of place
//   langevin_step_  the same, written into x; optionally also the per-chain norms of grad
//   kinetic_step    one fused BAOAB step B(kick) A(h/2) O(h) A(h/2) of (x, v), out of place
//   kinetic_step_   the same, written into x and v
// Their CPU/CUDA kernels (step_op.cpp, kinetic_op.cpp) check every argument, then run the
// native kernel below or, when Python selected the eager or triton backend, `_routed_step` /
// `_routed_kinetic_step` (one route table for both, op_common.h).
//
// Internal ops (reachable as torch.ops.langevin_kernels.*; each checks what it indexes):
//   _ext_step     the native update on contiguous tensors (cpu/langevin_cpu.cpp, cuda/langevin_cuda.cu)
//   _ext_kinetic_step  the native kinetic update (cpu/kinetic_cpu.cpp, cuda/kinetic_cuda.cu)
//   _ext_normal   the noise stream alone (docs/noise.md)
//   _ext_philox   raw Philox4x32-10 words (known-answer tests)
//   _routed_step  same contract as _ext_step, implemented in Python by the selected backend
//   _routed_kinetic_step  _ext_kinetic_step's contract, in Python; grad and noise may also have
//                 another dtype than x (the eager reference computes those calls)
//   _set_route    Python tells the kernels which (device, dtype) pairs run natively
//
// Contract of _ext_step and _routed_step:
//   x, grad, noise, out: contiguous, same dtype, same numel; out may alias x.
//   clamp_lo/clamp_hi: +-inf when no clamp. seed/offset: uint64 bit patterns.
//   rng_state (optional): int64[2] on x's device = (seed, base offset); when given,
//   the kernel uses seed = rng_state[0] and offset = rng_state[1] + offset, read on
//   the device so that a captured CUDA graph draws fresh noise on every replay.
//   step_size_per_chain / noise_scale_per_chain (optional): contiguous, x's device, the math
//   dtype (float64 for float64 x, else float32), R elements with numel % R == 0; element i
//   uses entry i / (numel / R) instead of the float.
//
// Contract of _ext_kinetic_step: x, v, grad, noise, x_out, v_out contiguous, one dtype and
// device, same numel; x_out may alias x and v_out may alias v (nothing else may overlap).
// Coefficients as in docs/samplers.md (c1, c2 from step_size and friction, in double on the
// host); seed, offset and rng_state as for _ext_step.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A Python module with no methods: importing it runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(langevin_kernels, m) {
  // The fake (meta) kernels and autograd formulas of langevin_step[_] live in this module.
  m.set_python_module("langevin_kernels.ops");
#define LANGEVIN_STEP_ARGS                                                          \
  "float step_size, float noise_scale, int seed, int offset, float prior_weight, " \
  "float? clamp_lo, float? clamp_hi, Tensor? noise, Tensor? rng_state"
  // *_per_chain: optional [x.size(0)] tensors, one coefficient per chain (dim 0 of x) that
  // replaces the float of the same name for that chain's elements (docs/op.md).
#define LANGEVIN_PER_CHAIN_ARGS "Tensor? step_size_per_chain=None, Tensor? noise_scale_per_chain=None"
  m.def("langevin_step(Tensor x, Tensor grad, " LANGEVIN_STEP_ARGS ", " LANGEVIN_PER_CHAIN_ARGS ") -> Tensor");
  // grad_norm_out: [x.size(0)] per-chain L2 norms of grad, written by the same call
  // (the chains' per-step statistic without a reduction op of its own).
  m.def("langevin_step_(Tensor(a!) x, Tensor grad, " LANGEVIN_STEP_ARGS
        ", Tensor(b!)? grad_norm_out=None, " LANGEVIN_PER_CHAIN_ARGS ") -> ()");
#undef LANGEVIN_STEP_ARGS

#define LANGEVIN_RAW_STEP_ARGS                                                   \
  "(Tensor x, Tensor grad, Tensor? noise, Tensor(a!) out, float step_size, "    \
  "float noise_scale, float prior_weight, float clamp_lo, float clamp_hi, int seed, " \
  "int offset, Tensor? rng_state, " LANGEVIN_PER_CHAIN_ARGS ") -> ()"
  m.def("_ext_step" LANGEVIN_RAW_STEP_ARGS);
  m.def("_routed_step" LANGEVIN_RAW_STEP_ARGS);
#undef LANGEVIN_RAW_STEP_ARGS
#undef LANGEVIN_PER_CHAIN_ARGS
#define KINETIC_RAW_STEP_ARGS                                                                 \
  "(Tensor x, Tensor v, Tensor grad, Tensor? noise, Tensor(a!) x_out, Tensor(b!) v_out, "     \
  "float step_size, float friction, float kick, int seed, int offset, Tensor? rng_state) -> ()"
  m.def("_ext_kinetic_step" KINETIC_RAW_STEP_ARGS);
  m.def("_routed_kinetic_step" KINETIC_RAW_STEP_ARGS);
#undef KINETIC_RAW_STEP_ARGS
  m.def("_ext_normal(Tensor(a!) out, int seed, int offset, Tensor? rng_state) -> ()");
  m.def("_ext_philox(Tensor counters, int key0, int key1) -> Tensor");
  m.def("_ext_cpu_isa(str? select=None) -> str");
  m.def("_set_route(str device_type, ScalarType dtype, bool native) -> ()");
}

// A fragment of its own because torch ties an op's fake kernel to the Python module its
// library names: the kinetic ops' fakes and autograd formula live in kinetic_ops.py.
TORCH_LIBRARY_FRAGMENT(langevin_kernels, m) {
  m.set_python_module("langevin_kernels.kinetic_ops");
  // The argument order of lk.kinetic_step; docs/samplers.md.
#define KINETIC_STEP_ARGS \
  "Tensor grad, float step_size, float friction, float kick, int seed, int offset, Tensor? noise, Tensor? rng_state"
  m.def("kinetic_step(Tensor x, Tensor v, " KINETIC_STEP_ARGS ") -> (Tensor, Tensor)");
  m.def("kinetic_step_(Tensor(a!) x, Tensor(b!) v, " KINETIC_STEP_ARGS ") -> ()");
#undef KINETIC_STEP_ARGS
}
