"""The samplers users build: DataChain (exp(-energy(x))), LatentChain (a generator's
posterior p(z | x)) and the one-call `sample`."""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from ..ops import philox_normal
from .checks import _check_state, _optional_positive, _per_chain, _positive_int
from .core import _LangevinChain

REINIT_SEED_XOR = 0xD1B54A32D192ED03  # key of LatentChain's re-initialisation draws (on_nonfinite="reinit")


class DataChain(_LangevinChain):
    """Langevin sampler of exp(-energy(x)) on the fused op (ULA, or MALA with ``mala=True``).

    Args:
        energy: callable, x [B, ...] -> per-chain energies [B] (E = -log density + const).
        n_steps: steps per ``run``.
        step_size: drift coefficient a (plain Langevin with step delta: a = delta**2/2):
            a number, a sequence of n_steps numbers, or a schedule (lk.Linear, ...).
        noise_scale: noise standard deviation s, same forms (s = sqrt(2a) samples exp(-E);
            other ratios sample exp(-E/T), T = s**2 / (2a)).
        clamp: None or (lo, hi): every state is clamped (ULA); with MALA the box is the
            target's support and proposals leaving it are rejected.
        grad_clip: None or c > 0: each chain's gradient is scaled to norm <= c.
        mala: Metropolis-adjusted proposals q(y|x) = N(x - a G(x), s^2 I) with per-chain
            accept/reject on the device; rejected chains keep their state.
        seed, offset: the chain's noise stream (see the module docstring); ``chain.offset``
            advances by n_steps * ceil(numel/4) per run.
        capture_graph: capture the whole run in a CUDA graph once and replay it (CUDA only).
        differentiable: keep the autograd graph through the steps (out-of-place op,
            create_graph=True): the result is differentiable w.r.t. x0 and the energy's parameters.
        track_stats: record per-step diagnostics in ``chain.stats`` (a few tiny reductions).
        on_nonfinite: what ``run`` does with chains whose final state has a NaN/inf entry,
            checked once at the end of the run (one host sync; outside a captured graph):
            ``"raise"`` (default): raise :class:`NonFiniteChainError` with the chains' indices
            (``.chains``), the final state (``.state``) and, when ``track_stats``, the step after
            which each first went non-finite (``.first_step``); ``"reinit"``: replace those
            chains' final state by ``reinit_fn(n)`` (n fresh states [n, *x0.shape[1:]]) or, without
            reinit_fn, by their rows of x0, and count them in ``chain.stats.reinitialized``
            (NonFiniteChainError if the replacement is non-finite too); ``"ignore"``: no check.
            ``chain.last_nonfinite`` holds the indices found by the last check.
            With ``differentiable=True`` the replacement is out of place and differentiable (x0
            rows: identity); the gradient reaching x0 or the parameters through a replaced chain's
            discarded steps can still be NaN (its zero cotangent times a NaN Jacobian).
        reinit_fn: callable n -> n fresh states, used with ``on_nonfinite="reinit"`` only.
        compile: False, True, or a dict of ``torch.compile`` options: run the K steps compiled
            (energy, gradient, update, MALA test, clamp, clip and stats; same noise stream, results
            equal to float rounding). On CPU states a ULA chain without ``compile_block`` runs as a
            compiled loop (torch's scan operator, the step compiled once); otherwise, and for
            energies the loop cannot trace, as blocks of ``compile_block`` unrolled steps (default
            up to 20), one graph each (docs/chains.md, "Compiled chains"). The first run of a shape compiles (``chain.compile_seconds``); later
            runs and optimizer steps on the energy's parameters reuse the graph. An energy that
            cannot be compiled gives a RuntimeWarning and the chain runs uncompiled
            (``chain.compile_failed`` says why). Runs with ``return_trajectory=True`` run uncompiled.
        adapt_step_size: with ``mala=True``: one step size per chain, tuned by dual averaging
            (lk.adaptation.DualAveraging) on the device during ``warmup`` extra MALA steps at the
            start of the first run, toward acceptance ``target_accept`` (default 0.574), then
            frozen: the n_steps kept steps (trajectory, stats) use a fixed kernel. ``step_size`` is
            the initial step; the noise scale follows s_b = sqrt(2 T a_b) with
            T = noise_scale**2 / (2 step_size). ``chain.step_sizes_per_chain`` ([B]) holds the frozen
            steps (also in ``state_dict()``); later runs reuse them without warm-up. With
            ``compile=True`` the warm-up runs eagerly and the kept steps in compiled blocks (the
            per-chain steps are graph inputs: new values do not recompile). NotImplementedError
            with capture_graph or differentiable.
        warmup, target_accept: see adapt_step_size; warm-up steps advance ``chain.offset`` too.
    """

    def __init__(self, energy: Callable[[torch.Tensor], torch.Tensor], *, n_steps, step_size, noise_scale,
                 clamp=None, grad_clip=None, mala=False, seed=0, offset=0, capture_graph=False,
                 differentiable=False, track_stats=True, on_nonfinite="raise",
                 reinit_fn: Callable[[int], torch.Tensor] | None = None, compile=False, compile_block=None,
                 adapt_step_size=False, warmup=0, target_accept=0.574):
        if not callable(energy):
            raise TypeError(f"energy must be callable (x -> per-chain energies [B]), got {type(energy).__name__}")
        if reinit_fn is not None and not callable(reinit_fn):
            raise TypeError(f"reinit_fn must be None or callable (n -> n fresh states), got {type(reinit_fn).__name__}")
        self.energy = energy
        super().__init__(n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, clamp=clamp,
                         grad_clip=grad_clip, mala=mala, seed=seed, offset=offset, capture_graph=capture_graph,
                         differentiable=differentiable, track_stats=track_stats, on_nonfinite=on_nonfinite,
                         compile=compile, compile_block=compile_block, adapt_step_size=adapt_step_size,
                         warmup=warmup, target_accept=target_accept)
        if reinit_fn is not None and self.on_nonfinite != "reinit":
            raise ValueError(f"reinit_fn is used only with on_nonfinite='reinit', but on_nonfinite={on_nonfinite!r}")
        self.reinit_fn = reinit_fn

    def _energy(self, x):
        return self.energy(x)

    def _reinit_source(self):
        return "reinit_fn" if self.reinit_fn is not None else "their rows of x0; pass reinit_fn"

    def _reinit_rows(self, idx, x, x0, base_offset):
        if self.reinit_fn is None:
            return x0[idx.to(x0.device)]
        fresh = self.reinit_fn(int(idx.numel()))
        want = (int(idx.numel()), *x.shape[1:])
        if not isinstance(fresh, torch.Tensor) or tuple(fresh.shape) != want:
            got = tuple(fresh.shape) if isinstance(fresh, torch.Tensor) else type(fresh).__name__
            raise ValueError(f"reinit_fn({want[0]}) must return a tensor of shape {want}, got {got}")
        return fresh

    def run(self, x0: torch.Tensor, return_trajectory: bool = False, thin: int = 1):
        """Run n_steps steps from x0 (not modified); returns x, or (x, trajectory) where
        trajectory[j] is the state after j * thin steps (trajectory[0] = x0)."""
        return self._run(x0, return_trajectory, thin)


class LatentChain(_LangevinChain):
    """Langevin sampler of the generator posterior p(z | x) for x = g(z) + N(0, sigma^2 I), z ~ N(0, I).

    The energy is ||x - g(z)||^2 / (2 sigma^2) per chain (gradient by autograd through the
    generator); the prior's gradient z is fused into the op with prior_weight=1. Options as
    in :class:`DataChain` (no clamp, no reinit_fn; adapt_step_size included): with ``on_nonfinite="reinit"`` a non-finite
    chain restarts from a draw of the N(0, I) prior, taken from the chain's own Philox stream
    ``lk.philox_normal(z0.numel(), seed=seed ^ REINIT_SEED_XOR, offset=O)`` at the run's start
    offset O (its row of that draw), so reruns from the same (seed, offset) are reproducible.
    """

    def __init__(self, generator: Callable[[torch.Tensor], torch.Tensor], *, sigma: float, n_steps, step_size,
                 noise_scale, grad_clip=None, mala=False, seed=0, offset=0, capture_graph=False,
                 differentiable=False, track_stats=True, on_nonfinite="raise", compile=False, compile_block=None,
                 adapt_step_size=False, warmup=0, target_accept=0.574):
        if not callable(generator):
            raise TypeError(f"generator must be callable (z -> x), got {type(generator).__name__}")
        sigma = _optional_positive("sigma", sigma)
        if sigma is None:
            raise ValueError("sigma=None: the observation noise sigma must be a number > 0")
        self.generator, self.sigma = generator, sigma
        self._observed = None
        super().__init__(n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, prior_weight=1.0,
                         grad_clip=grad_clip, mala=mala, seed=seed, offset=offset, capture_graph=capture_graph,
                         differentiable=differentiable, track_stats=track_stats, on_nonfinite=on_nonfinite,
                         compile=compile, compile_block=compile_block, adapt_step_size=adapt_step_size,
                         warmup=warmup, target_accept=target_accept)

    @property
    def reinit_seed(self) -> int:
        """Key of the prior draws that restart non-finite chains (seed XOR REINIT_SEED_XOR)."""
        return self.seed ^ REINIT_SEED_XOR

    def _reinit_source(self):
        return "N(0, I) prior draws"

    def _reinit_rows(self, idx, z, z0, base_offset):
        prior = philox_normal(z.numel(), seed=self.reinit_seed, offset=base_offset, device=z.device)
        return prior.reshape(z.shape)[idx]

    def _energy(self, z):
        generated = self.generator(z)
        if not isinstance(generated, torch.Tensor) or generated.shape != self._observed.shape:
            got = tuple(generated.shape) if isinstance(generated, torch.Tensor) else type(generated).__name__
            raise ValueError(f"generator(z) returned shape {got} but the observations x have shape "
                             f"{tuple(self._observed.shape)}; they must match (broadcasting one against the "
                             "other would sample the wrong posterior)")
        residual = _per_chain(self._observed - generated)
        return residual.pow(2).sum(1) / (2.0 * self.sigma ** 2)

    def _graph_extra_key(self):
        return (tuple(self._observed.shape), self._observed.dtype)

    def _bind(self, z0, x):
        _check_state("x", x)
        if x.shape[0] != z0.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but z0 has {z0.shape[0]} chains; one observation per chain")
        if not self.capture_graph:
            self._observed = x if self.differentiable else x.detach()
        elif self._observed is None or self._observed.shape != x.shape or self._observed.dtype != x.dtype \
                or self._observed.device != x.device:
            self._observed = x.detach().clone()   # the captured graph reads this buffer
            self.reset_graph()
        else:
            self._observed.copy_(x)

    def step(self, z: torch.Tensor, k: int = 0, x: torch.Tensor | None = None) -> torch.Tensor:
        """Step k on z for observations x (the last bound ones if None); see DataChain.step."""
        if x is not None:
            self._bind(z, x)
        if self._observed is None:
            raise ValueError("no observations bound: pass x")
        return super().step(z, k)

    def run(self, z0: torch.Tensor, x: torch.Tensor, return_trajectory: bool = False, thin: int = 1):
        """Run n_steps steps from z0 towards p(z | x); returns z (or (z, trajectory))."""
        _check_state("z0", z0)
        self._bind(z0, x)
        return self._run(z0, return_trajectory, thin, name="z0")


def sample(energy: Callable[[torch.Tensor], torch.Tensor], n: int, shape, *, n_steps: int, step_size, noise_scale,
           init: str = "normal", seed: int = 0, device="cpu", dtype=torch.float32, **chain_options) -> torch.Tensor:
    """n samples of exp(-energy) by a short-run chain from noise: one call, no chain object.

    ``shape`` is one sample's shape (the state is [n, *shape]); ``init`` is "normal" (N(0, I))
    or "uniform" (U(-1, 1)), drawn from the package's Philox stream keyed ``seed ^ REINIT_SEED_XOR``
    so that a call is reproducible from ``seed`` alone. Other keyword arguments go to
    :class:`DataChain` (clamp, mala, grad_clip, on_nonfinite, ...). For persistent chains, or
    to read ``chain.stats``, build a DataChain instead.
    """
    n = _positive_int("n", n)
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if init not in ("normal", "uniform"):
        raise ValueError(f"init={init!r} is not allowed; allowed values: 'normal', 'uniform'")
    numel = n * math.prod(shape)
    draws = philox_normal(numel, seed=int(seed) ^ REINIT_SEED_XOR, offset=0, device=device).reshape(n, *shape)
    if init == "uniform":   # the normal CDF maps N(0, 1) draws to U(0, 1)
        draws = 2.0 * torch.special.ndtr(draws) - 1.0
    chain = DataChain(energy, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, seed=seed,
                      **chain_options)
    return chain.run(draws.to(dtype))
