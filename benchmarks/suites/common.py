"""What every suite shares: variants, the timing method, result rows and the machine record.

Timing method (issue 6, docs/benchmarks.md):
- every variant of a case runs in one process, one after the other, with the same thread
  count (torch's intra-op pool also drives the C++ kernel's at::parallel_for);
- a warm-up call (which also compiles, for torch.compile variants; its time is reported
  separately as compile time) and then a calibration that picks how many calls one sample
  holds, so that a sample lasts at least `min_sample_s` (tiny GPU kernels are otherwise
  dominated by timer resolution);
- inputs are rotated through a pool larger than the last-level cache, so a call does not find
  its inputs in cache left by the previous call;
- each sample is bracketed by perf_counter (on CUDA between two device synchronisations): this
  "wall" time per call includes the host's launch cost, which is what a sampler loop feels;
- with timer="device" (the step suite on CUDA) each sample also gets a device time per call:
  a spin kernel holds the stream while the host queues every call of the sample, each call
  bracketed by its own pair of CUDA events, so the events time the kernels back to back on the
  GPU and not the host's launch gaps (on CPU the device time is the wall time);
- samples of the variants of a case are taken round-robin, so a load spike on a shared machine
  hits all of them alike;
- the reported times are medians over >= 10 samples.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import langevin_kernels as lk

MIN_REPEATS = 10
SMOKE_REPEATS = 3      # --smoke: code paths only, its medians mean nothing
# Bigger than any last-level cache we run on (H100 L2 50 MB, H200 L2 60 MB, server L3s up to
# 256 MB): rotating through this many bytes of inputs means a call reads from DRAM/HBM.
CACHE_FLUSH_BYTES = 512 * 2**20


@dataclass
class Variant:
    """One way of computing a case.

    run(i) computes the case on rotated input i (the timed call); check() computes it on the
    case's fixed check input with the shared noise stream, for the agreement check.
    `context` is entered around warm-up, timing and check (e.g. lk.use_backend).
    """
    name: str
    run: Callable[[int], object] | None = None
    check: Callable[[], torch.Tensor] | None = None
    unavailable: str | None = None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    note: str = ""
    compiled: bool = False      # its first call compiles: the row reports compile_s


@dataclass
class Row:
    """One measured (or unavailable) variant of one case: a row of the report."""
    suite: str
    case: str
    variant: str
    median_s: float | None = None          # wall time per call (host launch cost included)
    min_s: float | None = None
    device_s: float | None = None          # device time per call (timer="device"; CPU: = median_s)
    samples: int = 0
    calls_per_sample: int = 0
    first_call_s: float | None = None      # warm-up call; includes compilation for compile variants
    compile_s: float | None = None         # first_call_s - median_s for compiled variants
    gbps: float | None = None
    pct_copy: float | None = None
    speedup_vs_eager: float | None = None
    max_abs_err: float | None = None
    agrees: bool | None = None
    unavailable: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[int], object], start: int, calls: int, n_inputs: int,
                device: torch.device) -> float:
    """Wall seconds per call of `calls` consecutive calls on rotated inputs (host cost included).

    perf_counter around the calls and a device synchronisation: this also times work on streams
    torch does not own (JAX's), which CUDA events on torch's stream would miss.
    """
    synchronize(device)
    t0 = time.perf_counter()
    for k in range(calls):
        fn((start + k) % n_inputs)
    synchronize(device)
    return (time.perf_counter() - t0) / calls


_spin_rate: dict[int, float] = {}      # CUDA device index -> torch.cuda._sleep cycles per second
MAX_SPIN_S = 0.2                       # never hold a stream longer than this per sample


def _spin_cycles_per_second(device: torch.device) -> float:
    """How many torch.cuda._sleep cycles make one second on this GPU (measured once)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _spin_rate:
        cycles = 20_000_000
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1_000_000)            # first launch pays the module load
        begin.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _spin_rate[index] = cycles / max(begin.elapsed_time(end) / 1e3, 1e-6)
    return _spin_rate[index]


def _device_time_calls(fn: Callable[[int], object], start: int, calls: int, n_inputs: int,
                       device: torch.device, host_s_per_call: float) -> float:
    """Device seconds per call: per-call CUDA events recorded while a spin kernel holds the stream.

    Without the spin, a GPU that has caught up with the host would wait for each launch and the
    events would time the host's launch cost, not the kernels. The spin lasts about twice the
    host's measured queueing time for the whole sample (capped at MAX_SPIN_S).
    """
    if device.type != "cuda":
        return _time_calls(fn, start, calls, n_inputs, device)
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    spin_s = min(MAX_SPIN_S, 2 * calls * host_s_per_call + 1e-4)
    torch.cuda._sleep(int(spin_s * _spin_cycles_per_second(device)))
    for k, (begin, end) in enumerate(pairs):
        begin.record()
        fn((start + k) % n_inputs)
        end.record()
    pairs[-1][1].synchronize()
    return sum(begin.elapsed_time(end) for begin, end in pairs) / 1e3 / calls


def _host_time_per_call(fn: Callable[[int], object], n_inputs: int, device: torch.device, calls: int) -> float:
    """Seconds the host spends queueing one call (CUDA: no synchronisation inside the loop)."""
    synchronize(device)
    t0 = time.perf_counter()
    for k in range(calls):
        fn((1 + k) % n_inputs)
    host = (time.perf_counter() - t0) / calls
    synchronize(device)
    return host


def warm_up(fn: Callable[[int], object], n_inputs: int, device: torch.device, *, min_sample_s: float = 2e-3,
            max_calls: int = 1000) -> dict:
    """First call (compiles, for compiled variants) and the calls per sample that last >= min_sample_s."""
    synchronize(device)
    t0 = time.perf_counter()
    fn(0)
    synchronize(device)
    first_call_s = time.perf_counter() - t0
    probe = _time_calls(fn, 1, 1, n_inputs, device)     # second call: compiled, caches primed
    calls = int(min(max_calls, max(1, math.ceil(min_sample_s / max(probe, 1e-9)))))
    summary = {"first_call_s": first_call_s, "calls_per_sample": calls, "host_s_per_call": probe}
    if device.type == "cuda":
        summary["host_s_per_call"] = _host_time_per_call(fn, n_inputs, device, min(calls, 20))
    return summary


def measure(fn: Callable[[int], object], n_inputs: int, device: torch.device, *, repeats: int = MIN_REPEATS,
            min_sample_s: float = 2e-3, max_calls: int = 1000, timer: str = "wall") -> dict:
    """Warm up, calibrate calls per sample, and return the timing summary of `fn` alone.

    timer="device" also returns device_s, the device time per call (see _device_time_calls).
    """
    repeats = max(repeats, MIN_REPEATS)
    summary = warm_up(fn, n_inputs, device, min_sample_s=min_sample_s, max_calls=max_calls)
    calls = summary["calls_per_sample"]
    samples = [_time_calls(fn, 2 + r * calls, calls, n_inputs, device) for r in range(repeats)]
    result = {**summary, "median_s": statistics.median(samples), "min_s": min(samples), "samples": repeats}
    if timer == "device":
        device_samples = [_device_time_calls(fn, 2 + r * calls, calls, n_inputs, device, summary["host_s_per_call"])
                          for r in range(repeats)]
        result["device_s"] = statistics.median(device_samples)
    return result


def pool_size(bytes_per_input: int, *, device: torch.device, quick: bool) -> int:
    """How many input sets to rotate through so that they do not fit in cache (2..64)."""
    flush = CACHE_FLUSH_BYTES // (4 if quick else 1)
    budget = (1 if device.type == "cpu" else 8) * 2**30     # memory we allow the pool to take
    wanted = math.ceil(flush / max(bytes_per_input, 1))
    affordable = max(2, budget // max(bytes_per_input, 1))
    return int(max(2, min(64, wanted, affordable)))


# ----------------------------------------------------------------------------- agreement check

def tolerance(dtype: torch.dtype, *, chain_steps: int = 1) -> float:
    """Absolute tolerance between a variant and the float32 reference, for values of order 1.

    float32: the backends' log/sqrt/cos differ from torch's by a few ulp (docs/noise.md) and
    fused kernels round once where eager rounds per op: ~1e-6 per step; chains add the
    network's own rounding (compiled matmuls reassociate) amplified by at most (1 + a L) per
    step, so 1e-4 is generous for the short chains here yet far below a real bug (a wrong
    coefficient or reused noise moves values by ~noise_scale = 0.1 or more).
    bfloat16 (8-bit mantissa, eps 2^-8): eager rounds each of its ~4 ops to bfloat16, an
    error of up to ~4 * 2^-9 * |value| for |value| <= ~2: 0.03 bounds it; a real bug is still
    larger than that on most elements, and the check takes the max over >= 2^14 elements.
    """
    if dtype == torch.float32:
        return 1e-5 if chain_steps <= 1 else 1e-4
    if dtype in (torch.bfloat16, torch.float16):
        return 3e-2 if chain_steps <= 1 else 5e-2 * chain_steps
    return 1e-10


def compare(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Max |output - reference| in float32 (inf when shapes differ or values are not finite)."""
    if output.shape != reference.shape:
        return math.inf
    diff = (output.detach().float() - reference.float()).abs().max().item()
    return diff if math.isfinite(diff) else math.inf


def bulk_error(output: torch.Tensor, reference: torch.Tensor, quantile: float = 0.999) -> float:
    """The `quantile` of |output - reference| over all elements (inf when shapes differ or NaN)."""
    if output.shape != reference.shape:
        return math.inf
    diff = (output.detach().float() - reference.float()).abs().flatten()
    if not torch.isfinite(diff).all():
        return math.inf
    k = max(1, min(diff.numel(), math.ceil(quantile * diff.numel())))
    return diff.kthvalue(k).values.item()


@dataclass
class Tolerance:
    """An agreement rule: max |diff| <= max_abs and, when bulk is set, the 99.9 % quantile <= bulk."""
    max_abs: float
    bulk: float | None = None

    def check(self, output: torch.Tensor, reference: torch.Tensor, row: "Row") -> bool:
        row.max_abs_err = compare(output, reference)
        agrees = row.max_abs_err <= self.max_abs
        if self.bulk is not None:
            row.extra["p999_abs_err"] = bulk_error(output, reference)
            agrees = agrees and row.extra["p999_abs_err"] <= self.bulk
        return agrees


def reference_noise(numel: int, *, seed: int, offset: int, device) -> torch.Tensor:
    """The fused op's noise stream at (seed, offset) from the eager reference implementation.

    Eager variants take this as their noise in the agreement check so that they must compute
    the same numbers as the fused op (timed runs use torch.randn_like, as real EBM code does).
    """
    with lk.use_backend("eager"):
        return lk.philox_normal(numel, seed=seed, offset=offset, device=device)


# ----------------------------------------------------------------------------- running a case

SKIPPED = "skipped: "
FAILED = "failed: "


def skipped(reason: str) -> str:
    """A variant's reason for not running, marked as a deliberate skip unless it is a failure."""
    return reason if reason.startswith((SKIPPED, FAILED)) else SKIPPED + reason


def guarded(name: str, build: Callable[[], "Variant"]) -> "Variant":
    """build() or, when building the variant raises, a Variant that reports the failure."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001  (one variant's setup must not stop the others)
        return Variant(name, unavailable=_failure(exc))


def _failure(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{FAILED}{type(exc).__name__}: {text}"


def run_case(suite: str, case: str, variants: list[Variant], reference: torch.Tensor | None,
             device: torch.device, n_inputs: int, *, tol: float | Tolerance, repeats: int, check: bool,
             min_sample_s: float, timer: str = "wall", baseline: str = "eager",
             min_repeats: int = MIN_REPEATS) -> list[Row]:
    """Check and time every variant of one case; failures become rows with a reason.

    Samples are taken round-robin (one sample of each variant per round), so that a load spike
    on a shared machine, or a GPU clock change, falls on all variants alike instead of on
    whichever variant was being timed at that moment. timer="device" adds a device-time sample
    per round (CUDA events behind a spin kernel; on CPU the wall time). Speedups are against the
    variant named `baseline`; rows of variants that were not run start with "skipped: " (a
    reason the machine or the build explains) or "failed: " (an exception: a bug to look at).
    min_repeats lowers the floor of MIN_REPEATS samples for smoke runs only. tol: a max-abs
    tolerance, or a Tolerance (max and bulk quantile).
    """
    repeats = max(repeats, min_repeats)
    rule = tol if isinstance(tol, Tolerance) else Tolerance(tol)
    rows, live = [], []
    for variant in variants:
        row = Row(suite, case, variant.name, unavailable=variant.unavailable and skipped(variant.unavailable),
                  note=variant.note)
        rows.append(row)
        if variant.unavailable:
            continue
        try:
            with variant.context():
                if check and reference is not None and variant.check is not None:
                    synchronize(device)
                    t0 = time.perf_counter()
                    output = variant.check()
                    synchronize(device)
                    row.extra["check_call_s"] = time.perf_counter() - t0   # may hold a compile
                    row.agrees = rule.check(output, reference, row)
                summary = warm_up(variant.run, n_inputs, device, min_sample_s=min_sample_s)
        except Exception as exc:  # a variant that fails is reported, not fatal for the others
            row.unavailable = _failure(exc)
            continue
        row.first_call_s, row.calls_per_sample = summary["first_call_s"], summary["calls_per_sample"]
        live.append((row, variant, summary["host_s_per_call"], [], []))
    for r in range(repeats):
        for row, variant, host_s, samples, device_samples in live:
            if row.unavailable:
                continue
            first, calls = 2 + r * row.calls_per_sample, row.calls_per_sample
            try:
                with variant.context():
                    samples.append(_time_calls(variant.run, first, calls, n_inputs, device))
                    if timer == "device" and device.type == "cuda":
                        device_samples.append(_device_time_calls(variant.run, first, calls, n_inputs, device, host_s))
            except Exception as exc:  # noqa: BLE001
                row.unavailable = _failure(exc)
    for row, _, _, samples, device_samples in live:
        if not row.unavailable:
            row.median_s, row.min_s, row.samples = statistics.median(samples), min(samples), len(samples)
            if timer == "device":
                row.device_s = statistics.median(device_samples) if device_samples else row.median_s
    base = next((r for r in rows if r.variant == baseline and r.median_s), None)
    for row, variant in zip(rows, variants):
        if base and row.median_s:
            row.speedup_vs_eager = base.median_s / row.median_s
        if variant.compiled and row.first_call_s is not None and row.median_s:
            # The check call (when it ran) came first and may have compiled; a check with other
            # arguments (explicit noise) compiles once more: count the excess of both first calls.
            row.compile_s = max(0.0, row.first_call_s - row.median_s) + \
                max(0.0, row.extra.get("check_call_s", row.median_s) - row.median_s)
    return rows


# ----------------------------------------------------------------------------- machine record

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """HEAD of the checkout (+ "-dirty"); $GIT_COMMIT where the tree travelled without .git."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _version(distribution: str) -> str | None:
    """Installed version of a distribution, without importing it (importing jax takes the GPU)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_record(device: torch.device) -> dict:
    """Everything needed to interpret a result file: hardware, software, threads, commit."""
    record = {
        "device": device.type,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "torchebm": _version("torchebm"),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "langevin_kernels": lk.__version__,
        "backends": lk.backends(),
        "git_commit": _git_commit(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                      cuda=torch.version.cuda, sm_count=props.multi_processor_count)
    return record


def write_machine_record(path: str, device: torch.device) -> dict:
    """machine_record(device) as JSON at `path` (for scripts that time nothing themselves)."""
    record = machine_record(device)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
    return record
