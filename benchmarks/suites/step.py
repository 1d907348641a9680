"""Step suite: the Langevin update alone, y = clamp(x - a*grad + s*noise, lo, hi).

Sizes 2^14..2^28 elements on CUDA (2^14..2^24 on CPU), float32 and bfloat16. Reported per
variant: the median wall time per call (a loop of calls, host cost included: what a sampler
loop sees), the device time per call (CUDA: per-call CUDA events while a spin kernel holds the
stream, see common._device_time_calls; CPU: the wall time), the effective bandwidth on the device
time with bytes = read x + read grad + write y (the noise is generated, not read), the percent of
a device-to-device copy's bandwidth measured in the same run with the same timer (bytes read +
written; on CPU a memory-to-memory copy), and the speedup over eager. CPU and CUDA results share
one JSON schema (common.Row; meta.copy_bandwidth_gbps, meta.device_timer).
"""
from __future__ import annotations

import functools

import torch

import langevin_kernels as lk
from langevin_kernels import dispatch

from . import common, peers
from .common import Variant

# One Langevin step of delta = 0.1 in the op's convention (a = delta^2 / 2, s = delta), with the
# [-1, 1] clamp of image EBMs: the constants the eager code below bakes in, as real code does.
STEP_SIZE = 0.005
NOISE_SCALE = 0.1
CLAMP = (-1.0, 1.0)
SEED = 1234
ROW_WIDTH = 1024            # states are [numel / 1024, 1024], like a batch of flattened images
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# lk.use_backend("eager") computes Philox with int64 torch ops: seconds per call at 2^22 on CPU.
EAGER_BACKEND_MAX_EXPONENT_CPU = 18


CASES = tuple(DTYPES)        # --cases filters by dtype
EAGER_BACKEND_MAX_EXPONENT_CUDA = 24     # the oracle's int64 temporaries: 2^28 would take ~20 GiB


def sizes(device: torch.device, quick: bool, smoke: bool = False) -> list[int]:
    """Exponents of the element counts to run (quick keeps issue 15's 2^26 and 2^28 on CUDA)."""
    if device.type == "cuda":
        return [16] if smoke else [16, 20, 24, 26, 28] if quick else list(range(14, 29, 2))
    return [14] if smoke else [14, 18, 22] if quick else list(range(14, 25, 2))


def eager_update(x: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The update as EBM code writes it: x - a*g + s*randn_like(x), then clamp."""
    if noise is None:
        noise = torch.randn_like(x)
    return torch.clamp(x - STEP_SIZE * grad + NOISE_SCALE * noise, CLAMP[0], CLAMP[1])


# torch.compile of the eager update; dynamic=False gives each size its own specialised kernel,
# as a user with one fixed batch shape gets (the run raises dynamo's recompile limit to allow it).
compiled_update = torch.compile(eager_update, dynamic=False)


def _fused(backend: str, xs, gs, check_input) -> Variant:
    """The fused op forced onto one backend; rotated input i uses noise offset i * advance."""
    advance = lk.noise_offset_advance(xs[0].numel())

    def run(i):
        return lk.langevin_step(xs[i], gs[i], step_size=STEP_SIZE, noise_scale=NOISE_SCALE, seed=SEED,
                                offset=i * advance, clamp=CLAMP)

    def check():
        x, g = check_input
        return lk.langevin_step(x, g, step_size=STEP_SIZE, noise_scale=NOISE_SCALE, seed=SEED, offset=0, clamp=CLAMP)

    return Variant(f"fused[{backend}]", run, check, context=functools.partial(lk.use_backend, backend),
                   note="lk.langevin_step" + (" (eager reference backend)" if backend == "eager" else ""))


def _fused_unavailable(backend: str, device: torch.device) -> str | None:
    if backend == "triton" and device.type == "cpu":
        if dispatch.unavailable_reason("triton", device) is None:
            return "TRITON_INTERPRET=1 runs Triton on CPU at ~9 ms per program: correct but not a timing"
        return "Triton runs CUDA tensors only (CPU tensors need TRITON_INTERPRET=1, too slow to time)"
    return dispatch.unavailable_reason(backend, device)


def _torchebm(xs, gs, noise_check, check_input, device, dtype) -> Variant:
    reason = peers.torchebm_unavailable()
    if reason:
        return Variant("torchebm", unavailable=reason)
    integrator = peers.euler_maruyama(device=device, dtype=dtype)
    noise_scale = peers.torchebm_noise_scale(STEP_SIZE, NOISE_SCALE)

    def update(x, g, noise=None):
        # LangevinDynamics.sample's loop body: the integrator step with drift = -grad, then clamp_.
        out = integrator.step({"x": x}, STEP_SIZE, drift=lambda x_, t_: -g, noise_scale=noise_scale, noise=noise)
        return out["x"].clamp_(*CLAMP)

    return Variant("torchebm", lambda i: update(xs[i], gs[i]), lambda: update(*check_input, noise=noise_check),
                   note="EulerMaruyamaIntegrator.step + clamp_")


def build_case(exponent: int, dtype: torch.dtype, device: torch.device, quick: bool):
    """Inputs, variants and the float32 reference of one (size, dtype) case."""
    numel = 2 ** exponent
    shape = (max(1, numel // ROW_WIDTH), min(numel, ROW_WIDTH))
    bytes_per_input = 2 * numel * torch.finfo(dtype).bits // 8
    n_inputs = common.pool_size(bytes_per_input, device=device, quick=quick)
    generator = torch.Generator(device=device).manual_seed(exponent)
    xs = [(torch.rand(shape, generator=generator, device=device) * 2 - 1).to(dtype) for _ in range(n_inputs)]
    gs = [torch.randn(shape, generator=generator, device=device).to(dtype) for _ in range(n_inputs)]
    check_input = (xs[0], gs[0])
    noise32 = common.reference_noise(numel, seed=SEED, offset=0, device=device).reshape(shape)
    reference = eager_update(xs[0].float(), gs[0].float(), noise32)
    noise_check = noise32.to(dtype)

    variants = [
        Variant("eager", lambda i: eager_update(xs[i], gs[i]), lambda: eager_update(*check_input, noise_check),
                note="x - a*g + s*randn_like(x), clamp"),
        Variant("compile", lambda i: compiled_update(xs[i], gs[i]),
                lambda: compiled_update(*check_input, noise_check), compiled=True,
                note="torch.compile(eager, dynamic=False); compile time separate"),
    ]
    for backend in ("cpp", "cuda", "triton", "eager"):
        reason = _fused_unavailable(backend, device)
        if device.type == "cpu":
            limit = 14 if quick else EAGER_BACKEND_MAX_EXPONENT_CPU
        else:
            limit = EAGER_BACKEND_MAX_EXPONENT_CUDA
        if backend == "eager" and exponent > limit and not reason:
            reason = (f"the eager backend is the oracle (Philox in int64 torch ops), timed up to 2^{limit} "
                      f"only{' in --quick' if quick and device.type == 'cpu' else ''}")
        if reason:
            variants.append(Variant(f"fused[{backend}]", unavailable=reason))
        else:
            variants.append(_fused(backend, xs, gs, check_input))
    variants.append(common.guarded("torchebm", lambda: _torchebm(xs, gs, noise_check, check_input, device, dtype)))
    return variants, reference, n_inputs, numel


def copy_bandwidth(device: torch.device, quick: bool, smoke: bool = False) -> float:
    """Copy bandwidth in GB/s (bytes read + written), measured now with the suite's device timer.

    CUDA: a device-to-device copy of 2^28 floats (1 GiB, far beyond L2). CPU: a memory-to-memory
    copy of 2^25 floats (128 MiB, beyond the last-level caches of the machines we run on) with
    the current thread count.
    """
    if smoke:
        exponent = 20
    else:
        exponent = 28 if device.type == "cuda" else 25 if not quick else 24
    src = torch.empty(2 ** exponent, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    timing = common.measure(lambda i: dst.copy_(src), 1, device, timer="device")
    seconds = timing.get("device_s") or timing["median_s"]
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def run_suite(device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
              cases=None, smoke: bool = False, progress=print, on_rows=None) -> dict:
    """Run every (size, dtype) case; returns {"rows": [...], "meta": {...}}.

    cases: dtype names of DTYPES (default both); smoke: one small size (code paths, not timings);
    on_rows(rows): called with the rows so far after each case (partial results).
    """
    if smoke:
        repeats = common.SMOKE_REPEATS
    copy_gbps = copy_bandwidth(device, quick, smoke)
    progress(f"[step] copy bandwidth {copy_gbps:.1f} GB/s")
    rows = []
    for exponent in sizes(device, quick, smoke):
        for dtype_name in cases or DTYPES:
            dtype = DTYPES[dtype_name]
            case = f"2^{exponent} {dtype_name}"
            progress(f"[step] {case}")
            variants, reference, n_inputs, numel = build_case(exponent, dtype, device, quick)
            case_rows = common.run_case("step", case, variants, reference, device, n_inputs,
                                        tol=common.tolerance(dtype), repeats=repeats, check=check,
                                        min_sample_s=2e-3 if device.type == "cpu" else 1e-3, timer="device",
                                        min_repeats=common.SMOKE_REPEATS if smoke else common.MIN_REPEATS)
            moved = 3 * numel * torch.finfo(dtype).bits // 8     # read x, read grad, write y
            for row in case_rows:
                row.extra.update(numel=numel, dtype=dtype_name, bytes=moved, inputs_rotated=n_inputs)
                if row.device_s:
                    row.gbps = moved / row.device_s / 1e9
                    row.pct_copy = 100.0 * row.gbps / copy_gbps
            rows.extend(case_rows)
            del variants, reference
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if on_rows is not None:
                on_rows(rows)
    timer = "CUDA events per call behind a spin kernel" if device.type == "cuda" else "wall clock (perf_counter)"
    return {"rows": rows, "meta": {"copy_bandwidth_gbps": copy_gbps, "device_timer": timer,
                                   "step_size": STEP_SIZE, "noise_scale": NOISE_SCALE, "clamp": CLAMP, "seed": SEED}}
