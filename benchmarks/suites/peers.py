"""Peer libraries mapped onto our conventions (optional: `pip install .[bench]`).

torchebm (PyPI `torchebm`, tested with 0.8.9) writes Langevin dynamics as Euler-Maruyama on
dx = -grad E dt + sqrt(2 D) dW with D = noise_scale^2 (torchebm.core.base_integrator,
BaseSDERungeKuttaIntegrator.step):

    x_new = x + eta * (-grad E(x)) + sqrt(2 * noise_scale_tebm^2) * sqrt(eta) * randn

Our op (DESIGN section 3) is y = x - a * grad + s * xi. So the same update is

    eta = a,   noise_scale_tebm = s / sqrt(2 a),

and torchebm's `clamp=(lo, hi)` clamps after every step as ours does. Its gradient is
`torch.autograd.grad(E(x), x, grad_outputs=ones)` on a BaseModel whose forward returns per-chain
energies [B], the same gradient our chains compute. Its noise comes from torch's generator;
for the agreement check we give its integrator our noise stream instead (`PhiloxNoiseIntegrator`).
"""
from __future__ import annotations

import importlib.util
import math
from typing import Callable

import torch

TORCHEBM_MISSING = "torchebm is not installed (pip install .[bench] or pip install --no-deps torchebm)"


def torchebm_unavailable() -> str | None:
    """None when torchebm imports, else why not."""
    if importlib.util.find_spec("torchebm") is None:
        return TORCHEBM_MISSING
    try:
        import torchebm.samplers  # noqa: F401
        import torchebm.integrators  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (any import failure makes the peer unavailable)
        return f"torchebm does not import: {type(exc).__name__}: {exc}"
    return None


def torchebm_noise_scale(step_size: float, noise_scale: float) -> float:
    """torchebm's noise_scale giving our noise standard deviation `noise_scale` at drift `step_size`."""
    return noise_scale / math.sqrt(2.0 * step_size)


def energy_model(energy: Callable[[torch.Tensor], torch.Tensor], *, device, dtype):
    """Wrap a per-chain energy function (x -> [B]) as a torchebm BaseModel."""
    from torchebm.core import BaseModel

    class _Energy(BaseModel):
        def __init__(self):
            super().__init__(dtype=dtype, device=device)
            self._energy = energy

        def forward(self, x):
            return self._energy(x)

    return _Energy()


def philox_integrator(noise_for_step: Callable[[int, torch.Tensor], torch.Tensor], *, device, dtype):
    """An Euler-Maruyama integrator that takes step k's noise from noise_for_step(k, x)."""
    from torchebm.integrators import EulerMaruyamaIntegrator

    class PhiloxNoiseIntegrator(EulerMaruyamaIntegrator):
        def __init__(self):
            super().__init__(device=device, dtype=dtype)
            self.steps_taken = 0

        def step(self, state, step_size, **kwargs):
            kwargs["noise"] = noise_for_step(self.steps_taken, state["x"])
            self.steps_taken += 1
            return super().step(state, step_size, **kwargs)

    return PhiloxNoiseIntegrator()


def euler_maruyama(*, device, dtype):
    """torchebm's default Langevin integrator, for the step suite's single update."""
    from torchebm.integrators import EulerMaruyamaIntegrator
    return EulerMaruyamaIntegrator(device=device, dtype=dtype)


def langevin_sampler(energy, *, step_size: float, noise_scale: float, clamp, device, dtype, integrator=None):
    """torchebm's LangevinDynamics on `energy` with our (step_size, noise_scale) convention."""
    from torchebm.samplers import LangevinDynamics
    return LangevinDynamics(energy_model(energy, device=device, dtype=dtype), step_size=step_size,
                            noise_scale=torchebm_noise_scale(step_size, noise_scale),
                            clamp=None if clamp is None else tuple(clamp), device=device, dtype=dtype,
                            integrator=integrator)
