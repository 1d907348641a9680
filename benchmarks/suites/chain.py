"""Chain suite: K-step Langevin chains, where the update sits between energy gradients.

Cases (float32; the networks are the project's own models, in eval mode so that every variant
evaluates the same function: spectral norm does not power-iterate in eval mode):
  mlp     2-D-toy style MLP energy (EnergyMLP, 3 x 128 hidden, SiLU) on 4096 chains of 32 dims:
          tiny kernels, launch-bound: the case where fusing the update and CUDA graphs pay most;
  latent  latent chain through a small generator (DigitsGenerator, z in R^16 -> 8x8 images),
          E(z) = ||x - g(z)||^2 / (2 sigma^2) + ||z||^2 / 2 with sigma = 0.3 (dual-MCMC's chain);
  conv    32x32 RGB images through the spectral-norm ResNet energy (ResNetEnergy): compute-bound,
          the update is a small share of the step; clamp to [-1, 1] as image EBMs do.
Variants: the eager loop with torch.autograd.grad (as EBM code writes it), torch.compile of one
eager chain step (fullgraph, autograd traced), the fused chain (lk.DataChain / lk.LatentChain)
per backend, fused + CUDA graph (capture_graph=True, GPU), and torchebm's LangevinDynamics.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

import langevin_kernels as lk
from langevin_kernels import dispatch

from . import common, peers
from .common import Variant

STEP_SIZE = 0.005       # Langevin step delta = 0.1: a = delta^2 / 2, s = delta
NOISE_SCALE = 0.1
SEED = 4321
SIGMA = 0.3             # latent chain observation noise (ALGORITHMS.md section 1)


def _chain_classes():
    """(DataChain, LatentChain) from the package, or (None, None) before they exist."""
    data = getattr(lk, "DataChain", None)
    latent = getattr(lk, "LatentChain", None)
    if data is None:
        try:
            from langevin_kernels import chains
        except ImportError:
            return None, None
        data, latent = getattr(chains, "DataChain", None), getattr(chains, "LatentChain", None)
    return data, latent


@dataclass
class ChainCase:
    """One chain workload: a per-chain energy(x, cond) -> [B], start states and conditions."""
    name: str
    energy: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    x0s: list[torch.Tensor]
    conds: list[torch.Tensor | None]
    n_steps: int
    clamp: tuple[float, float] | None
    generator: torch.nn.Module | None = None     # latent chains: the energy is the posterior's

    @property
    def latent(self) -> bool:
        return self.generator is not None


def _frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    """Eval mode (a pure function of its input) on `device`; parameters keep requires_grad as in training."""
    return module.to(device).eval()


def mlp_case(device, quick: bool) -> ChainCase:
    from langevin_kernels.models import EnergyMLP
    torch.manual_seed(0)
    net = _frozen(EnergyMLP(dim=32, hidden=128), device)
    gen = torch.Generator(device=device).manual_seed(1)
    x0s = [torch.randn(4096, 32, generator=gen, device=device) for _ in range(4)]
    return ChainCase("mlp 4096x32", lambda x, cond: net(x), x0s, [None] * 4, 10 if quick else 60, None)


def latent_case(device, quick: bool) -> ChainCase:
    from langevin_kernels.models import DigitsGenerator
    torch.manual_seed(0)
    net = _frozen(DigitsGenerator(latent_dim=16), device)
    batch = 128 if quick else (256 if device.type == "cpu" else 1024)
    gen = torch.Generator(device=device).manual_seed(2)
    with torch.no_grad():
        observed = [net(torch.randn(batch, 16, generator=gen, device=device))
                    + SIGMA * torch.randn(batch, 1, 8, 8, generator=gen, device=device) for _ in range(4)]
    z0s = [torch.randn(batch, 16, generator=gen, device=device) for _ in range(4)]

    def energy(z, x):   # what eager code and torchebm differentiate: likelihood + N(0, I) prior
        residual = (x - net(z)).flatten(1)
        return residual.pow(2).sum(1) / (2 * SIGMA ** 2) + 0.5 * z.pow(2).sum(1)

    return ChainCase(f"latent {batch}x16 -> 8x8", energy, z0s, observed, 5 if quick else 20, None, generator=net)


def conv_case(device, quick: bool) -> ChainCase:
    from langevin_kernels.models import ResNetEnergy
    torch.manual_seed(0)
    on_gpu = device.type == "cuda"
    channels = 128 if on_gpu else 32        # the reference width needs a GPU; CPU runs a narrow net
    batch = (64 if on_gpu else 16) if not quick else 8
    net = _frozen(ResNetEnergy(image_size=32, channels=channels), device)
    gen = torch.Generator(device=device).manual_seed(3)
    x0s = [torch.rand(batch, 3, 32, 32, generator=gen, device=device) * 2 - 1 for _ in range(2)]
    steps = 2 if quick else (60 if on_gpu else 10)
    return ChainCase(f"conv32 {batch}x3x32x32 c{channels}", lambda x, cond: net(x), x0s, [None] * 2, steps,
                     (-1.0, 1.0))


CASES = {"mlp": mlp_case, "latent": latent_case, "conv": conv_case}


# ----------------------------------------------------------------------------- eager baselines

def eager_step(case: ChainCase, x, cond, noise=None):
    """One chain step as EBM code writes it: autograd.grad of the summed energy, then the update."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(case.energy(x, cond).sum(), x)
    if noise is None:
        noise = torch.randn_like(x)
    x = x.detach() - STEP_SIZE * grad + NOISE_SCALE * noise
    return x if case.clamp is None else torch.clamp(x, *case.clamp)


def run_loop(step, case: ChainCase, x0, cond, noises=None):
    x = x0
    for k in range(case.n_steps):
        x = step(x, cond) if noises is None else step(x, cond, noises(k, x))
    return x.detach()


def reference_noises(x0: torch.Tensor):
    """noises(k, x): the fused chains' noise at step k (seed SEED, offset k * advance)."""
    advance = lk.noise_offset_advance(x0.numel())
    table = {}

    def noises(k, x):
        if k not in table:
            table[k] = common.reference_noise(x0.numel(), seed=SEED, offset=k * advance,
                                              device=x0.device).reshape(x0.shape).to(x0.dtype)
        return table[k]
    return noises


def _compiled_step(case: ChainCase):
    """torch.compile of one eager chain step, fullgraph with autograd.grad traced by dynamo."""
    compiled = torch.compile(functools.partial(eager_step, case), fullgraph=True, dynamic=False)

    def step(*args):
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return compiled(*args)
    return step


# ----------------------------------------------------------------------------- fused chains

def _fused_chain(case: ChainCase, *, capture_graph: bool = False, offset: int = 0):
    data_chain, latent_chain = _chain_classes()
    options = dict(n_steps=case.n_steps, step_size=STEP_SIZE, noise_scale=NOISE_SCALE, seed=SEED, offset=offset,
                   capture_graph=capture_graph, track_stats=False)
    if case.latent:
        return latent_chain(case.generator, sigma=SIGMA, **options)
    return data_chain(lambda x: case.energy(x, None), clamp=case.clamp, **options)


def _fused_variant(case: ChainCase, backend: str, *, capture_graph: bool = False) -> Variant:
    name = f"fused+graph[{backend}]" if capture_graph else f"fused[{backend}]"
    timed = _fused_chain(case, capture_graph=capture_graph)

    def run(i):
        if case.latent:
            return timed.run(case.x0s[i], case.conds[i])
        return timed.run(case.x0s[i])

    def check():
        chain = _fused_chain(case, capture_graph=capture_graph)     # fresh chain: offset 0
        return chain.run(case.x0s[0], case.conds[0]) if case.latent else chain.run(case.x0s[0])

    kind = "LatentChain" if case.latent else "DataChain"
    return Variant(name, run, check, context=functools.partial(lk.use_backend, backend),
                   note=f"lk.{kind}(track_stats=False{', capture_graph=True' if capture_graph else ''})")


def _torchebm_variant(case: ChainCase, device) -> Variant:
    reason = peers.torchebm_unavailable()
    if reason:
        return Variant("torchebm", unavailable=reason)

    def sampler(cond, integrator=None):
        return peers.langevin_sampler(lambda x: case.energy(x, cond), step_size=STEP_SIZE, noise_scale=NOISE_SCALE,
                                      clamp=case.clamp, device=device, dtype=torch.float32, integrator=integrator)

    samplers = [sampler(cond) for cond in case.conds]

    def check():
        integrator = peers.philox_integrator(reference_noises(case.x0s[0]), device=device, dtype=torch.float32)
        return sampler(case.conds[0], integrator).sample(x=case.x0s[0], n_steps=case.n_steps)

    return Variant("torchebm", lambda i: samplers[i].sample(x=case.x0s[i], n_steps=case.n_steps), check,
                   note="LangevinDynamics.sample (eta=a, noise_scale=s/sqrt(2a))")


def _backends(device) -> list[str]:
    """The fused backends worth timing in chains (the eager oracle is left to the step suite)."""
    names = ("cpp",) if device.type == "cpu" else ("triton", "cuda")
    return [name for name in names if dispatch.unavailable_reason(name, device) is None]


def build_variants(case: ChainCase, device, *, with_compile: bool) -> list[Variant]:
    step = functools.partial(eager_step, case)
    x0, cond = case.x0s[0], case.conds[0]
    variants = [Variant("eager", lambda i: run_loop(step, case, case.x0s[i], case.conds[i]),
                        lambda: run_loop(step, case, x0, cond, reference_noises(x0)),
                        note="loop: autograd.grad + x - a*g + s*randn_like(x)")]
    if with_compile:
        compiled = _compiled_step(case)
        variants.append(Variant("compile", lambda i: run_loop(compiled, case, case.x0s[i], case.conds[i]),
                                lambda: run_loop(compiled, case, x0, cond, reference_noises(x0)),
                                note="torch.compile(one eager step, fullgraph); compile time separate"))
    else:
        variants.append(Variant("compile", unavailable="skipped by --quick (a cold CPU inductor compile of "
                                "one MLP chain step took ~10 s here); run without --quick"))
    data_chain, _ = _chain_classes()
    for backend in _backends(device):
        if data_chain is None:
            variants.append(Variant(f"fused[{backend}]", unavailable="lk.DataChain is not available"))
            continue
        variants.append(_fused_variant(case, backend))
        if device.type == "cuda":
            variants.append(_fused_variant(case, backend, capture_graph=True))
    if device.type != "cuda":
        variants.append(Variant("fused+graph", unavailable="CUDA graphs need a CUDA device"))
    variants.append(_torchebm_variant(case, device))
    return variants


def run_suite(device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
              cases=None, progress=print) -> dict:
    """Run the chain cases; returns {"rows": [...], "meta": {...}}."""
    rows = []
    for key in cases or CASES:
        case = CASES[key](device, quick)
        progress(f"[chain] {case.name} x {case.n_steps} steps")
        with_compile = not quick or key == "mlp"
        x0 = case.x0s[0]
        reference = run_loop(functools.partial(eager_step, case), case, x0, case.conds[0],
                             reference_noises(x0)) if check else None
        case_rows = common.run_case("chain", case.name, build_variants(case, device, with_compile=with_compile),
                                    reference, device, len(case.x0s),
                                    tol=common.tolerance(torch.float32, chain_steps=case.n_steps),
                                    repeats=repeats, check=check, min_sample_s=2e-3)
        for row in case_rows:
            row.extra.update(case=key, n_steps=case.n_steps, chains=int(x0.shape[0]),
                             state_numel=int(x0.numel()))
            if row.median_s:
                row.extra["ms_per_step"] = 1e3 * row.median_s / case.n_steps
        rows.extend(case_rows)
    return {"rows": rows, "meta": {"step_size": STEP_SIZE, "noise_scale": NOISE_SCALE, "seed": SEED,
                                   "sigma": SIGMA}}
