"""Chain suite: K-step Langevin chains, where the update sits between energy gradients.

Cases (float32):
  dw-small  double-well E(x) = 2 * sum_i (x_i^2 - 1)^2, 64 chains x 2 dims x 1000 steps, plain
            Langevin a = 0.01, s = sqrt(0.02): the update and the gradient are a few tiny
            kernels, so the host's cost per step decides (issue 12's first case);
  dw-large  the same energy on 4096 chains x 32 dims x 200 steps;
  mlp       EnergyMLP(dim=32, hidden=128) (32-128-128-128-1, SiLU) on 4096 chains of 32 dims,
            a = 0.005, s = 0.1: small matmuls, launch-bound on a GPU;
  latent    latent chain through a small generator (DigitsGenerator, z in R^16 -> 8x8 images),
            E(z) = ||x - g(z)||^2 / (2 sigma^2) + ||z||^2 / 2 with sigma = 0.3 (dual-MCMC's chain);
  conv      32x32 RGB images through the spectral-norm ResNet energy (ResNetEnergy): compute-bound,
            the update is a small share of the step; clamp to [-1, 1] as image EBMs do.
The networks are the project's own models in eval mode, so every variant evaluates the same
function (spectral norm does not power-iterate in eval mode).

Variants (every one runs the same chain from the same starts):
  eager                  the loop EBM code writes: autograd.grad of the summed energy, then
                         x - a*g + s*randn_like(x) (and clamp);
  compile                torch.compile of one eager step (fullgraph, autograd traced), looped;
  lk[B]                  lk.DataChain / lk.LatentChain with default options on backend B;
  lk[B] lean             the same with track_stats=False, on_nonfinite="ignore";
  lk[B] compile          compile=True (the run as compiled blocks of up to 20 unrolled steps),
                         default backend only;
  lk[B] compile lean     the same with track_stats=False, on_nonfinite="ignore" (the per-step
                         records cost the compiled wrapper two tensor views per step);
  lk[B] compile lean b50 the same with compile_block=50 (small states only: per-step cost is
                         then the block call's fixed host cost / block length);
  lk[B] graph            capture_graph=True (CUDA);  lk[B] compile+graph  both (CUDA);
  torchebm               torchebm's LangevinDynamics (optional);
  jax                    jax.jit of a lax.scan over the K steps, noise from jax.random (optional;
                         the double-well and MLP energies have a JAX port).
Compiled variants (compile, lk compile, jax) report their compile time separately.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

import langevin_kernels as lk
from langevin_kernels import dispatch
from langevin_kernels.chains.core import DYNAMO_TRACES_REQUIRES_GRAD

from . import common, peers
from .common import Variant
from .gemm_floor import gemm_floor_variant

SEED = 4321
SIGMA = 0.3             # latent chain observation noise (docs/training.md, dual-MCMC)
# Network chains: Langevin step delta = 0.1, a = delta^2 / 2, s = delta.
NET_STEP_SIZE, NET_NOISE_SCALE = 0.005, 0.1
# Double-well chains (issue 12): plain Langevin with a = 0.01 and s = sqrt(2a) samples exp(-E).
DW_STEP_SIZE, DW_NOISE_SCALE = 0.01, math.sqrt(0.02)
CASES_WITH_COMPILE_IN_QUICK = ("dw-small", "dw-large", "mlp")
# States this small are host-bound when compiled (a block call's fixed cost exceeds its kernel):
# they also run with LONG_BLOCK-step blocks.
SMALL_STATE_NUMEL, LONG_BLOCK = 1 << 12, 50


@dataclass
class ChainCase:
    """One chain workload: a per-chain energy(x, cond) -> [B], start states and conditions."""
    name: str
    energy: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    x0s: list[torch.Tensor]
    conds: list[torch.Tensor | None]
    n_steps: int
    step_size: float
    noise_scale: float
    clamp: tuple[float, float] | None = None
    generator: torch.nn.Module | None = None     # latent chains: the energy is the posterior's
    jax_energy: Callable[[], Callable] | None = None   # builds the JAX port of the energy, if any

    @property
    def latent(self) -> bool:
        return self.generator is not None

    @functools.cached_property
    def noises(self):
        """noises(k, x): our chains' noise at step k from x0s[0], shared by every check of the case
        (the eager oracle draws it in int64 torch ops: slow, so it is drawn once)."""
        return reference_noises(self.x0s[0])


def _frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    """Eval mode (a pure function of its input) on `device`; parameters keep requires_grad as in training."""
    return module.to(device).eval()


def _starts(shape, device, seed: int, count: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(*shape, generator=gen, device=device) for _ in range(count)]


def double_well(x: torch.Tensor, cond=None) -> torch.Tensor:
    """E(x) = 2 * sum_i (x_i^2 - 1)^2 per chain: wells at x_i = +-1, barrier height 2 per dim."""
    return 2.0 * (x * x - 1.0).pow(2).sum(1)


def _double_well_case(name, chains, dims, steps, device, seed) -> ChainCase:
    return ChainCase(f"{name} {chains}x{dims}", double_well, _starts((chains, dims), device, seed), [None] * 4,
                     steps, DW_STEP_SIZE, DW_NOISE_SCALE, jax_energy=lambda: peers.jax_double_well)


def dw_small_case(device, quick: bool, steps: int | None = None) -> ChainCase:
    return _double_well_case("dw-small", 64, 2, steps or 1000, device, 5)


def dw_large_case(device, quick: bool, steps: int | None = None) -> ChainCase:
    return _double_well_case("dw-large", 4096, 32, steps or 200, device, 6)


def mlp_case(device, quick: bool, steps: int | None = None) -> ChainCase:
    from langevin_kernels.models import EnergyMLP
    torch.manual_seed(0)
    net = _frozen(EnergyMLP(dim=32, hidden=128), device)
    # 60 steps on a GPU even in --quick (a step there costs well under a millisecond), so that a
    # captured graph's or a compiled run's per-run cost is spread as in training.
    default_steps = 10 if quick and device.type == "cpu" else 60
    return ChainCase("mlp 4096x32", lambda x, cond: net(x), _starts((4096, 32), device, 1), [None] * 4,
                     steps or default_steps, NET_STEP_SIZE, NET_NOISE_SCALE,
                     jax_energy=lambda: peers.jax_mlp(net.net))


def latent_case(device, quick: bool, steps: int | None = None) -> ChainCase:
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

    return ChainCase(f"latent {batch}x16 -> 8x8", energy, z0s, observed, steps or (5 if quick else 20),
                     NET_STEP_SIZE, NET_NOISE_SCALE, generator=net)


def conv_case(device, quick: bool, steps: int | None = None) -> ChainCase:
    from langevin_kernels.models import ResNetEnergy
    torch.manual_seed(0)
    on_gpu = device.type == "cuda"
    channels = 128 if on_gpu else 32        # the reference width needs a GPU; CPU runs a narrow net
    batch = (64 if on_gpu else 16) if not quick else 8
    net = _frozen(ResNetEnergy(image_size=32, channels=channels), device)
    gen = torch.Generator(device=device).manual_seed(3)
    x0s = [torch.rand(batch, 3, 32, 32, generator=gen, device=device) * 2 - 1 for _ in range(2)]
    default_steps = 2 if quick else (60 if on_gpu else 10)
    return ChainCase(f"conv32 {batch}x3x32x32 c{channels}", lambda x, cond: net(x), x0s, [None] * 2,
                     steps or default_steps, NET_STEP_SIZE, NET_NOISE_SCALE, (-1.0, 1.0))


CASES = {"dw-small": dw_small_case, "dw-large": dw_large_case, "mlp": mlp_case, "latent": latent_case,
         "conv": conv_case}


# ----------------------------------------------------------------------------- eager baselines

def autograd_gradient(case: ChainCase, x, cond):
    """dE/dx as EBM code writes it: autograd.grad of the summed energy."""
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(case.energy(x, cond).sum(), x)[0]


def func_gradient(case: ChainCase, x, cond):
    """dE/dx by torch.func.grad: what torch.compile users write where dynamo cannot trace
    requires_grad_ (torch 2.11, the GPU machines' torch)."""
    return torch.func.grad(lambda z: case.energy(z, cond).sum())(x)


def eager_step(case: ChainCase, x, cond, noise=None, gradient=autograd_gradient):
    """One chain step as EBM code writes it: the gradient of the summed energy, then the update."""
    grad = gradient(case, x, cond)
    if noise is None:
        noise = torch.randn_like(x)
    x = x.detach() - case.step_size * grad + case.noise_scale * noise
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
    """torch.compile of one eager chain step, fullgraph with autograd.grad traced by dynamo; of
    func_gradient where this torch cannot trace that (the chains' own rule; the record's torch
    version tells which)."""
    gradient = autograd_gradient if DYNAMO_TRACES_REQUIRES_GRAD else func_gradient
    compiled = torch.compile(functools.partial(eager_step, case, gradient=gradient), fullgraph=True, dynamic=False)

    def step(*args):
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return compiled(*args)
    return step


# ----------------------------------------------------------------------------- our chains

def make_chain(case: ChainCase, **options):
    """lk.DataChain / lk.LatentChain for the case; `options` are the chain's keyword options.

    Raises what the constructor raises (TypeError for an option this build does not have).
    """
    options = dict(n_steps=case.n_steps, step_size=case.step_size, noise_scale=case.noise_scale, seed=SEED,
                   **options)
    if case.latent:
        return lk.LatentChain(case.generator, sigma=SIGMA, **options)
    return lk.DataChain(lambda x: case.energy(x, None), clamp=case.clamp, **options)


def _lk_variant(case: ChainCase, backend: str, label: str, options: dict, compiled: bool = False) -> Variant:
    """Our chain on one backend; the check reruns the timed chain from offset 0 (no second compile)."""
    name = f"lk[{backend}]" + (f" {label}" if label else "")
    kind = "LatentChain" if case.latent else "DataChain"
    note = f"lk.{kind}({', '.join(f'{k}={v!r}' for k, v in options.items()) or 'default options'})"
    try:
        chain = make_chain(case, **options)
    except (TypeError, ValueError) as exc:  # an option this build does not have, or refuses here
        # (another exception is a failure: run_case's caller sees it through common.guarded)
        return Variant(name, unavailable=f"{kind}({', '.join(f'{k}={v!r}' for k, v in options.items())}) "
                       f"is not available in this build: {type(exc).__name__}: {str(exc)[:160]}")

    def run(i):
        return chain.run(case.x0s[i], case.conds[i]) if case.latent else chain.run(case.x0s[i])

    def check():
        chain.offset = 0
        out = run(0)
        if compiled and chain.compile_failed:   # else the row would time the uncompiled loop as "compile"
            raise RuntimeError(f"compile=True fell back to the uncompiled loop: {chain.compile_failed}")
        return out

    return Variant(name, run, check, context=functools.partial(lk.use_backend, backend), note=note,
                   compiled=compiled)


def _torchebm_variant(case: ChainCase, device) -> Variant:
    reason = peers.torchebm_unavailable()
    if reason:
        return Variant("torchebm", unavailable=reason)

    def sampler(cond, integrator=None):
        return peers.langevin_sampler(lambda x: case.energy(x, cond), step_size=case.step_size,
                                      noise_scale=case.noise_scale, clamp=case.clamp, device=device,
                                      dtype=torch.float32, integrator=integrator)

    samplers = [sampler(cond) for cond in case.conds]

    def check():
        integrator = peers.philox_integrator(case.noises, device=device, dtype=torch.float32)
        return sampler(case.conds[0], integrator).sample(x=case.x0s[0], n_steps=case.n_steps)

    return Variant("torchebm", lambda i: samplers[i].sample(x=case.x0s[i], n_steps=case.n_steps), check,
                   note="LangevinDynamics.sample (eta=a, noise_scale=s/sqrt(2a))")


def _jax_variant(case: ChainCase, device) -> Variant:
    """JAX jit + lax.scan of the case's JAX energy (cases with a JAX port)."""
    reason = peers.jax_unavailable(device)
    if reason:
        return Variant("jax", unavailable=reason)
    run, run_with_noise = peers.jax_chain(case.jax_energy(), n_steps=case.n_steps, step_size=case.step_size,
                                          noise_scale=case.noise_scale, clamp=case.clamp)
    x0s = [peers.to_jax(x0, device) for x0 in case.x0s]
    keys = [peers.jax_key(SEED + i, device) for i in range(len(x0s))]

    def check():
        stacked = torch.stack([case.noises(k, case.x0s[0]) for k in range(case.n_steps)])
        out = run_with_noise(x0s[0], peers.to_jax(stacked, device))
        return peers.to_torch(out, device)

    return Variant("jax", lambda i: run(x0s[i], keys[i]).block_until_ready(), check, compiled=True,
                   note="jax.jit(lax.scan over the steps), jax.grad, jax.random noise; JAX's own thread pool")


def _backends(device) -> list[str]:
    """The fused backends worth timing in chains (the eager oracle is left to the step suite)."""
    names = ("cpp",) if device.type == "cpu" else ("cuda", "triton")   # the default first (dispatch.py)
    return [name for name in names if dispatch.unavailable_reason(name, device) is None]


QUICK_COMPILE_SKIP = ("compiled variants are left out of this run (--quick leaves them out of the latent "
                      "and conv cases: a cold CPU inductor compile takes 10-30 s)")


def build_variants(case: ChainCase, device, *, with_compile: bool) -> list[Variant]:
    """Every variant of the case (see the module docstring), in report order."""
    step = functools.partial(eager_step, case)
    x0, cond = case.x0s[0], case.conds[0]
    variants = [Variant("eager", lambda i: run_loop(step, case, case.x0s[i], case.conds[i]),
                        lambda: run_loop(step, case, x0, cond, case.noises),
                        note="loop: autograd.grad + x - a*g + s*randn_like(x)")]
    if case.energy is not double_well:   # a network: its products bound every variant's speed-up
        variants.append(common.guarded("GEMM floor", lambda: gemm_floor_variant(
            lambda: run_loop(step, case, x0, cond), what=f"the eager loop ({case.n_steps} steps)")))
    if with_compile:
        compiled = _compiled_step(case)
        variants.append(Variant("compile", lambda i: run_loop(compiled, case, case.x0s[i], case.conds[i]),
                                lambda: run_loop(compiled, case, x0, cond, case.noises), compiled=True,
                                note="torch.compile(one eager step, fullgraph; torch.func.grad where dynamo "
                                "cannot trace requires_grad_), looped"))
    else:
        variants.append(Variant("compile", unavailable=QUICK_COMPILE_SKIP))
    backends = _backends(device)
    on_cuda = device.type == "cuda"
    def ours(backend, label, options, compiled=False):
        name = f"lk[{backend}]" + (f" {label}" if label else "")
        return common.guarded(name, lambda: _lk_variant(case, backend, label, options, compiled))

    for backend in backends:
        variants.append(ours(backend, "", {}))
        variants.append(ours(backend, "lean", {"track_stats": False, "on_nonfinite": "ignore"}))
        if on_cuda:
            variants.append(ours(backend, "graph", {"capture_graph": True}))
        if backend != backends[0]:
            continue        # compiled chains: the default backend only (each compile costs seconds)
        if not with_compile:
            variants.append(Variant(f"lk[{backend}] compile", unavailable=QUICK_COMPILE_SKIP))
            continue
        variants.append(ours(backend, "compile", {"compile": True}, compiled=True))
        lean_compile = {"compile": True, "track_stats": False, "on_nonfinite": "ignore"}
        variants.append(ours(backend, "compile lean", lean_compile, compiled=True))
        if case.x0s[0].numel() <= SMALL_STATE_NUMEL:   # host-bound: longer blocks pay (see NOTES.md, 5)
            variants.append(ours(backend, f"compile lean b{LONG_BLOCK}", {**lean_compile, "compile_block": LONG_BLOCK},
                                 compiled=True))
        if on_cuda:
            variants.append(ours(backend, "compile+graph", {"compile": True, "capture_graph": True}, compiled=True))
    if not backends:
        variants.append(Variant("lk", unavailable=f"no fused backend runs {device.type} tensors here: "
                                f"{lk.backends()}"))
    if not on_cuda:
        variants.append(Variant("lk graph", unavailable="CUDA graphs need a CUDA device"))
    variants.append(common.guarded("torchebm", lambda: _torchebm_variant(case, device)))
    if case.jax_energy is not None:
        variants.append(common.guarded("jax", lambda: _jax_variant(case, device)))
    return variants


def chain_tolerance(case: ChainCase) -> common.Tolerance:
    """The agreement rule between a variant and the eager reference after the case's K steps.

    Each step's rounding differs between variants by ~1e-7 relative (fused kernels round once,
    compiled and JAX code reassociate sums; the kernels' float32 normals differ from the eager
    oracle's by a few units in the last place, times s), and each step multiplies an existing
    difference by at most 1 + a * L (L: the gradient's Lipschitz constant where the chains are).
    The network chains are short (<= 60 steps) and stay within common.tolerance's 1e-4.
    The double-well's curvature is 16 in a well and -8 on the barrier (E'' = 8 (3 x^2 - 1) per
    dim): a * 16 = 0.16 contracts differences in the wells, but a coordinate lingering near the
    barrier top grows them by up to 1.08 per step. Measured on dw-large (4096 x 32 x 200 steps),
    even in float64 with the same float32 noise: median |diff| 2e-8, 99.9 % quantile 8e-6,
    max 7e-4 (8 of 131,072 coordinates above 1e-4) - the noise's last-place differences
    amplified by barrier crossings. So the rule is on the bulk (99.9 % quantile <= 1e-4) with a
    loose max (1e-2): a wrong coefficient, a shifted or reused noise stream moves nearly every
    coordinate by order s = 0.14, 1000x the bulk bound.
    """
    if case.energy is double_well:
        return common.Tolerance(max_abs=1e-2, bulk=1e-4)
    return common.Tolerance(max_abs=common.tolerance(torch.float32, chain_steps=case.n_steps))


SMOKE_STEPS = 3


def _compile_in(key: str, *, quick: bool, smoke: bool, with_compile: bool | None) -> bool:
    if with_compile is not None:
        return with_compile
    if smoke:
        return key == "dw-small"        # one case exercises the compiled paths
    return not quick or key in CASES_WITH_COMPILE_IN_QUICK


def run_suite(device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
              cases=None, steps: int | None = None, with_compile: bool | None = None, smoke: bool = False,
              progress=print, on_rows=None) -> dict:
    """Run the chain cases; returns {"rows": [...], "meta": {...}}.

    cases: keys of CASES (default all); steps: override every case's chain length;
    with_compile: force compiled variants on or off (default: on, except --quick's latent and
    conv); smoke: SMOKE_STEPS-step chains, compiled variants in dw-small only (code paths, not
    timings); on_rows(rows): called with the rows so far after each case (partial results).
    """
    if smoke:
        steps, repeats = steps or SMOKE_STEPS, common.SMOKE_REPEATS
    rows = []
    for key in cases or CASES:
        case = CASES[key](device, quick, steps)
        progress(f"[chain] {case.name} x {case.n_steps} steps")
        compile_here = _compile_in(key, quick=quick, smoke=smoke, with_compile=with_compile)
        x0 = case.x0s[0]
        reference = run_loop(functools.partial(eager_step, case), case, x0, case.conds[0],
                             case.noises) if check else None
        case_rows = common.run_case("chain", case.name, build_variants(case, device, with_compile=compile_here),
                                    reference, device, len(case.x0s), tol=chain_tolerance(case),
                                    repeats=repeats, check=check, min_sample_s=2e-3,
                                    min_repeats=common.SMOKE_REPEATS if smoke else common.MIN_REPEATS)
        for row in case_rows:
            row.extra.update(case=key, n_steps=case.n_steps, chains=int(x0.shape[0]),
                             state_numel=int(x0.numel()), step_size=case.step_size, noise_scale=case.noise_scale)
            if row.median_s:
                row.extra["us_per_step"] = 1e6 * row.median_s / case.n_steps
        rows.extend(case_rows)
        if on_rows is not None:
            on_rows(rows)
    return {"rows": rows, "meta": {"seed": SEED, "sigma": SIGMA, "net_step_size": NET_STEP_SIZE,
                                   "net_noise_scale": NET_NOISE_SCALE, "dw_step_size": DW_STEP_SIZE,
                                   "dw_noise_scale": DW_NOISE_SCALE}}
