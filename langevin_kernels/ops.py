"""The fused Langevin-update ops (docs/op.md) and their public Python API.

    y = clamp(x - a * (grad + lam * x) + s * xi, lo, hi)

`langevin_kernels::langevin_step` (out-of-place, autograd-aware) and
`langevin_kernels::langevin_step_` (in-place on x). When the C++ extension is built,
their schemas and CPU/CUDA kernels (every argument check included) are C++
(csrc/register.cpp, csrc/step_op.cpp); this module adds what only Python can: the fake
kernels that torch.compile traces with, the autograd formula, and `_routed_step`, through
which the C++ kernels reach the eager and triton backends (dispatch.py). Without the
extension the same ops are defined here, with Python kernels, so that they exist
everywhere; both forms pass `torch.library.opcheck`.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import dispatch

_U64 = 1 << 64
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_NAMES = "float32, float16, bfloat16, float64"
# The smallest double that rounds to inf in float32: FLT_MAX = 2^128 - 2^104 and the
# half-way point to 2^128 rounds to even, i.e. up.
_F32_OVERFLOW = 2.0**128 - 2.0**103

# The C++ library defines the ops when the extension is built; otherwise they are defined here.
_NATIVE_OPS = dispatch.extension_error() is None
_ARGS = ("float step_size, float noise_scale, int seed, int offset, float prior_weight, "
         "float? clamp_lo, float? clamp_hi, Tensor? noise, Tensor? rng_state")

_PER_CHAIN_ARGS = "Tensor? step_size_per_chain=None, Tensor? noise_scale_per_chain=None"

_lib = torch.library.Library("langevin_kernels", "FRAGMENT")
if not _NATIVE_OPS:
    _lib.define(f"langevin_step(Tensor x, Tensor grad, {_ARGS}, {_PER_CHAIN_ARGS}) -> Tensor")
    _lib.define(f"langevin_step_(Tensor(a!) x, Tensor grad, {_ARGS}, Tensor(b!)? grad_norm_out=None, "
                f"{_PER_CHAIN_ARGS}) -> ()")


# ----------------------------------------------------------------------------- checks

def _as_int64(name: str, value) -> int:
    """A user's uint64 (seed, offset) as the int64 with the same bits (the schema's int)."""
    if type(value) is int and 0 <= value < 1 << 63:  # fast path: chains call this every step
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__} {value!r}")
    value = int(value)
    if not 0 <= value < _U64:
        raise ValueError(f"{name}={value} is out of range: allowed 0 <= {name} < 2**64")
    return value - _U64 if value >= 1 << 63 else value


def _as_float(name: str, value, *, nonnegative: bool = False) -> float:
    if type(value) is float and math.isfinite(value) and (value >= 0 or not nonnegative):
        return value  # fast path: chains call this every step (ABC isinstance checks are slow)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int (or Fraction) beyond the float range
        raise ValueError(f"{name}={value!r:.40} must be finite; it is beyond the float range") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be finite")
    if nonnegative and value < 0:
        raise ValueError(f"{name}={value} must be >= 0")
    return value


def _check_float_tensor(name: str, t, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; allowed dtypes: {_DTYPE_NAMES}")
    if like is None:
        return
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but x has shape {tuple(like.shape)}; they must match")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {like.dtype}; they must match")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}; they must be on one device")


def _check_rng_state(rng_state, x: torch.Tensor) -> None:
    if rng_state is None:
        return
    if not isinstance(rng_state, torch.Tensor) or rng_state.dtype != torch.int64 or rng_state.numel() != 2:
        raise ValueError("rng_state must be an int64 tensor of 2 elements (seed, base offset)")
    if rng_state.device != x.device:
        raise ValueError(f"rng_state is on {rng_state.device} but x is on {x.device}; they must be on one device")


def _check_per_chain(name: str, t, x: torch.Tensor) -> None:
    """One coefficient per chain: shape [x.shape[0]], a float dtype, x's device (metadata only)."""
    if t is None:
        return
    if x.dim() < 1:
        raise ValueError(f"{name} needs x with a chain dimension (dim 0); x is a scalar")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but must be ({x.shape[0]},): one value per chain "
                         "(dim 0 of x)")
    _check_float_tensor(name, t)
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; they must be on one device")


def _check_per_chain_values(name: str, t) -> None:
    """Finite and >= 0, checked where it is cheap: CPU tensors (on CUDA it would sync every step)."""
    if t is None or t.device.type != "cpu" or not t.numel():
        return
    bad = ~torch.isfinite(t) | (t < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}[{i}]={float(t[i])} must be finite and >= 0")


def _validate(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
              noise, rng_state, step_size_per_chain=None, noise_scale_per_chain=None) -> None:
    """Checks shared by the ops' real and fake kernels (metadata only, no device reads)."""
    _check_float_tensor("x", x)
    _check_per_chain("step_size_per_chain", step_size_per_chain, x)
    _check_per_chain("noise_scale_per_chain", noise_scale_per_chain, x)
    _check_float_tensor("grad", grad, like=x)
    if noise is not None:
        _check_float_tensor("noise", noise, like=x)
    _check_rng_state(rng_state, x)
    coefficients = (("step_size", _as_float("step_size", step_size, nonnegative=True)),
                    ("noise_scale", _as_float("noise_scale", noise_scale, nonnegative=True)),
                    ("prior_weight", _as_float("prior_weight", prior_weight)))
    if x.dtype != torch.float64:  # float32 math: a coefficient float32 rounds to inf gives inf*0 = NaN
        for name, value in coefficients:
            if abs(value) >= _F32_OVERFLOW:
                raise ValueError(f"{name}={value} does not fit float32, the math type of {x.dtype} states "
                                 f"(|{name}| must be below 3.4028235e38); use float64 states")
    for name, bound in (("clamp lower bound", clamp_lo), ("clamp upper bound", clamp_hi)):
        if bound is not None and math.isnan(bound):
            raise ValueError(f"{name} is NaN; bounds must be numbers or None")
    if clamp_lo is not None and clamp_hi is not None and clamp_lo > clamp_hi:
        raise ValueError(f"clamp=({clamp_lo}, {clamp_hi}) has lo > hi; need lo <= hi")
    if noise is None and rng_state is None:
        groups = (x.numel() + 3) // 4
        if (offset % _U64) + groups > _U64:
            raise ValueError(f"offset={offset % _U64} + ceil(numel/4)={groups} passes 2**64: the noise "
                             "counter would wrap and repeat noise; use a smaller offset")


def _check_grad_norm_out(out, x: torch.Tensor) -> None:
    """grad_norm_out: one norm per chain (dim 0 of x), float32 (float64 for float64 states)."""
    if x.dim() < 1:
        raise ValueError("grad_norm_out needs x with a chain dimension (dim 0); x is a scalar")
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    if out.dim() != 1 or out.shape[0] != x.shape[0]:
        raise ValueError(f"grad_norm_out has shape {tuple(out.shape)} but must be ({x.shape[0]},): one norm per "
                         "chain (dim 0 of x)")
    if out.dtype != wide:
        raise TypeError(f"grad_norm_out has dtype {out.dtype} but must be {wide} for {x.dtype} states")
    if out.device != x.device:
        raise ValueError(f"grad_norm_out is on {out.device} but x is on {x.device}; they must be on one device")
    if not out.is_contiguous():
        raise ValueError("grad_norm_out must be contiguous")


def _grad_norms_into(grad: torch.Tensor, out: torch.Tensor) -> None:
    if out.numel():
        torch.linalg.vector_norm(grad.reshape(out.shape[0], -1), dim=1, dtype=out.dtype, out=out)


def _may_overlap_itself(x: torch.Tensor) -> bool:
    """False when sizes and strides alone prove that no two elements of x share memory: with
    the dims of size > 1 sorted by stride, each stride steps past everything the smaller
    strides reach (True for every expanded view, and for some layouts that only look odd)."""
    reach = 0
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def _overlaps_itself(x: torch.Tensor) -> bool:
    """Whether two elements of x share memory (exact; metadata only, no data reads)."""
    if x.numel() <= 1 or x.is_contiguous() or not _may_overlap_itself(x):
        return False
    element_offsets = torch.zeros((), dtype=torch.int64)
    for size, stride in zip(x.shape, x.stride()):
        element_offsets = (element_offsets.unsqueeze(-1) + torch.arange(size) * stride).reshape(-1)
    return element_offsets.unique().numel() < x.numel()


def _check_inplace_target(x: torch.Tensor, *, exact: bool = True) -> None:
    """Refuse in-place updates autograd cannot track or that would write one memory location
    twice. exact=False (the Python wrapper, which torch.compile traces) only runs the stride
    test; the op's kernel runs the exact one before anything is written."""
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("langevin_step_ cannot update x in place while it requires grad (autograd does "
                         "not track the in-place op); use langevin_step, detach x, or run under torch.no_grad()")
    if x.numel() == 0:
        return
    if any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape)):
        raise ValueError("x is an expanded view (stride 0): its elements overlap in memory and cannot be "
                         "updated in place; pass x.contiguous() or use langevin_step")
    if exact and _overlaps_itself(x):
        raise ValueError(f"x is a view whose elements overlap in memory (shape {tuple(x.shape)}, strides "
                         f"{tuple(x.stride())}) and cannot be updated in place; pass x.contiguous() or use "
                         "langevin_step")


def _shares_memory(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether the memory spans of a and b intersect (conservative: interleaved views count)."""
    if b is None or a.numel() == 0 or b.numel() == 0:
        return False

    def span(t):
        start = t.data_ptr()
        return start, start + t.element_size() * (1 + sum(st * (sz - 1) for st, sz in zip(t.stride(), t.shape)))

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


# ----------------------------------------------------------------------------- kernels

def _bounds(clamp_lo, clamp_hi) -> tuple[float, float]:
    return (-math.inf if clamp_lo is None else clamp_lo, math.inf if clamp_hi is None else clamp_hi)


def _in_math_type(t, x):
    """Per-chain coefficients as the kernels read them: contiguous, float64 for float64 x, else float32."""
    if t is None:
        return None
    return t.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()


def _launch(x, grad, noise, out, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
            rng_state, a_rows=None, s_rows=None) -> None:
    lo, hi = _bounds(clamp_lo, clamp_hi)
    dispatch.run_step(dispatch.select(x.device, x.dtype), x.contiguous(), grad.contiguous(),
                      None if noise is None else noise.contiguous(), out,
                      step_size, noise_scale, prior_weight, lo, hi, seed, offset, rng_state,
                      _in_math_type(a_rows, x), _in_math_type(s_rows, x))


def _step_kernel(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi, noise,
                 rng_state, step_size_per_chain=None, noise_scale_per_chain=None):
    _validate(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi, noise, rng_state,
              step_size_per_chain, noise_scale_per_chain)
    _check_per_chain_values("step_size_per_chain", step_size_per_chain)
    _check_per_chain_values("noise_scale_per_chain", noise_scale_per_chain)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _launch(x, grad, noise, out, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
                rng_state, step_size_per_chain, noise_scale_per_chain)
    return out


def _step_inplace_kernel(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
                         noise, rng_state, grad_norm_out=None, step_size_per_chain=None, noise_scale_per_chain=None):
    _validate(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi, noise, rng_state,
              step_size_per_chain, noise_scale_per_chain)
    _check_per_chain_values("step_size_per_chain", step_size_per_chain)
    _check_per_chain_values("noise_scale_per_chain", noise_scale_per_chain)
    _check_inplace_target(x)
    if grad_norm_out is not None:
        _check_grad_norm_out(grad_norm_out, x)
        _grad_norms_into(grad, grad_norm_out)   # before the update: grad may share memory with x
    if not x.numel():
        return
    # Contiguous x is updated where it lies; other layouts go through a contiguous
    # buffer so that noise element i is always the i-th element in row-major order, and so
    # does an x that grad or noise overlaps (e.g. x = buf[1:], grad = buf[:-1]): written in
    # place, an element of x would change before it is read as grad.
    direct = x.is_contiguous() and not _shares_memory(x, grad) and not _shares_memory(x, noise)
    target = x if direct else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, grad, noise, target, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
            rng_state, step_size_per_chain, noise_scale_per_chain)
    if target is not x:
        x.copy_(target)


def _routed_step_kernel(x, grad, noise, out, step_size, noise_scale, prior_weight, clamp_lo, clamp_hi,
                        seed, offset, rng_state, step_size_per_chain=None, noise_scale_per_chain=None):
    """`_routed_step`: the C++ kernels' way to the backend Python selected (eager or triton).
    Callable directly as torch.ops.langevin_kernels._routed_step, so it checks what it indexes."""
    for name, t in (("grad", grad), ("noise", noise), ("out", out)):
        if t is not None and (t.numel() != x.numel() or t.dtype != x.dtype or t.device != x.device
                              or not t.is_contiguous()):
            raise RuntimeError(f"_routed_step: {name} must be a contiguous tensor with x's numel ({x.numel()}), "
                               f"dtype ({x.dtype}) and device ({x.device}); got {t.numel()} elements of "
                               f"{t.dtype} on {t.device}")
    if not x.is_contiguous():
        raise RuntimeError("_routed_step: x must be contiguous")
    if rng_state is not None:
        _check_rng_state(rng_state, x)
    math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = {t.numel() for t in (step_size_per_chain, noise_scale_per_chain) if t is not None}
    for name, t in (("step_size_per_chain", step_size_per_chain), ("noise_scale_per_chain", noise_scale_per_chain)):
        if t is not None and (t.dtype != math_dtype or t.device != x.device or not t.is_contiguous()
                              or len(rows) > 1 or (x.numel() % t.numel() if t.numel() else x.numel())):
            raise RuntimeError(f"_routed_step: {name} must be a contiguous {math_dtype} tensor on {x.device} whose "
                               f"numel divides x's ({x.numel()}), like the other per-chain tensor; got "
                               f"{t.numel()} elements of {t.dtype} on {t.device}")
    dispatch.run_step(dispatch.select(x.device, x.dtype), x, grad, noise, out, step_size, noise_scale,
                      prior_weight, clamp_lo, clamp_hi, seed, offset, rng_state, step_size_per_chain,
                      noise_scale_per_chain)


for _key in ("CPU", "CUDA"):
    if _NATIVE_OPS:
        _lib.impl("_routed_step", _routed_step_kernel, _key)
    # Python kernels where C++ has none: everywhere without the extension, and CUDA
    # tensors when the extension was built without its CUDA kernels.
    if not _NATIVE_OPS or not torch._C._dispatch_has_kernel_for_dispatch_key("langevin_kernels::langevin_step", _key):
        _lib.impl("langevin_step", _step_kernel, _key)
        _lib.impl("langevin_step_", _step_inplace_kernel, _key)


@torch.library.register_fake("langevin_kernels::langevin_step")
def _step_fake(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi, noise,
               rng_state, step_size_per_chain=None, noise_scale_per_chain=None):
    _validate(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi, noise, rng_state,
              step_size_per_chain, noise_scale_per_chain)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("langevin_kernels::langevin_step_")
def _step_inplace_fake(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi,
                       noise, rng_state, grad_norm_out=None, step_size_per_chain=None, noise_scale_per_chain=None):
    _validate(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp_lo, clamp_hi, noise, rng_state,
              step_size_per_chain, noise_scale_per_chain)
    _check_inplace_target(x, exact=False)
    if grad_norm_out is not None:
        _check_grad_norm_out(grad_norm_out, x)
    return None


# ----------------------------------------------------------------------------- autograd

def _per_element(per_chain, scalar: float, like: torch.Tensor):
    """A coefficient as it multiplies the elements of `like`: the float, or the per-chain
    tensor viewed as [B, 1, ..., 1] (type promotion gives at least its float type; the backward
    casts back to the cotangent's dtype)."""
    if per_chain is None:
        return scalar
    return per_chain.reshape((-1,) + (1,) * (like.dim() - 1))


def _setup_context(ctx, inputs, output):
    (x, _grad, step_size, noise_scale, _seed, _offset, prior_weight, clamp_lo, clamp_hi, noise, _rng,
     a_rows, s_rows) = inputs
    ctx.coefficients = (_per_element(a_rows, step_size, x), _per_element(s_rows, noise_scale, x), prior_weight)
    ctx.bounds = (clamp_lo, clamp_hi)
    ctx.has_noise = noise is not None
    clamped = clamp_lo is not None or clamp_hi is not None
    ctx.save_for_backward(output if clamped else None)


def _backward(ctx, grad_y):
    """dy/dx = (1 - a lam) m, dy/dgrad = -a m, dy/dnoise = s m; m = 0 where the clamp bound."""
    step_size, noise_scale, prior_weight = ctx.coefficients
    (y,) = ctx.saved_tensors
    if y is not None:
        lo, hi = ctx.bounds
        free = torch.ones_like(y, dtype=torch.bool)
        if lo is not None:
            free &= y != lo
        if hi is not None:
            free &= y != hi
        grad_y = torch.where(free, grad_y, torch.zeros_like(grad_y))
    # Per-chain coefficients are [B, 1, ...] math-type tensors: cast back to grad_y's dtype.
    grad_x = (grad_y * (1.0 - step_size * prior_weight)).to(grad_y.dtype)
    grad_grad = (grad_y * (-step_size)).to(grad_y.dtype)
    grad_noise = (grad_y * noise_scale).to(grad_y.dtype) if ctx.has_noise else None
    # No gradient flows to the per-chain coefficients (step sizes are settings, not parameters).
    return grad_x, grad_grad, None, None, None, None, None, None, None, grad_noise, None, None, None


torch.library.register_autograd("langevin_kernels::langevin_step", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API

def _clamp_bounds(clamp) -> tuple[float | None, float | None]:
    if clamp is None:
        return None, None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise TypeError(f"clamp must be None or a pair (lo, hi) of numbers or None, got {clamp!r}")
    lo, hi = (None if b is None else _as_float("clamp bound", b) for b in clamp)
    return lo, hi


_NOISE_POSITION_HELP = ("pass seed= and offset= (a loop advances offset by lk.noise_offset_advance(x.numel()) "
                        "per step so that no two steps share noise), or use lk.DataChain, which does it for you")


def _noise_position(x, grad, seed, offset, noise, noise_scale, rng_state, checked_args):
    """seed and offset, required whenever the op draws noise: a default would make a
    hand-written loop draw the same noise at every step without a word."""
    if seed is not None and offset is not None:
        return seed, offset
    if rng_state is not None or noise is not None or noise_scale == 0:   # nothing drawn, or read on the device
        return (0 if seed is None else seed), (0 if offset is None else offset)
    if isinstance(x, torch.Tensor) and isinstance(grad, torch.Tensor):   # name bad tensors before a missing seed
        _validate(x, grad, *checked_args, noise, rng_state)
    missing = " and ".join(name for name, v in (("seed", seed), ("offset", offset)) if v is None)
    raise TypeError(f"{missing} not given: the step draws noise (noise_scale={noise_scale!r}) and needs to know "
                    f"where in the noise stream it is; {_NOISE_POSITION_HELP}")


def _coefficient(name: str, value) -> tuple[float, torch.Tensor | None]:
    """(the schema's float, the per-chain tensor or None): a [B] tensor goes to the op's
    `<name>_per_chain` argument, and the float it replaces is a placeholder (1.0, nonzero so
    that a per-chain noise scale still counts as drawing noise)."""
    if isinstance(value, torch.Tensor):
        return 1.0, value
    return _as_float(name, value, nonnegative=True), None


def _op_args(x, grad, noise, step_size, noise_scale, seed, offset, prior_weight, clamp, rng_state):
    """The op's positional arguments from the public ones; the per-chain tensors come last."""
    # tensor types first: the dispatcher's own message for a non-tensor is less clear
    for name, t in (("x", x), ("grad", grad), ("noise", noise)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    lo, hi = _clamp_bounds(clamp)
    step_size, a_rows = _coefficient("step_size", step_size)
    noise_scale, s_rows = _coefficient("noise_scale", noise_scale)
    prior_weight = _as_float("prior_weight", prior_weight)
    seed = None if seed is None else _as_int64("seed", seed)
    offset = None if offset is None else _as_int64("offset", offset)
    checked = (step_size, noise_scale, seed or 0, offset or 0, prior_weight, lo, hi)
    seed, offset = _noise_position(x, grad, seed, offset, noise, noise_scale, rng_state, checked)
    return (step_size, noise_scale, seed, offset, prior_weight, lo, hi), (a_rows, s_rows)


def _plain_bound(b) -> bool:
    """A clamp bound the fast path can pass as it is (None or a finite float, as chains store them)."""
    return b is None or (type(b) is float and math.isfinite(b))


def _plain_call(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp):
    """(lo, hi) when the C++ op can take this call's arguments as they are, else None.

    The samplers' hot path: with plain tensors, floats and ints below 2**63 every check left
    is the C++ kernel's (same messages as the Python ones), so the wrapper only unpacks the
    clamp. Anything else (numpy scalars, ints as coefficients, a missing seed, uint64
    values >= 2**63, no extension) takes the Python path, which converts or names the
    problem."""
    if not (_NATIVE_OPS and isinstance(x, torch.Tensor) and isinstance(grad, torch.Tensor)
            and type(step_size) is float and type(noise_scale) is float and type(prior_weight) is float
            and type(seed) is int and type(offset) is int and 0 <= seed < 1 << 63 and 0 <= offset < 1 << 63):
        return None
    if clamp is None:
        return None, None
    if type(clamp) is tuple and len(clamp) == 2 and _plain_bound(clamp[0]) and _plain_bound(clamp[1]):
        return clamp
    return None


_STEP = _STEP_INPLACE = None   # the ops' .default overloads, bound below (fewer lookups per call)


def langevin_step(x: torch.Tensor, grad: torch.Tensor, *, step_size: float, noise_scale: float,
                  seed: int | None = None, offset: int | None = None, prior_weight: float = 0.0, clamp=None,
                  noise: torch.Tensor | None = None, rng_state: torch.Tensor | None = None) -> torch.Tensor:
    """One fused Langevin step, out of place and differentiable.

    Returns ``clamp(x - step_size * (grad + prior_weight * x) + noise_scale * xi, *clamp)``
    computed in float32 (float64 for float64 inputs), in x's dtype.

    Args:
        x: chain state, any shape and strides; float32, float16, bfloat16 or float64.
        grad: dE/dx (E = energy = -log density + const); same shape, dtype and device as x.
        step_size: drift coefficient a >= 0 (plain Langevin with step delta: a = delta**2 / 2),
            a float, or a 1-D tensor of x.shape[0] values (one per chain, dim 0 of x, broadcast
            over that chain's elements; a float dtype, on x's device; on the CPU its values are
            checked finite and >= 0, on CUDA they are not, to avoid a host sync per step).
        noise_scale: standard deviation s >= 0 of the injected noise (0: gradient descent);
            a float or a per-chain tensor like step_size.
            For 16/32-bit x the math is float32: |step_size|, noise_scale and |prior_weight|
            must be below 3.4028235e38 (ValueError otherwise); the formula is evaluated as
            written, IEEE rules included (e.g. 0 * inf = NaN).
        seed, offset: where the noise comes from (uint64 each): element i of x (row-major)
            uses the stream of :func:`philox_normal` at index i. Required whenever the step
            draws noise (noise_scale > 0, no ``noise``, no ``rng_state``): a loop advances offset
            by ``noise_offset_advance(x.numel())`` per step so that steps never share noise.
        prior_weight: lam, adds ``lam * x`` to grad (the N(0, I) prior of a latent chain).
        clamp: None or (lo, hi); either bound may be None.
        noise: explicit noise replacing xi (same shape, dtype, device as x).
        rng_state: int64 tensor [seed, base offset] on x's device; when given it replaces
            ``seed`` and is added to ``offset`` (default 0), read on the device (CUDA-graph safe).

    Gradients flow to x, grad and noise: dy/dx = (1 - a lam) m, dy/dgrad = -a m,
    dy/dnoise = s m, where m is 0 where the clamp bound and 1 elsewhere (none to per-chain
    step_size / noise_scale tensors).
    """
    bounds = _plain_call(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp)
    if bounds is not None:
        return _STEP(x, grad, step_size, noise_scale, seed, offset, prior_weight, *bounds, noise, rng_state)
    args, per_chain = _op_args(x, grad, noise, step_size, noise_scale, seed, offset, prior_weight, clamp, rng_state)
    return _STEP(x, grad, *args, noise, rng_state, *per_chain)


def langevin_step_(x: torch.Tensor, grad: torch.Tensor, *, step_size: float, noise_scale: float,
                   seed: int | None = None, offset: int | None = None, prior_weight: float = 0.0, clamp=None,
                   noise: torch.Tensor | None = None, rng_state: torch.Tensor | None = None,
                   grad_norm_out: torch.Tensor | None = None) -> torch.Tensor:
    """In-place form of :func:`langevin_step` for samplers: updates x and returns it.

    Not tracked by autograd: x must not require grad while grad mode is on, and must
    not be a view whose elements overlap in memory (expanded or as_strided views;
    ValueError). grad and noise may share memory with x: the result is then the
    out-of-place one, written into x. seed and offset are required as in langevin_step.

    grad_norm_out: optional contiguous tensor of shape ``[x.shape[0]]`` (float32; float64 for
    float64 states) that receives the per-chain L2 norms of grad, computed by the same call
    (the samplers' per-step statistic, without a reduction op of its own).
    """
    bounds = _plain_call(x, grad, step_size, noise_scale, seed, offset, prior_weight, clamp)
    if bounds is not None:
        _STEP_INPLACE(x, grad, step_size, noise_scale, seed, offset, prior_weight, *bounds, noise, rng_state,
                      grad_norm_out)
        return x
    if isinstance(x, torch.Tensor):
        _check_inplace_target(x, exact=False)
    args, per_chain = _op_args(x, grad, noise, step_size, noise_scale, seed, offset, prior_weight, clamp, rng_state)
    _STEP_INPLACE(x, grad, *args, noise, rng_state, grad_norm_out, *per_chain)
    return x


def philox_normal(n: int, *, seed: int, offset: int = 0, device="cpu", dtype=torch.float32,
                  rng_state: torch.Tensor | None = None) -> torch.Tensor:
    """The first n standard normals of the noise stream at (seed, offset), docs/noise.md.

    ``langevin_step(x, g, seed=S, offset=O, ...)`` uses exactly
    ``philox_normal(x.numel(), seed=S, offset=O).reshape(x.shape)`` as its noise
    (up to the float rounding of the backend's log/sqrt/cos).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n < 1 << 63:
        raise ValueError(f"n={n!r} must be an int with 0 <= n < 2**63")
    n = int(n)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype={dtype} is not supported; allowed dtypes: {_DTYPE_NAMES}")
    seed64, offset64 = _as_int64("seed", seed), _as_int64("offset", offset)
    if rng_state is None and (offset64 % _U64) + (n + 3) // 4 > _U64:
        raise ValueError(f"offset={offset} + ceil(n/4) passes 2**64: the noise counter would wrap")
    device = torch.device(device)
    out = torch.empty(n, dtype=torch.float32, device=device)
    if rng_state is not None:
        _check_rng_state(rng_state, out)
    if n:
        dispatch.run_normal(dispatch.select(device), out, seed64, offset64, rng_state)
    return out.to(dtype)


def noise_offset_advance(numel: int) -> int:
    """How far a chain advances `offset` per step on a tensor of `numel` elements (ceil(numel / 4))."""
    if isinstance(numel, bool) or not isinstance(numel, numbers.Integral) or numel < 0:
        raise ValueError(f"numel={numel!r} must be an int >= 0 (the number of elements of the state)")
    return (int(numel) + 3) // 4


_STEP = torch.ops.langevin_kernels.langevin_step.default
_STEP_INPLACE = torch.ops.langevin_kernels.langevin_step_.default
dispatch.push_routes()
