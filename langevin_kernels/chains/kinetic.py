"""KineticChain: underdamped (kinetic) Langevin sampling of exp(-energy(x)) with persistent velocities.

Built on the sampler core (core.py): the K-step loop, noise bookkeeping, stats and the divergence
guard are the core's; this module only replaces the per-step update (``_ula_step``) by one fused
``kinetic_step_`` call and keeps the velocity state. Docs: docs/samplers.md.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..compiled import KineticRunner
from ..kinetic_ops import _check_coefficients, kinetic_step_
from ..ops import philox_normal
from .checks import _per_chain
from .core import _LangevinChain

VELOCITY_SEED_XOR = 0x94D049BB133111EB  # key of the N(0, I) velocity draws (fresh or resampled velocities)


class KineticChain(_LangevinChain):
    """Kinetic Langevin (BAOAB, unit mass) sampler of exp(-energy(x)); one gradient per step.

    Step k is the fused call ``B(kick_k) A(h_k/2) O(h_k) A(h_k/2)`` (lk.kinetic_step_), with
    ``kick_k = (h_{k-1} + h_k) / 2``: the trailing half-kick of BAOAB step k-1 merged with the
    leading one of step k (``h_{-1} = 0`` for fresh velocities). The states x are BAOAB's exactly;
    ``chain.velocity`` is the velocity before the owed half-kick ``h_{K-1}/2 * dE/dx(x_K)``,
    which the next run applies first, so a persistent chain continues BAOAB without a second
    gradient evaluation.

    Args:
        energy: callable, x [B, ...] -> per-chain energies [B].
        n_steps: steps (gradient evaluations) per ``run``.
        step_size: the time step h: a number, n_steps numbers or a schedule (lk.Linear, ...).
            Stable for h < 2 / sqrt(largest curvature of the energy).
        friction: gamma > 0 (per unit time); the O part is exact: c1 = exp(-gamma h).
        clamp: None or (lo, hi): x is clamped after every step and the velocity of a clamped
            coordinate is reversed (a reflecting wall).
        grad_clip: None or c > 0: each chain's gradient is scaled to norm <= c.
        seed, offset: the noise stream (docs/noise.md); velocities are drawn from the stream keyed
            ``seed ^ VELOCITY_SEED_XOR`` at the run's start offset.
        resample_velocity: draw fresh N(0, I) velocities at the start of every run (otherwise they
            persist across runs while the state's shape, dtype and device stay the same).
        track_stats, on_nonfinite: as in DataChain (a re-initialised chain also gets a fresh velocity).
        compile, compile_block: as in DataChain: the run as compiled blocks of fused steps on
            (x, v), the same noise stream and velocities as uncompiled (equal to float rounding).
        capture_graph: as in DataChain (CUDA): the run is captured once and replayed; the velocity
            lives in the graph's static buffer (``chain.velocity`` is that buffer afterwards) and
            the first step's owed half-kick is read from a device scalar, so fresh, resampled and
            persistent velocities all replay the same graph.
        differentiable: not supported yet; True raises NotImplementedError.
    """

    _compiled_runner = KineticRunner

    def __init__(self, energy: Callable[[torch.Tensor], torch.Tensor], *, n_steps, step_size, friction,
                 clamp=None, grad_clip=None, seed=0, offset=0, resample_velocity=False, track_stats=True,
                 on_nonfinite="raise", compile=False, compile_block=None, capture_graph=False,
                 differentiable=False):
        if not callable(energy):
            raise TypeError(f"energy must be callable (x -> per-chain energies [B]), got {type(energy).__name__}")
        if differentiable:
            raise NotImplementedError("KineticChain does not support differentiable=True yet; use differentiable=False")
        self.energy = energy
        self.friction = float(friction)
        super().__init__(n_steps=n_steps, step_size=step_size, noise_scale=0.0, clamp=clamp, grad_clip=grad_clip,
                         seed=seed, offset=offset, track_stats=track_stats, on_nonfinite=on_nonfinite,
                         compile=compile, compile_block=compile_block, capture_graph=capture_graph)
        for k, h in enumerate(self.step_sizes):
            try:
                _check_coefficients(h, self.friction, h)
            except ValueError as error:
                raise ValueError(f"KineticChain step {k}: {error}") from None
        self.resample_velocity = bool(resample_velocity)
        self.velocity: torch.Tensor | None = None
        self._owed_kick = 0.0   # h_{K-1}/2 of the last run: the half-kick velocity still owes
        self._owed_on_device: torch.Tensor | None = None   # the same, read by a captured graph

    @property
    def velocity_seed(self) -> int:
        return self.seed ^ VELOCITY_SEED_XOR

    def reset_velocity(self) -> None:
        """Forget the velocities: the next run starts from fresh N(0, I) draws."""
        self.velocity, self._owed_kick = None, 0.0

    def _energy(self, x):
        return self.energy(x)

    def _reinit_source(self):
        return "their rows of x0"

    def _reinit_rows(self, idx, x, x0, base_offset):
        fresh = self._fresh_velocity(x, base_offset)
        self.velocity[idx] = fresh[idx]
        return x0[idx.to(x0.device)]

    def _fresh_velocity(self, x, offset):
        return philox_normal(x.numel(), seed=self.velocity_seed, offset=offset, device=x.device,
                             dtype=x.dtype).reshape(x.shape)

    def _prepare_velocity(self, x0):
        v = self.velocity
        if (self.resample_velocity or v is None or v.shape != x0.shape or v.dtype != x0.dtype
                or v.device != x0.device):
            # A base tensor, not a view of the flat draw: compiled blocks guard on a view's base.
            self.velocity = self._fresh_velocity(x0, self._offset).clone()
            self._owed_kick = 0.0

    def _ula_step(self, x, k, offset, rng_state, stat_rows=None):
        """The core's per-step hook, here one fused kinetic call; returns (x, record or None)."""
        energy, grad = self._energy_and_grad(x)
        if stat_rows is None:
            grad, norms = self._clip(grad)
            diag = self._diagnostics(energy, norms, None) if self.track_stats else None
        else:
            stat_rows[0].copy_(energy)
            stat_rows[1].copy_(torch.linalg.vector_norm(_per_chain(grad), dim=1, dtype=stat_rows[1].dtype))
            diag = None
        h = self.step_sizes[k]
        kick = self._owed_kick + 0.5 * h
        if k == 0 and self._owed_on_device is not None:   # captured: the owed kick differs between replays
            self.velocity.sub_(grad * self._owed_on_device)
            kick = 0.5 * h
        kinetic_step_(x, self.velocity, grad, step_size=h, friction=self.friction, kick=kick,
                      seed=self.seed, offset=offset, rng_state=None if rng_state is None else rng_state[0])
        self._owed_kick = 0.5 * h
        if self.clamp is not None:
            self._reflect(x)
        return x, diag

    def _reflect(self, x):
        """Clamp x in place and reverse the velocity of every clamped coordinate."""
        lo, hi = self.clamp
        clamped = x.clamp(min=lo, max=hi)
        hit = clamped != x
        x.copy_(clamped)
        self.velocity.copy_(torch.where(hit, -self.velocity, self.velocity))

    def _loop(self, x, base_offset, rng_state, return_trajectory, thin, track_finite=False):
        if track_finite:   # the guard replays the run: from the run's starting velocities
            self.velocity, self._owed_kick = self._start_velocity
        return super()._loop(x, base_offset, rng_state, return_trajectory, thin, track_finite)

    def _capture(self, x0, key, return_trajectory, thin):
        """Capture with the velocity as the graph's static buffer; the capture's warm-up runs
        must not advance the chain, so its velocity and owed kick are restored afterwards."""
        start_velocity, start_owed = self.velocity.clone(), self._owed_kick
        self._static_velocity = self.velocity
        self._owed_on_device = torch.zeros((), dtype=x0.dtype, device=x0.device)
        super()._capture(x0, key, return_trajectory, thin)
        self.velocity.copy_(start_velocity)
        self._owed_kick = start_owed

    def _before_replay(self):
        static = self._static_velocity
        if self.velocity is not static:     # fresh, resampled or restored velocities: into the buffer
            static.copy_(self.velocity)
            self.velocity = static
        self._owed_on_device.fill_(self._owed_kick)

    def _after_replay(self):
        self._owed_kick = 0.5 * self.step_sizes[-1]

    def step(self, x, k=0):
        raise NotImplementedError("KineticChain.step is not available (a step needs the chain's velocities); "
                                  "use run() with n_steps=1")

    def run(self, x0: torch.Tensor, return_trajectory: bool = False, thin: int = 1):
        """Run n_steps steps from x0 (not modified) with the chain's velocities (persistent across
        runs; ``chain.velocity``); returns x, or (x, trajectory) with trajectory[0] = x0."""
        self._prepare_velocity(x0)
        self._start_velocity = (self.velocity.clone(), self._owed_kick)
        try:
            return self._run(x0, return_trajectory, thin)
        finally:
            self._start_velocity = None


def critical_friction(curvature: float) -> float:
    """gamma = 2 sqrt(curvature): critically damped for a quadratic mode of that curvature."""
    return 2.0 * math.sqrt(curvature)
