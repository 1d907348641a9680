"""Kept steps of adapted per-chain MALA, uncompiled vs compile=True (docs/chains.md figures).

    python -m benchmarks.compiled_mala [--chains 64] [--warmup 1000] [--steps 200] [--repeats 5]

64 chains on the 10-D ill-conditioned Gaussian (langevin_kernels.targets), float64, one torch
thread. Each variant's first run warms up (eagerly, tuning the per-chain steps) and compiles;
the kept steps of the next runs (frozen per-chain steps, no warm-up) are timed and the best of
``--repeats`` runs is reported in us per step. Also prints the eager warm-up's time per step and
the compile seconds, the two costs that decide whether compiling the warm-up would pay.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import langevin_kernels as lk
from langevin_kernels.targets import IllConditionedGaussian

VARIANTS = {
    "uncompiled": {},
    "compile=True": {"compile": True},
    "compile=True, track_stats=False, on_nonfinite='ignore'": {"compile": True, "track_stats": False,
                                                                "on_nonfinite": "ignore"},
}


def measure(target, x0, args, options):
    chain = lk.DataChain(target.energy, n_steps=args.steps, step_size=0.01, noise_scale=math.sqrt(0.02), mala=True,
                         adapt_step_size=True, warmup=args.warmup, seed=0, **options)
    t0 = time.perf_counter()
    chain.run(x0)
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        chain.run(x0)
        best = min(best, time.perf_counter() - t0)
    return best / args.steps * 1e6, first, chain.compile_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    target = IllConditionedGaussian()
    x0 = target.sample(args.chains, generator=torch.Generator().manual_seed(0))
    print(f"{args.chains} chains x {target.dim}-D, warm-up {args.warmup}, kept {args.steps} steps, float64")
    for name, options in VARIANTS.items():
        us, first, compile_s = measure(target, x0, args, options)
        print(f"{name}: kept steps {us:.0f} us/step; first run {first:.2f} s (compile {compile_s:.1f} s)")
    t0 = time.perf_counter()   # the eager warm-up alone (one kept step)
    lk.DataChain(target.energy, n_steps=1, step_size=0.01, noise_scale=math.sqrt(0.02), mala=True,
                 adapt_step_size=True, warmup=args.warmup, seed=0).run(x0)
    print(f"eager warm-up: {(time.perf_counter() - t0) / args.warmup * 1e6:.0f} us/step")


if __name__ == "__main__":
    main()
