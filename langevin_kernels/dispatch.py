"""Which implementation runs the op: selection, availability and the kernel calls.

Four backends sit behind the one op (docs/op.md):

  triton  Triton kernel (triton_kernels.py); CUDA tensors, or CPU tensors when
          TRITON_INTERPRET=1 was set before import (the test path on CPU machines)
  cuda    CUDA C++ kernel of the extension (csrc/cuda); CUDA tensors
  cpp     C++ CPU kernel of the extension (csrc/cpu); CPU tensors
  eager   reference.py in plain torch ops; any device

Defaults: cuda (then triton) for CUDA tensors, cpp for CPU tensors, eager when
nothing better is built. `LANGEVIN_BACKEND`, `set_backend` or `use_backend`
force one; a forced backend that cannot run the tensors' device is an error, not
a silent fallback.

Every kernel entry point here takes contiguous tensors of one dtype and writes
`out` (which may be `x` itself), or x_out and v_out (which may be x and v) for the
kinetic op (kinetic_ops.py).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from . import reference

BACKEND_NAMES = ("triton", "cuda", "cpp", "eager")

_ext_error: str | None = None
try:
    from . import _C  # noqa: F401  (registers langevin_kernels::_ext_* ops)
except ImportError as exc:  # not built: the eager reference still serves every call
    _ext_error = f"extension langevin_kernels._C not built ({exc})"


def _check_name(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is not a backend; allowed: {', '.join(BACKEND_NAMES)}")
    return name


_forced: str | None = None
if os.environ.get("LANGEVIN_BACKEND"):
    _env = os.environ["LANGEVIN_BACKEND"]
    if _env not in BACKEND_NAMES:
        raise ValueError(f"LANGEVIN_BACKEND={_env!r} is not a backend; allowed: {', '.join(BACKEND_NAMES)}")
    _forced = _env


# select() is on every op call's path: its answer per (device, dtype, forced backend) is
# computed once. Availability does not change while the process runs (the extension, triton
# and the CUDA devices are fixed at import; Triton reads TRITON_INTERPRET once, at import, too).
_selected: dict = {}


def extension_error() -> str | None:
    """None when the C++ extension is built and loaded, else why not."""
    return _ext_error


def set_backend(name: str | None) -> None:
    """Force a backend for every call (None restores automatic selection)."""
    global _forced
    _forced = None if name is None else _check_name(name)
    push_routes()


def push_routes() -> None:
    """Tell the C++ op kernels (csrc/step_op.cpp, csrc/kinetic_op.cpp) which (device, dtype) pairs
    the native kernels run now; the others go back to Python through `_routed_step` /
    `_routed_kinetic_step`, where select() decides (and raises when a forced backend cannot run
    the device)."""
    if _ext_error is not None:
        return
    for device, native in ((torch.device("cpu"), "cpp"), (torch.device("cuda"), "cuda")):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            try:
                chosen = select(device, dtype)
            except RuntimeError:
                chosen = None
            torch.ops.langevin_kernels._set_route(device.type, dtype, chosen == native)


def get_backend() -> str | None:
    """The forced backend, or None when selection is automatic."""
    return _forced


@contextlib.contextmanager
def use_backend(name: str | None):
    """Context manager form of set_backend; restores the previous choice on exit."""
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _ext_has_cuda() -> bool:
    return _ext_error is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "langevin_kernels::_ext_step", "CUDA")


def unavailable_reason(name: str, device: torch.device | str | None = None) -> str | None:
    """None if backend `name` can run tensors on `device` (any device if None), else why not."""
    _check_name(name)
    dev = None if device is None else torch.device(device).type
    if name == "eager":
        return None
    if name == "cpp":
        if _ext_error:
            return _ext_error
        return None if dev in (None, "cpu") else "the cpp backend runs CPU tensors only"
    if name == "cuda":
        if _ext_error:
            return _ext_error
        if not _ext_has_cuda():
            return "extension built without CUDA kernels (CPU torch or no CUDA toolkit at build time)"
        if not torch.cuda.is_available():
            return "no CUDA device available"
        return None if dev in (None, "cuda") else "the cuda backend runs CUDA tensors only"
    # triton
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if dev == "cpu" or (dev is None and not torch.cuda.is_available()):
        return None if _triton_interpreted() else "no CUDA device (CPU tensors need TRITON_INTERPRET=1)"
    if dev not in (None, "cuda"):
        return f"the triton backend does not run {dev} tensors"
    if not torch.cuda.is_available():
        return "no CUDA device available"
    return None


def backends() -> dict[str, str]:
    """Each backend with "available" or the reason it is not."""
    return {name: unavailable_reason(name) or "available" for name in BACKEND_NAMES}


def select(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs tensors of `dtype` on `device` now (cached per device, dtype and
    forced backend)."""
    key = (device, dtype, _forced)
    name = _selected.get(key)
    if name is None:
        name = _selected[key] = _select_uncached(device, dtype)
    return name


def _select_uncached(device: torch.device, dtype: torch.dtype | None) -> str:
    if _forced is not None:
        reason = unavailable_reason(_forced, device)
        if reason:
            raise RuntimeError(f"backend {_forced!r} was selected but cannot run {device.type} tensors: {reason}")
        return _forced
    if device.type == "cuda":
        # The C++ kernel first: its calls need no Python at all (csrc/step_op.cpp), and at chain
        # sizes the host cost decides (H100, benchmarks/results/step-cuda-h100-2026-11-23.json:
        # per call 46-82 us vs triton's 73-121 us from 2^14 to 2^22 elements, with the older,
        # Python-side op path). Triton serves when the extension has no CUDA kernels; its scalar
        # arguments are float32, so it never takes float64 states.
        preferred = ("cuda",) if dtype == torch.float64 else ("cuda", "triton")
        for name in preferred:
            if unavailable_reason(name, device) is None:
                return name
        return "eager"
    if device.type == "cpu" and _ext_error is None:
        return "cpp"
    return "eager"


def _triton():
    from . import triton_kernels  # imported lazily: TRITON_INTERPRET is read at import
    return triton_kernels


def run_step(backend: str, x, grad, noise, out, a, s, lam, lo, hi, seed, offset, rng_state,
             a_rows=None, s_rows=None) -> None:
    """Write the update into `out` (contiguous tensors; lo/hi are floats, +-inf when unset).
    a_rows / s_rows: optional per-chain coefficients (contiguous, math type, R entries dividing
    numel) replacing a / s for element i by entry i // (numel / R)."""
    if backend in ("cpp", "cuda"):
        torch.ops.langevin_kernels._ext_step(x, grad, noise, out, a, s, lam, lo, hi, seed, offset, rng_state,
                                             a_rows, s_rows)
    elif backend == "triton":
        _triton().step(x, grad, noise, out, a, s, lam, lo, hi, seed, offset, rng_state, a_rows, s_rows)
    else:
        clamp_lo = None if lo == float("-inf") else lo
        clamp_hi = None if hi == float("inf") else hi
        rows = next((t.numel() for t in (a_rows, s_rows) if t is not None), None)
        if rows:   # one row per chain, so that [R, 1] coefficients broadcast over each chain's elements
            x, grad = x.reshape(rows, -1), grad.reshape(rows, -1)
            noise = None if noise is None else noise.reshape(rows, -1)
            a = a if a_rows is None else a_rows.reshape(rows, 1)
            s = s if s_rows is None else s_rows.reshape(rows, 1)
        out.copy_(reference.langevin_step(x, grad, step_size=a, noise_scale=s, seed=seed, offset=offset,
                                          prior_weight=lam, clamp_lo=clamp_lo, clamp_hi=clamp_hi,
                                          noise=noise, rng_state=rng_state).reshape(out.shape))


def run_kinetic(backend: str, x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset,
                rng_state) -> None:
    """Write the kinetic update (kinetic_ops.py) into x_out, v_out (contiguous; they may be x, v)."""
    if backend in ("cpp", "cuda"):
        torch.ops.langevin_kernels._ext_kinetic_step(x, v, grad, noise, x_out, v_out, step_size, friction, kick,
                                                     seed, offset, rng_state)
    elif backend == "triton":
        _triton().kinetic_step(x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset, rng_state)
    else:
        x_new, v_new = reference.kinetic_step(x, v, grad, step_size=step_size, friction=friction, kick=kick,
                                              seed=seed, offset=offset, noise=noise, rng_state=rng_state)
        x_out.copy_(x_new)
        v_out.copy_(v_new)


def run_normal(backend: str, out: torch.Tensor, seed: int, offset: int, rng_state=None) -> None:
    """Fill the contiguous float32 `out` with the stream at (seed, offset)."""
    if backend in ("cpp", "cuda"):
        torch.ops.langevin_kernels._ext_normal(out, seed, offset, rng_state)
    elif backend == "triton":
        _triton().normal(out, seed, offset, rng_state)
    else:
        out.copy_(reference.philox_normal(out.numel(), seed=seed, offset=offset, device=out.device,
                                          rng_state=rng_state))


def run_philox(backend: str, counters: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """Raw Philox4x32-10 words for int64 counters [N, 4] (known-answer tests)."""
    if backend in ("cpp", "cuda"):
        return torch.ops.langevin_kernels._ext_philox(counters, key0, key1)
    if backend == "triton":
        return _triton().philox(counters, key0, key1)
    return reference.philox_bits(counters, key0, key1)
