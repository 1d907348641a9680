"""The kinetic (underdamped) Langevin op: one fused call per gradient evaluation.

    x, v = lk.kinetic_step(x, v, grad, step_size=h, friction=gamma, kick=h, seed=0, offset=o)
    lk.kinetic_step_(x, v, grad, step_size=h, friction=gamma, kick=h, seed=0, offset=o)   # in place

One call applies B(kick) A(h/2) O(h) A(h/2) to (x, v) with unit mass (docs/samplers.md):

    v1 = v - kick * grad            grad = dE/dx at the input x
    x1 = x + h/2 * v1
    v2 = c1 * v1 + c2 * xi          c1 = exp(-gamma h), c2 = sqrt(1 - c1^2)  (exact OU part)
    x2 = x1 + h/2 * v2

A BAOAB chain is the call sequence kick = h/2 (first step), then kick = h (the trailing half-kick
of step k merged with the leading half-kick of step k+1); a final half-kick v -= h/2 grad(x_K)
would only synchronise v, and x_K is exactly BAOAB's. xi is the noise stream of docs/noise.md at
(seed, offset), ``noise_offset_advance(x.numel())`` counters per call, like ``langevin_step``.

Both are ops of the ``langevin_kernels`` library (``torch.ops.langevin_kernels.kinetic_step[_]``).
When the C++ extension is built, their schemas and CPU/CUDA kernels (every argument check included) are
C++ (csrc/register.cpp, csrc/kinetic_op.cpp), as for langevin_step; this module adds what only Python can:
the fake kernels that torch.compile traces with, the autograd formula of the out-of-place op (the update
is linear in x, v, grad and noise), and ``_routed_kinetic_step``, through which the C++ kernels reach the
eager and triton backends. Without the extension the same ops are defined here, with Python kernels.
The backend is the one dispatch.select picks for x's device and dtype: cpp (csrc/cpu/kinetic_cpu.cpp) for
CPU tensors, cuda (csrc/cuda/kinetic_cuda.cu) then triton (triton_kernels.py) for CUDA tensors, the eager
reference (reference.kinetic_step) when the extension is not built; ``lk.use_backend`` and
``LANGEVIN_BACKEND`` force one. The kernels run one fused pass on contiguous tensors (internal op
``_ext_kinetic_step``); other layouts go through contiguous buffers that are copied back, and a grad or
noise of another dtype than x runs the reference.
"""
from __future__ import annotations

import math

import torch

from . import dispatch
from .ops import SUPPORTED_DTYPES, _as_int64, _check_rng_state, _shares_memory, philox_normal

_NS = "langevin_kernels"
_U64_MASK = (1 << 64) - 1

# The C++ library defines the ops when the extension is built; otherwise they are defined here.
_NATIVE_OPS = dispatch.extension_error() is None
_ARGS = ("Tensor grad, float step_size, float friction, float kick, int seed, int offset, Tensor? noise, "
         "Tensor? rng_state")
_lib = torch.library.Library(_NS, "FRAGMENT")
if not _NATIVE_OPS:
    _lib.define(f"kinetic_step(Tensor x, Tensor v, {_ARGS}) -> (Tensor, Tensor)")
    _lib.define(f"kinetic_step_(Tensor(a!) x, Tensor(b!) v, {_ARGS}) -> ()")


def _check_coefficients(step_size: float, friction: float, kick: float) -> None:
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size={step_size} is not allowed: the kinetic step needs a finite step_size > 0")
    if not (math.isfinite(friction) and friction > 0):
        raise ValueError(f"friction={friction} is not allowed: the kinetic step needs a finite friction > 0 "
                         "(friction 0 is Hamiltonian dynamics, which does not sample)")
    if not (math.isfinite(kick) and kick >= 0):
        raise ValueError(f"kick={kick} is not allowed: the kick (gradient coefficient) must be finite and >= 0")


def _check_tensors(x, v, grad, noise, rng_state) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; allowed: float16, bfloat16, float32, float64")
    for name, t in (("v", v), ("grad", grad), ("noise", noise)):
        if t is None:
            continue
        if t.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but x has shape {tuple(x.shape)}; they must match")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; they must be on one device")
        if name == "v" and t.dtype != x.dtype:
            raise TypeError(f"v has dtype {t.dtype} but x has dtype {x.dtype}; they must match")
    if rng_state is not None and (rng_state.dtype != torch.int64 or rng_state.shape != (2,)
                                  or rng_state.device != x.device):
        raise ValueError(f"rng_state must be an int64 tensor of shape [2] on {x.device} (seed, base offset); got "
                         f"{rng_state.dtype} shape {tuple(rng_state.shape)} on {rng_state.device}")


def _check(x, v, grad, step_size, friction, kick, noise, rng_state) -> None:
    _check_coefficients(step_size, friction, kick)
    _check_tensors(x, v, grad, noise, rng_state)


def _contiguous(t):
    return None if t is None else t.contiguous()


def _update_into(x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset, rng_state):
    """The update of (x, v) written into the contiguous x_out, v_out by the backend selected for x's device
    and dtype. Its noise is the stream at (seed, offset), bit-identical to lk.philox_normal's there."""
    if x.numel() == 0:
        return
    backend = dispatch.select(x.device, x.dtype)
    if grad.dtype != x.dtype or (noise is not None and noise.dtype != x.dtype):
        # The op allows a grad or noise of another dtype; the kernels take one. The reference computes it,
        # with the selected backend's noise.
        if noise is None:
            noise = philox_normal(x.numel(), seed=seed & _U64_MASK, offset=offset & _U64_MASK, device=x.device,
                                  rng_state=rng_state).reshape(x.shape)
        backend = "eager"
    dispatch.run_kinetic(backend, x.contiguous(), v.contiguous(), grad.contiguous(), _contiguous(noise),
                         x_out, v_out, step_size, friction, kick, seed, offset, rng_state)


def _writes_in_place(x, v, grad, noise) -> bool:
    """Whether the kernel may write x and v where they lie: contiguous (noise element i is the i-th in
    row-major order), and no input overlapping them (an element of x or v could change before it is read,
    e.g. v = buf[1:], grad = buf[:-1]); otherwise it writes buffers that are copied back."""
    if not (x.is_contiguous() and v.is_contiguous()) or _shares_memory(x, v):
        return False
    return not any(_shares_memory(t, other) for t in (x, v) for other in (grad, noise))


def _step_kernel(x, v, grad, step_size, friction, kick, seed, offset, noise, rng_state):
    _check(x, v, grad, step_size, friction, kick, noise, rng_state)
    x_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    v_out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _update_into(x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset, rng_state)
    return x_out, v_out


def _step_inplace_kernel(x, v, grad, step_size, friction, kick, seed, offset, noise, rng_state):
    _check(x, v, grad, step_size, friction, kick, noise, rng_state)
    if _writes_in_place(x, v, grad, noise):
        _update_into(x, v, grad, noise, x, v, step_size, friction, kick, seed, offset, rng_state)
        return
    x_new = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    v_new = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _update_into(x, v, grad, noise, x_new, v_new, step_size, friction, kick, seed, offset, rng_state)
    x.copy_(x_new)
    v.copy_(v_new)


def _routed_kernel(x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset, rng_state):
    """`_routed_kinetic_step`: the C++ kernels' way to the backend Python selected (eager or triton),
    and to the reference for a grad or noise of another dtype than x. Callable directly as
    torch.ops.langevin_kernels._routed_kinetic_step, so it checks what it indexes."""
    for name, t in (("v", v), ("grad", grad), ("noise", noise), ("x_out", x_out), ("v_out", v_out)):
        if t is None:
            continue
        if (t.numel() != x.numel() or t.device != x.device or not t.is_contiguous()
                or (name not in ("grad", "noise") and t.dtype != x.dtype)):
            raise RuntimeError(f"_routed_kinetic_step: {name} must be a contiguous tensor with x's numel "
                               f"({x.numel()}) and device ({x.device}), and x's dtype ({x.dtype}) unless it is "
                               f"grad or noise; got {t.numel()} elements of {t.dtype} on {t.device}")
    if not x.is_contiguous():
        raise RuntimeError("_routed_kinetic_step: x must be contiguous")
    _check_rng_state(rng_state, x)
    _update_into(x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset, rng_state)


for _key in ("CPU", "CUDA"):
    if _NATIVE_OPS:
        _lib.impl("_routed_kinetic_step", _routed_kernel, _key)
    # Python kernels where C++ has none: everywhere without the extension, and CUDA tensors when
    # the extension was built without its CUDA kernels.
    if not _NATIVE_OPS or not torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NS}::kinetic_step", _key):
        _lib.impl("kinetic_step", _step_kernel, _key)
        _lib.impl("kinetic_step_", _step_inplace_kernel, _key)


@torch.library.register_fake(f"{_NS}::kinetic_step")
def _step_fake(x, v, grad, step_size, friction, kick, seed, offset, noise, rng_state):
    _check(x, v, grad, step_size, friction, kick, noise, rng_state)
    return torch.empty_like(x), torch.empty_like(v)


@torch.library.register_fake(f"{_NS}::kinetic_step_")
def _step_inplace_fake(x, v, grad, step_size, friction, kick, seed, offset, noise, rng_state):
    _check(x, v, grad, step_size, friction, kick, noise, rng_state)


def _setup_context(ctx, inputs, output):
    _, _, _, step_size, friction, kick, *_ = inputs
    ctx.coefficients = (step_size, friction, kick)
    ctx.has_noise = inputs[8] is not None


def _backward(ctx, grad_x, grad_v):
    """x2 = x + a v - a kick grad + h/2 c2 xi and v2 = c1 v - c1 kick grad + c2 xi, a = h/2 (1 + c1)."""
    step_size, friction, kick = ctx.coefficients
    c1 = math.exp(-friction * step_size)
    c2 = math.sqrt(-math.expm1(-2.0 * friction * step_size))
    through_v = (0.5 * step_size * (1.0 + c1)) * grad_x + c1 * grad_v
    grad_noise = c2 * (0.5 * step_size * grad_x + grad_v) if ctx.has_noise else None
    return grad_x, through_v, -kick * through_v, None, None, None, None, None, grad_noise, None


torch.library.register_autograd(f"{_NS}::kinetic_step", _backward, setup_context=_setup_context)


def _coerce(step_size, friction, kick, seed, offset, noise, rng_state):
    if noise is None and rng_state is None and seed is None:
        raise ValueError("seed is required when the kinetic step draws noise (pass seed and offset, "
                         "or explicit noise, or rng_state)")
    seed = 0 if seed is None else _as_int64("seed", seed)
    offset = _as_int64("offset", offset)
    return float(step_size), float(friction), float(kick), seed, offset


_STEP = torch.ops.langevin_kernels.kinetic_step.default
_STEP_INPLACE = torch.ops.langevin_kernels.kinetic_step_.default


def kinetic_step(x, v, grad, *, step_size, friction, kick, seed=None, offset=0, noise=None, rng_state=None):
    """Out-of-place, differentiable fused kinetic-Langevin call; returns (x_new, v_new). See the module doc."""
    args = _coerce(step_size, friction, kick, seed, offset, noise, rng_state)
    return _STEP(x, v, grad, *args, noise, rng_state)


def kinetic_step_(x, v, grad, *, step_size, friction, kick, seed=None, offset=0, noise=None, rng_state=None):
    """In-place fused kinetic-Langevin call on x and v (the sampler's form). See the module doc."""
    args = _coerce(step_size, friction, kick, seed, offset, noise, rng_state)
    _STEP_INPLACE(x, v, grad, *args, noise, rng_state)
