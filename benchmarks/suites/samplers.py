"""Samplers suite: mixing per gradient and per second on targets with known answers (issue 16, item 4).

Cases (langevin_kernels/targets.py, float32): `gauss` 10-D Gaussian with condition number 100,
`funnel` Neal's funnel in 10-D, `banana` (s = 10, b = 0.03), `mixture` two 2-D Gaussians 2 sd
apart, and `gauss-scaled`: the Gaussian with chain b's target scaled by c_b, log-spaced from 0.01
to 10 (chain b samples c_b X, X ~ gauss; its draws are divided by c_b before any statistic), the
case one shared step cannot serve; only the tuned MALA variants run on it (variants_for).
Every variant gets the same budget of gradient evaluations per chain (warm-up + kept)
and starts its chains from the same dispersed draw (exact mean + 2 exact sd x N(0, 1), seed SEED;
gauss-scaled: times c_b).

Variants:
  lk mala                      DataChain(mala=True) at one step shared by all chains, tuned by
                               dual averaging (target 0.574) over the warm-up budget in blocks of
                               TUNE_BLOCK steps (block-mean acceptance per update); the tuned step
                               `a` is then used by the variants that need a step and have no tuner.
                               This is the "shared step" of the per-chain vs shared comparison:
                               the same dual averaging as the per-chain variant, fed the chains'
                               mean acceptance (per block rather than per step)
  lk ula                       DataChain, a and s = sqrt(2a) fixed per case (ULA_STEP): unadjusted,
                               so its bias is part of the result
  lk kinetic                   KineticChain (BAOAB), h and gamma fixed per case (KINETIC): unadjusted
  lk adaptive-mala (per-chain) DataChain(mala=True, adapt_step_size=True): one step per chain by
                               dual averaging over the warm-up; 'skipped' where this build lacks it
  lk adaptive-mala compile     the same with compile=True (eager warm-up, compiled kept steps), gauss
                               only: a timing row (kept steps run without a trajectory), us per
                               kept step (best of TIMED_REPEATS runs of TIMED_STEPS), compile
                               seconds apart, eager warm-up us per step; --smoke compiles with
                               backend "aot_eager" (the code path, not inductor's cost)
  lk adaptive-mala compile lean  the same with track_stats=False (no per-step records)
  ebmkit AdaptiveMALA          its own dual-averaging warm-up (shared step), then plain MALA
  ebmkit HMC                   fixed h = sqrt(2a) (a: lk mala's tuned step) and L = HMC_LEAPFROG
  blackjax MALA                blackjax.mala at lk mala's tuned step, jax.vmap over chains,
                               lax.scan over steps inside jax.jit (blackjax's window adaptation
                               tunes HMC-family kernels; MALA gets the shared step instead)

Reported per variant: min over coordinates of the bulk ESS of the kept draws (all chains,
lk.effective_sample_size), ESS per gradient evaluation (that ESS / every gradient the variant
evaluated, warm-up included, all chains), ESS per second (wall time of the variant's whole run,
warm-up included; for blackjax the second call, its compile reported apart), mean acceptance
(MH variants), the fraction of chains "in band" (each chain's acceptance over the kept steps
in IN_BAND, 0.50-0.65; MH variants; compiled rows: over their last timed run), max R-hat, and
the moment bias: max over coordinates of |mean - exact| / exact sd
and of |var / exact var - 1|. Gradients are counted as each implementation evaluates them: our
MALA caches the current state's gradient (1 per step, +1 at the start of a run), ebmkit's MALA
recomputes it (2 per transition), ebmkit's HMC costs L + 1 per trajectory, blackjax caches (1).
The variants that reuse lk mala's tuned step do not pay for the tuning in their wall time.
The per-chain adaptive variant's row also times its kept steps alone (us/kept step), the
uncompiled figure the compiled rows compare against.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import langevin_kernels as lk
from langevin_kernels import targets
from langevin_kernels.adaptation import DualAveraging

from . import common, peers

SEED = 2024
CHAINS = 64
INITIAL_STEP = 0.01         # the tuners' starting guess (ours and ebmkit's)
TUNE_BLOCK = 10             # shared tuning: one dual-averaging update per block of MALA steps
DISPERSION = 2.0            # starts: exact mean + DISPERSION * exact sd * N(0, 1)
HMC_LEAPFROG = 10
# (warm-up, kept) gradient evaluations per chain
BUDGETS = {"full": (2000, 18000), "quick": (1000, 4000), "smoke": (40, 80)}
SMOKE_CHAINS = 8
IN_BAND = (0.50, 0.65)      # per-chain acceptance counted as well tuned (target 0.574)
SCALES = (0.01, 10.0)       # gauss-scaled: range of the per-chain target scales c_b
# timing of kept steps alone (per-chain adaptive MALA, uncompiled and compiled): steps, best of
TIMED_STEPS = {"full": 200, "quick": 200, "smoke": 10}
TIMED_REPEATS = {"full": 5, "quick": 3, "smoke": 1}
# smoke checks the compiled path only; inductor's cold compile alone takes a minute on a CPU
COMPILE = {"full": True, "quick": True, "smoke": {"backend": "aot_eager"}}

# Fixed steps of the unadjusted variants, chosen from each target's stiffest curvature (stated,
# not tuned): ULA's drift a below ~1/curvature, BAOAB's h below 2/sqrt(curvature), gamma about
# critical (2 sqrt(curvature)) for the slowest direction.
ULA_STEP = {"gauss": 0.01, "funnel": 0.01, "banana": 0.05, "mixture": 0.1}
KINETIC = {"gauss": (0.15, 2.0), "funnel": (0.1, 1.0), "banana": (0.3, 0.5), "mixture": (0.5, 1.0)}

TARGETS = {
    "gauss": lambda: targets.IllConditionedGaussian(dim=10, condition=100.0),
    "funnel": lambda: targets.NealsFunnel(dim=10),
    "banana": lambda: targets.Banana(),
    "mixture": lambda: targets.GaussianMixture2D(),
}
SCALED = "gauss-scaled"
CASES = tuple(TARGETS) + (SCALED,)
NAMES = {"gauss": "gauss 10-D cond 100", "funnel": "funnel 10-D", "banana": "banana 2-D", "mixture": "mixture 2-D",
         SCALED: "gauss 10-D scaled 0.01..10 per chain"}
ADAPTIVE = "lk adaptive-mala (per-chain)"
COMPILED = ("lk adaptive-mala compile", "lk adaptive-mala compile lean")
VARIANTS = ("lk mala", "lk ula", "lk kinetic", ADAPTIVE, "ebmkit AdaptiveMALA", "ebmkit HMC", "blackjax MALA") + COMPILED
# gauss-scaled: a fixed or borrowed step cannot fit scales 0.01..10 and blackjax vmaps one energy
# over chains; the compiled rows time the kept steps, which the target's shape does not change
SCALED_VARIANTS = ("lk mala", ADAPTIVE, "ebmkit AdaptiveMALA")


def variants_for(key: str) -> tuple[str, ...]:
    """The variants that run on a case (the comparisons each case is for)."""
    if key == SCALED:
        return SCALED_VARIANTS
    return VARIANTS if key == "gauss" else tuple(v for v in VARIANTS if v not in COMPILED)


class ScaledGaussian:
    """Chain b samples c_b X with X ~ IllConditionedGaussian; mean and var are X's, so statistics
    run on the draws divided by c_b (`standardise`)."""

    def __init__(self, chains: int):
        self.base = TARGETS["gauss"]()
        self.scales = torch.logspace(math.log10(SCALES[0]), math.log10(SCALES[1]), chains, dtype=torch.float64)
        self.dim, self.mean, self.var = self.base.dim, self.base.mean, self.base.var

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.energy(x / self.scales.to(x)[:, None])

    def standardise(self, draws: torch.Tensor) -> torch.Tensor:
        return draws / self.scales.to(draws)[:, None]


@dataclass
class SamplerCase:
    key: str
    target: object
    x0: torch.Tensor            # [chains, dim] float32, shared by every variant
    warm_grads: int
    keep_grads: int
    mode: str                   # "full", "quick" or "smoke" (BUDGETS, TIMED_STEPS, COMPILE)

    @property
    def name(self) -> str:
        return NAMES[self.key]

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.energy(x)

    def standardise(self, draws: torch.Tensor) -> torch.Tensor:
        """Draws in the target's own coordinates (gauss-scaled: divided by each chain's scale)."""
        return self.target.standardise(draws) if hasattr(self.target, "standardise") else draws


@dataclass
class Run:
    """What one variant produced: kept draws [steps, chains, dim] (None for a timing-only row)
    and what it cost; accept_per_chain [chains] is each chain's acceptance over the kept steps."""
    draws: torch.Tensor | None
    grads_per_chain: int
    wall_s: float
    acceptance: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)
    accept_per_chain: torch.Tensor | None = None


def make_case(key: str, device: torch.device, mode: str) -> SamplerCase:
    chains = SMOKE_CHAINS if mode == "smoke" else CHAINS
    target = ScaledGaussian(chains) if key == SCALED else TARGETS[key]()
    gen = torch.Generator().manual_seed(SEED)
    z = torch.randn(chains, target.dim, generator=gen, dtype=torch.float64)
    x0 = target.mean + DISPERSION * target.var.sqrt() * z
    if key == SCALED:
        x0 = x0 * target.scales[:, None]
    warm, keep = BUDGETS[mode]
    return SamplerCase(key, target, x0.float().to(device), warm, keep, mode)


# ----------------------------------------------------------------------------- our variants

def _mala_chain(case: SamplerCase, n_steps: int, step: float, offset: int, **options) -> lk.DataChain:
    options = {"on_nonfinite": "ignore", **options}
    return lk.DataChain(case.energy, n_steps=n_steps, step_size=step, noise_scale=math.sqrt(2 * step), mala=True,
                        seed=SEED, offset=offset, **options)


def tune_shared_step(case: SamplerCase):
    """Dual averaging of one MALA step for all chains over the warm-up budget.

    Returns (tuned step, state after warm-up, noise offset, gradients spent per chain). Each
    block's run starts by evaluating the gradient at its start state: TUNE_BLOCK + 1 per block.
    """
    adapt = DualAveraging(torch.tensor([INITIAL_STEP], dtype=torch.float64))
    x, offset, grads = case.x0, 0, 0
    for _ in range(max(1, case.warm_grads // (TUNE_BLOCK + 1))):
        chain = _mala_chain(case, TUNE_BLOCK, float(adapt.step_size), offset)
        x = chain.run(x)
        offset, grads = chain.offset, grads + TUNE_BLOCK + 1
        adapt.update(chain.stats.acceptance_rate.reshape(1).double())
    return float(adapt.final_step_size), x, offset, grads


def lk_mala(case: SamplerCase, _step) -> tuple[Run, float]:
    t0 = time.perf_counter()
    step, x, offset, warm_grads = tune_shared_step(case)
    chain = _mala_chain(case, case.keep_grads - 1, step, offset)
    _, traj = chain.run(x, return_trajectory=True)
    common.synchronize(case.x0.device)
    run = Run(traj[1:], warm_grads + case.keep_grads, time.perf_counter() - t0,
              float(chain.stats.acceptance_rate), note=f"shared step a={step:.4g} (dual averaging, "
              f"{warm_grads // (TUNE_BLOCK + 1)} updates)", extra={"step_size": step},
              accept_per_chain=chain.stats.acceptance_per_chain)
    return run, step


def _unadjusted(case: SamplerCase, chain_of: Callable[[int], object], note: str) -> Run:
    """Warm-up run, then the kept run with its trajectory, on one chain object per phase."""
    t0 = time.perf_counter()
    warm = chain_of(case.warm_grads)
    x = warm.run(case.x0)
    keep = chain_of(case.keep_grads)
    keep.offset = warm.offset
    if hasattr(warm, "velocity"):       # a kinetic chain's velocity continues into the kept run
        keep.velocity, keep._owed_kick = warm.velocity, warm._owed_kick
    _, traj = keep.run(x, return_trajectory=True)
    common.synchronize(case.x0.device)
    return Run(traj[1:], case.warm_grads + case.keep_grads, time.perf_counter() - t0, note=note)


def lk_ula(case: SamplerCase, _step) -> Run:
    a = ULA_STEP[case.key]
    return _unadjusted(case, lambda n: lk.DataChain(case.energy, n_steps=n, step_size=a, noise_scale=math.sqrt(2 * a),
                                                    seed=SEED, track_stats=False, on_nonfinite="ignore"),
                       note=f"a={a}, s=sqrt(2a), unadjusted")


def lk_kinetic(case: SamplerCase, _step) -> Run:
    h, gamma = KINETIC[case.key]
    return _unadjusted(case, lambda n: lk.KineticChain(case.energy, n_steps=n, step_size=h, friction=gamma, seed=SEED,
                                                       track_stats=False, on_nonfinite="ignore"),
                       note=f"BAOAB h={h}, gamma={gamma}, unadjusted")


def _adaptive_chain(case: SamplerCase, n_steps: int, **options) -> lk.DataChain:
    return _mala_chain(case, n_steps, INITIAL_STEP, 0, adapt_step_size=True, warmup=case.warm_grads - 1, **options)


def _kept_us_per_step(chain: lk.DataChain, x: torch.Tensor, repeats: int) -> float:
    """Best time per step of `repeats` runs of an adapted chain's kept steps (no warm-up left)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        chain.run(x)
        common.synchronize(x.device)
        best = min(best, time.perf_counter() - t0)
    return best / chain.n_steps * 1e6


def lk_adaptive_mala(case: SamplerCase, _step) -> Run:
    t0 = time.perf_counter()
    chain = _adaptive_chain(case, case.keep_grads - 1)
    _, traj = chain.run(case.x0, return_trajectory=True)
    common.synchronize(case.x0.device)
    wall = time.perf_counter() - t0
    steps = chain.step_sizes_per_chain
    timed = _mala_chain(case, TIMED_STEPS[case.mode], INITIAL_STEP, 0, adapt_step_size=True, warmup=0)
    timed.step_sizes_per_chain = steps
    kept_us = _kept_us_per_step(timed, traj[-1], TIMED_REPEATS[case.mode])
    # warm-up: 1 gradient at the start + 1 per step; kept run likewise
    return Run(traj[1:], case.warm_grads + case.keep_grads, wall, float(chain.stats.acceptance_rate),
               note=f"per-chain steps {float(steps.min()):.3g}..{float(steps.max()):.3g}",
               extra={"step_size_min": float(steps.min()), "step_size_max": float(steps.max()),
                      "us_per_kept_step": kept_us},
               accept_per_chain=chain.stats.acceptance_per_chain)


def _compiled_adaptive(case: SamplerCase, lean: bool) -> Run:
    """Timing row: first run (eager warm-up, compile, kept steps), then the kept steps alone."""
    options = {"track_stats": False} if lean else {"on_nonfinite": "raise"}     # "raise": DataChain's default
    chain = _adaptive_chain(case, TIMED_STEPS[case.mode], compile=COMPILE[case.mode], **options)
    t0 = time.perf_counter()
    x = chain.run(case.x0)
    common.synchronize(x.device)
    first = time.perf_counter() - t0
    kept_us = _kept_us_per_step(chain, x, TIMED_REPEATS[case.mode])
    warmup = case.warm_grads - 1
    # the warm-up is eager: what the first run spent beyond compiling and one timed kept run
    warm_us = max(0.0, first - chain.compile_seconds - kept_us * chain.n_steps / 1e6) / warmup * 1e6
    backend = "inductor" if COMPILE[case.mode] is True else COMPILE[case.mode]["backend"]
    return Run(None, warmup + 1 + chain.n_steps + 1, first, note=f"{backend}; kept {chain.n_steps} steps, "
               f"best of {TIMED_REPEATS[case.mode]}; eager warm-up {warm_us:.0f} us/step; compile in 'compile'",
               extra={"us_per_kept_step": kept_us, "compile_s": chain.compile_seconds, "warmup_us_per_step": warm_us,
                      "timing_only": True},
               accept_per_chain=None if lean else chain.stats.acceptance_per_chain)


# ----------------------------------------------------------------------------- peers

def _moved_per_chain(draws: torch.Tensor) -> torch.Tensor:
    """Each MH chain's acceptance read off its draws: the fraction of its steps that moved."""
    return (draws[1:] != draws[:-1]).any(-1).float().mean(0)


def ebmkit_adaptive_mala(case: SamplerCase, _step) -> Run:
    per = peers.EBMKIT_MALA_GRADS_PER_STEP
    warmup, steps = case.warm_grads // per, case.keep_grads // per
    torch.manual_seed(SEED)             # ebmkit draws from torch's global generator
    t0 = time.perf_counter()
    draws, step = peers.ebmkit_adaptive_mala(case.energy, case.x0, initial_step=INITIAL_STEP, warmup=warmup,
                                             steps=steps)
    common.synchronize(case.x0.device)
    moved = _moved_per_chain(draws)
    return Run(draws, per * (warmup + steps), time.perf_counter() - t0, float(moved.mean()), accept_per_chain=moved,
               note=f"own dual averaging ({warmup} transitions), step {step:.4g}; 2 grads/transition",
               extra={"step_size": step})


def ebmkit_hmc(case: SamplerCase, step: float) -> Run:
    per = peers.ebmkit_hmc_grads_per_step(HMC_LEAPFROG)
    warmup, steps = case.warm_grads // per, case.keep_grads // per
    h = math.sqrt(2 * step)
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    draws = peers.ebmkit_hmc(case.energy, case.x0, step_size=h, leapfrog_steps=HMC_LEAPFROG, warmup=warmup,
                             steps=steps)
    common.synchronize(case.x0.device)
    moved = _moved_per_chain(draws)
    return Run(draws, per * (warmup + steps), time.perf_counter() - t0, float(moved.mean()), accept_per_chain=moved,
               note=f"h=sqrt(2a)={h:.3g}, L={HMC_LEAPFROG} ({per} grads/trajectory)", extra={"step_size": h})


def blackjax_mala(case: SamplerCase, step: float) -> Run:
    device = case.x0.device
    run = peers.blackjax_mala(case.target.jax_energy(), step_size=step, warmup=case.warm_grads, steps=case.keep_grads)
    x0, key = peers.to_jax(case.x0, device), peers.jax_key(SEED, device)
    t0 = time.perf_counter()
    run(x0, key)[0].block_until_ready()           # compiles
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    positions, acceptance = run(x0, key)
    positions.block_until_ready()
    wall = time.perf_counter() - t0
    draws = peers.to_torch(positions, device)
    return Run(draws, case.warm_grads + case.keep_grads, wall, float(acceptance), accept_per_chain=_moved_per_chain(draws),
               note=f"step a={step:.4g} (lk mala's); jit compile {max(0.0, first - wall):.1f} s not in the time",
               extra={"step_size": step, "compile_s": max(0.0, first - wall)})


# ----------------------------------------------------------------------------- metrics and rows

def in_band(accept_per_chain: torch.Tensor | None) -> float | None:
    """Fraction of chains whose acceptance over the kept steps lies in IN_BAND."""
    if accept_per_chain is None:
        return None
    acc = accept_per_chain.double().cpu()
    return float(((acc >= IN_BAND[0]) & (acc <= IN_BAND[1])).double().mean())


def metrics(run: Run, case: SamplerCase) -> dict:
    """ESS (slowest coordinate), per gradient and per second, R-hat, moment bias and in-band
    fraction of a run; a timing-only run has its cost and in-band fraction alone."""
    common_fields = {"grads_per_chain": run.grads_per_chain, "chains": int(case.x0.shape[0]), "wall_s": run.wall_s,
                     "acceptance": run.acceptance, "in_band": in_band(run.accept_per_chain), **run.extra}
    if run.draws is None:
        return common_fields
    draws = case.standardise(run.draws)
    chains = draws.shape[1]
    ess = lk.effective_sample_size(draws, method="bulk").double().cpu()
    slowest = int(torch.nan_to_num(ess, nan=-1.0).argmin()) if torch.isfinite(ess).any() else 0
    pooled = draws.reshape(-1, draws.shape[-1]).double().cpu()
    sd = case.target.var.sqrt()
    finite = bool(torch.isfinite(pooled).all())
    ess_min = float(ess.min()) if finite else math.nan
    return {
        "ess_min": ess_min,
        "slowest_coordinate": slowest,
        "ess_per_grad": ess_min / (chains * run.grads_per_chain),
        "ess_per_s": ess_min / run.wall_s,
        "rhat_max": float(lk.split_rhat(draws).max()) if finite else math.nan,
        "mean_bias_sd": float(((pooled.mean(0) - case.target.mean).abs() / sd).max()) if finite else math.nan,
        "var_rel_err": float((pooled.var(0) / case.target.var - 1).abs().max()) if finite else math.nan,
        "nonfinite_chains": int((~torch.isfinite(draws[-1]).all(-1)).sum()),
        "kept_draws": int(draws.shape[0]),
        **common_fields,
    }


def _peer_reason(name: str, device: torch.device) -> str | None:
    if name.startswith("ebmkit"):
        return peers.ebmkit_unavailable()
    if name.startswith("blackjax"):
        return peers.blackjax_unavailable(device)
    return None


RUNNERS = {"lk ula": lk_ula, "lk kinetic": lk_kinetic, ADAPTIVE: lk_adaptive_mala,
           "ebmkit AdaptiveMALA": ebmkit_adaptive_mala, "ebmkit HMC": ebmkit_hmc, "blackjax MALA": blackjax_mala,
           COMPILED[0]: lambda case, _step: _compiled_adaptive(case, lean=False),
           COMPILED[1]: lambda case, _step: _compiled_adaptive(case, lean=True)}


def _row(case: SamplerCase, variant: str, run: Run | None = None, reason: str | None = None) -> common.Row:
    row = common.Row("samplers", case.name, variant, unavailable=reason and common.skipped(reason))
    row.extra.update(case=case.key, warm_grads=case.warm_grads, keep_grads=case.keep_grads)
    if run is not None:
        row.median_s, row.samples, row.note = run.wall_s, 1, run.note
        row.extra.update(metrics(run, case))
        row.compile_s = row.extra.get("compile_s")
    return row


def _failed(case: SamplerCase, variant: str, exc: Exception) -> common.Row:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return _row(case, variant, reason=f"{common.FAILED}{type(exc).__name__}: {text}")


def run_case(case: SamplerCase, device: torch.device, progress=print) -> list[common.Row]:
    """Every variant on one case; lk mala first, since its tuned step feeds the fixed-step peers."""
    try:
        run, step = lk_mala(case, None)
        rows = [_row(case, "lk mala", run)]
    except Exception as exc:  # noqa: BLE001  (a failing variant is reported, the others still run)
        rows, step = [_failed(case, "lk mala", exc)], INITIAL_STEP
    for name in variants_for(case.key)[1:]:     # every case's list starts with lk mala
        runner = RUNNERS[name]
        progress(f"[samplers] {case.name}: {name}")
        reason = _peer_reason(name, device)
        if reason:
            rows.append(_row(case, name, reason=reason))
            continue
        try:
            rows.append(_row(case, name, runner(case, step)))
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed(case, name, exc))
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[common.Row]) -> None:
    """ESS per gradient relative to lk ula (the first-order baseline of the issue's target)."""
    base = next((r for r in rows if r.variant == "lk ula" and r.extra.get("ess_per_grad")), None)
    for row in rows:
        if base and row.extra.get("ess_per_grad") and math.isfinite(row.extra["ess_per_grad"]):
            row.speedup_vs_eager = row.extra["ess_per_grad"] / base.extra["ess_per_grad"]


def run_suite(device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
              cases=None, smoke: bool = False, progress=print, on_rows=None) -> dict:
    """Run the sampler cases; returns {"rows": [...], "meta": {...}} (check and repeats do not
    apply: each variant runs once, its whole run timed, since its result is a statistic)."""
    mode = "smoke" if smoke else "quick" if quick else "full"
    rows = []
    for key in cases or CASES:
        case = make_case(key, device, mode)
        progress(f"[samplers] {case.name}: {case.x0.shape[0]} chains, {case.warm_grads} + {case.keep_grads} grads")
        rows.extend(run_case(case, device, progress))
        if on_rows is not None:
            on_rows(rows)
    warm, keep = BUDGETS[mode]
    return {"rows": rows, "meta": {"seed": SEED, "chains": SMOKE_CHAINS if smoke else CHAINS, "warm_grads": warm,
                                   "keep_grads": keep, "initial_step": INITIAL_STEP, "tune_block": TUNE_BLOCK,
                                   "dispersion": DISPERSION, "hmc_leapfrog": HMC_LEAPFROG, "ula_step": ULA_STEP,
                                   "kinetic": KINETIC, "in_band": IN_BAND, "scales": SCALES,
                                   "timed_steps": TIMED_STEPS[mode], "timed_repeats": TIMED_REPEATS[mode],
                                   "compile": COMPILE[mode], "threads": torch.get_num_threads()}}
