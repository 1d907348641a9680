"""Step benchmark on one GPU: eager PyTorch vs torch.compile vs the fused op (triton, cuda).

    python3 benchmarks/gpu_step_bench.py [--out DIR] [--log2-sizes 14,16,...,28]
                                         [--dtypes float32,bfloat16] [--methods ...]

The update is the clamped Langevin step y = clamp(x - a*g + s*xi, -1, 1), written
the way reference EBM code writes it for `eager` (and compiled by inductor for
`compile`), and as lk.langevin_step for `triton` / `cuda`. Two timings per case:

  device  median of CUDA-event timings per call (triton.testing.do_bench, L2 flushed
          before every call): the GPU time. GB/s counts 3 * numel * itemsize bytes
          (read x, read grad, write y); "% copy" is that over the device-to-device copy
          bandwidth measured in this run (copy of a 1 GiB buffer, bytes read + written).
  loop    wall time per call of back-to-back calls in a Python loop (host overhead
          included), median of 5 runs: what a sampler loop sees at small sizes.

Writes step-cuda-<date>.json into --out (default $OUT, else benchmarks/results) with
the device name, torch/triton/CUDA versions, git commit ($GIT_COMMIT or `git
rev-parse HEAD`) and every row, then prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import triton
import triton.testing

import langevin_kernels as lk
from langevin_kernels import dispatch

A, S, CLAMP = 0.01, 0.1, (-1.0, 1.0)
METHODS = ("eager", "compile", "triton", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COPY_BYTES = 1 << 30


def eager_step(x, g):
    """The update as reference EBM code writes it: four kernels and a clamp."""
    y = x - A * g + S * torch.randn_like(x)
    return y.clamp(*CLAMP)


def make_step(method: str, compiled):
    if method == "eager":
        return eager_step
    if method == "compile":
        return compiled

    def fused(x, g):  # the backend is forced around the measurement (run)
        return lk.langevin_step(x, g, step_size=A, noise_scale=S, seed=0, offset=12345, clamp=CLAMP)
    return fused


def copy_bandwidth_gbps() -> float:
    src = torch.empty(COPY_BYTES // 4, device="cuda", dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    del src, dst
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


def loop_time_us(fn, calls: int) -> float:
    """Median over 5 runs of the wall time per call of `calls` back-to-back calls."""
    runs = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def measure(step, x, g, copy_gbps):
    fn = lambda: step(x, g)  # noqa: E731
    start = time.perf_counter()
    fn()  # first call: compiles (triton JIT, inductor) outside the timings
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    device_ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    calls = max(3, min(200, int(20e-3 / max(device_ms * 1e-3, 1e-6))))
    loop_us = loop_time_us(fn, calls)
    nbytes = 3 * x.numel() * x.element_size()
    gbps = nbytes / (device_ms * 1e-3) / 1e9
    return dict(device_us=device_ms * 1e3, loop_us=loop_us, gbps=gbps, pct_copy=100 * gbps / copy_gbps,
                first_call_s=first_call_s)


def git_commit() -> str:
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout; set GIT_COMMIT)"


def machine_record(copy_gbps: float) -> dict:
    props = torch.cuda.get_device_properties(0)
    return dict(device=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                memory_gib=round(props.total_memory / 2**30, 1), torch=torch.__version__,
                torch_cuda=torch.version.cuda, triton=triton.__version__, python=sys.version.split()[0],
                git_commit=git_commit(), copy_gbps=copy_gbps, backends=lk.backends(),
                date=dt.datetime.now().isoformat(timespec="seconds"))


def run(sizes, dtypes, methods):
    torch._dynamo.config.cache_size_limit = 64  # one static-shape compile per (size, dtype)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64
    compiled = torch.compile(eager_step, dynamic=False)
    copy_gbps = copy_bandwidth_gbps()
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s (1 GiB, read + write)", flush=True)
    rows = []
    for dtype_name in dtypes:
        for log2 in sizes:
            numel = 1 << log2
            gen = torch.Generator(device="cuda").manual_seed(log2)
            x = torch.randn(numel, generator=gen, device="cuda").to(DTYPES[dtype_name])
            g = torch.randn(numel, generator=gen, device="cuda").to(DTYPES[dtype_name])
            for method in methods:
                row = dict(method=method, dtype=dtype_name, log2_numel=log2, numel=numel)
                reason = None if method in ("eager", "compile") else dispatch.unavailable_reason(method, "cuda")
                if reason:
                    row["unavailable"] = reason
                else:
                    try:
                        with lk.use_backend(None if method in ("eager", "compile") else method):
                            row.update(measure(make_step(method, compiled), x, g, copy_gbps))
                    except Exception as exc:  # noqa: BLE001  (record and go on: one table per run)
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
                print(json.dumps(row), flush=True)
            del x, g
            torch.cuda.empty_cache()
    return machine_record(copy_gbps), rows


def cell(row) -> str:
    if row is None:
        return "-"
    if "unavailable" in row or "error" in row:
        return "n/a"
    return f"{row['device_us']:.1f} / {row['loop_us']:.1f} us, {row['gbps']:.0f} GB/s ({row['pct_copy']:.0f}%)"


def markdown(machine, rows, methods) -> str:
    lines = [f"Step benchmark on {machine['device']} (torch {machine['torch']}, triton {machine['triton']}, "
             f"copy {machine['copy_gbps']:.0f} GB/s). Cells: device time / loop time per call, "
             f"GB/s on the device time (% of copy bandwidth).", "",
             "| dtype | numel | " + " | ".join(methods) + " | best fused vs eager (device) |",
             "|---|---|" + "---|" * (len(methods) + 1)]
    by_key = {(r["dtype"], r["log2_numel"], r["method"]): r for r in rows}
    for dtype, log2 in dict.fromkeys((r["dtype"], r["log2_numel"]) for r in rows):
        cells = [cell(by_key.get((dtype, log2, m))) for m in methods]
        eager = by_key.get((dtype, log2, "eager"), {}).get("device_us")
        fused = [by_key.get((dtype, log2, m), {}).get("device_us") for m in ("triton", "cuda")]
        fused = [t for t in fused if t]
        speedup = f"{eager / min(fused):.1f}x" if eager and fused else "-"
        lines.append(f"| {dtype} | 2^{log2} | " + " | ".join(cells) + f" | {speedup} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--log2-sizes", default="14,16,18,20,22,24,26,28")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_step_bench: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    sizes = [int(v) for v in args.log2_sizes.split(",")]
    dtypes = args.dtypes.split(",")
    methods = args.methods.split(",")
    for name in dtypes:
        if name not in DTYPES:
            parser.error(f"--dtypes: {name!r} is not one of {', '.join(DTYPES)}")
    for name in methods:
        if name not in METHODS:
            parser.error(f"--methods: {name!r} is not one of {', '.join(METHODS)}")
    machine, rows = run(sizes, dtypes, methods)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"step-cuda-{dt.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(dict(suite="step", machine=machine, a=A, s=S, clamp=CLAMP, rows=rows), f, indent=1)
    print(f"\nwrote {path}\n")
    print(markdown(machine, rows, methods))
    failed = [r for r in rows if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
