"""Adapted per-chain MALA vs one shared step tuned the same way (docs/chains.md figures).

    python -m benchmarks.per_chain_mala [--chains 32] [--warmup 1000] [--steps 4000] [--device cpu]

For each known target (langevin_kernels.targets) and a per-chain-scaled Gaussian (chain b
samples N(0, c_b^2 C) with c_b from 0.01 to 10, read back divided by c_b), chains start at
scales 0.01 .. 10 around the mean; warm-up tunes the step by dual averaging toward 0.574,
either one step per chain (DataChain adapt_step_size=True) or one step for all chains (the same
dual averaging fed the chains' mean acceptance probability). Prints, per target and variant:
the fraction of chains whose kept-step acceptance is in 0.50-0.65, the bulk ESS of the slowest
coordinate per gradient evaluation of the kept steps (MALA: one per chain and step), and the
wall time per step (warm-up and kept steps together).
"""
from __future__ import annotations

import argparse
import math
import time
from unittest import mock

import torch

import langevin_kernels as lk
from langevin_kernels.adaptation import DualAveraging
from langevin_kernels.diagnostics import effective_sample_size
from langevin_kernels.targets import Banana, GaussianMixture2D, IllConditionedGaussian, NealsFunnel


class SharedDualAveraging(DualAveraging):
    """One step for all chains: dual averaging on the chains' mean acceptance probability."""

    def __init__(self, initial_step_size, **kwargs):
        self.n_chains = initial_step_size.shape[0]
        super().__init__(initial_step_size[:1], **kwargs)

    @property
    def step_size(self):
        return super().step_size.expand(self.n_chains)

    @property
    def final_step_size(self):
        return super().final_step_size.expand(self.n_chains).clone()

    def update(self, accept_prob):
        return super().update(accept_prob.mean(0, keepdim=True))


class ScaledGaussian:
    """Chain b samples c_b * N(0, C): the case one shared step cannot serve."""

    def __init__(self, n_chains):
        self.base = IllConditionedGaussian()
        self.scales = torch.logspace(-2, 1, n_chains, dtype=torch.float64)
        self.mean, self.var = self.base.mean * 0, self.base.var

    def energy(self, x):
        c = self.scales.to(x)[:, None]
        return self.base.energy(x / c + self.base.loc.to(x))

    def standardise(self, traj):
        return traj / self.scales.to(traj)[None, :, None]


def run(target, n_chains, warmup, steps, shared, device, seed=0):
    dim = target.mean.shape[0]
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, n_chains, dtype=torch.float64)
    x0 = (target.mean + scales[:, None] * torch.randn(n_chains, dim, generator=gen, dtype=torch.float64)).to(device)
    chain = lk.DataChain(target.energy, n_steps=steps, step_size=0.01, noise_scale=math.sqrt(0.02), mala=True,
                         adapt_step_size=True, warmup=warmup, seed=seed, on_nonfinite="ignore")
    factory = SharedDualAveraging if shared else DualAveraging
    with mock.patch("langevin_kernels.chains.core.DualAveraging", factory):
        start = time.perf_counter()
        _, traj = chain.run(x0, return_trajectory=True)
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    draws = traj[1:]
    if hasattr(target, "standardise"):
        draws = target.standardise(draws)
    acc = chain.stats.acceptance_per_chain
    in_band = float(((acc >= 0.5) & (acc <= 0.65)).float().mean())
    ess = effective_sample_size(draws).min()
    return dict(in_band=in_band, ess_per_grad=float(ess) / (n_chains * steps),
                us_per_step=seconds / (warmup + steps) * 1e6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    targets = {"gaussian": IllConditionedGaussian(), "funnel": NealsFunnel(), "banana": Banana(),
               "mixture": GaussianMixture2D(), "scaled gaussian": ScaledGaussian(args.chains)}
    print("| target | variant | chains in 0.50-0.65 | min bulk ESS / grad eval | us / step |")
    print("|---|---|---|---|---|")
    for name, target in targets.items():
        for shared in (False, True):
            r = run(target, args.chains, args.warmup, args.steps, shared, args.device)
            variant = "shared step" if shared else "per-chain"
            print(f"| {name} | {variant} | {100 * r['in_band']:.0f} % | {r['ess_per_grad']:.2e} | "
                  f"{r['us_per_step']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
