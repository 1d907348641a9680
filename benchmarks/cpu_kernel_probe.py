"""Probe of the C++ CPU kernel against eager PyTorch (medians of interleaved runs).

    python -m benchmarks.cpu_kernel_probe [--log2n 22] [--threads 2] [--repeats 15]
    python -m benchmarks.cpu_kernel_probe --library /path/to/_C.so   # a private build

Times, in one process and round-robin (so that load from other processes hits
every variant alike): the eager update as reference EBM code writes it,
`(x - a*g + s*torch.randn_like(x))` with and without `.clamp(-1, 1)`; the fused
C++ op (`_ext_step`) on float32 and bfloat16, with and without clamp; the C++
noise (`_ext_normal`) against `torch.randn`. Each C++ variant is timed with every
SIMD instruction set this CPU runs (`_ext_cpu_isa`). Prints a markdown table;
this is a probe for the CPU kernel's author, not the benchmark suite.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

A, S = 0.01, 0.1  # step size and noise scale of a typical image-space chain
INF = float("inf")


def _sample_ms(fn) -> tuple[float, float]:
    """(wall ms, CPU ms of all threads) of one call after a warm-up call.

    The CPU time is the steadier number on a shared machine: it leaves out the
    time this process waited for a core.
    """
    fn()  # warm-up: page faults of fresh outputs, thread pool start
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def _cases(n: int):
    """(name, dtype, callable) for every variant; outputs are preallocated."""
    gen = torch.Generator().manual_seed(0)
    ops = torch.ops.langevin_kernels
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.rand(n, generator=gen).mul_(2).sub_(1).to(dtype)
        g = torch.randn(n, generator=gen).to(dtype)
        y = torch.empty_like(x)
        tag = str(dtype).replace("torch.", "")
        cases.append((f"eager clamp {tag}",
                      lambda x=x, g=g: (x - A * g + S * torch.randn_like(x)).clamp(-1, 1)))
        cases.append((f"eager no-clamp {tag}", lambda x=x, g=g: x - A * g + S * torch.randn_like(x)))
        cases.append((f"cpp clamp {tag}",
                      lambda x=x, g=g, y=y: ops._ext_step(x, g, None, y, A, S, 0.0, -1.0, 1.0, 1, 0, None)))
        cases.append((f"cpp no-clamp {tag}",
                      lambda x=x, g=g, y=y: ops._ext_step(x, g, None, y, A, S, 0.0, -INF, INF, 1, 0, None)))
    out = torch.empty(n)
    cases.append(("eager torch.randn fp32", lambda: torch.randn(n)))
    cases.append(("cpp philox_normal fp32", lambda: ops._ext_normal(out, 1, 0, None)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=22)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--library", help="load this extension .so instead of langevin_kernels._C")
    args = parser.parse_args()
    if args.library:
        torch.ops.load_library(args.library)
    else:
        import langevin_kernels  # noqa: F401  (registers the ops)
    torch.set_num_threads(args.threads)
    n = 1 << args.log2n
    ops = torch.ops.langevin_kernels
    # builds before the SIMD kernels have no _ext_cpu_isa: time them as they are
    select_isa = getattr(ops, "_ext_cpu_isa", None)
    if select_isa is None:
        default_isa, isas = "scalar (no _ext_cpu_isa)", ["scalar"]
        select_isa = lambda name=None: "scalar"  # noqa: E731
    else:
        default_isa = select_isa()
        isas = ["baseline"] + ([default_isa] if default_isa != "baseline" else [])

    times: dict[str, list[tuple[float, float]]] = {}
    cases = _cases(n)
    for _ in range(args.repeats):  # round-robin: one sample of every variant per pass
        for isa in isas:
            select_isa(isa)
            for name, fn in cases:
                if name.startswith("eager") and isa != isas[0]:
                    continue
                label = name if name.startswith("eager") else f"{name} [{isa}]"
                times.setdefault(label, []).append(_sample_ms(fn))
    select_isa("auto")

    print(f"n = 2^{args.log2n}, {args.threads} threads, {args.repeats} runs each, "
          f"default CPU ISA: {default_isa}, torch {torch.__version__}\n")
    def eager_for(label: str) -> str:  # the eager line each variant is compared with
        if "normal" in label or "randn" in label:
            return "eager torch.randn fp32"
        return "eager clamp bfloat16" if "bfloat16" in label else "eager clamp float32"

    print("| variant | median wall ms | min wall ms | median CPU ms (all threads) | "
          "wall speed-up vs eager |")
    print("|---|---:|---:|---:|---:|")
    for label, ts in times.items():
        wall = statistics.median(w for w, _ in ts)
        cpu = statistics.median(c for _, c in ts)
        eager_wall = statistics.median(w for w, _ in times[eager_for(label)])
        print(f"| {label} | {wall:.2f} | {min(w for w, _ in ts):.2f} | {cpu:.2f} | "
              f"{eager_wall / wall:.2f}x |")


if __name__ == "__main__":
    main()
