"""Peer libraries mapped onto our conventions (optional: `pip install .[bench]`, `pip install jax`).

torchebm (PyPI `torchebm`, tested with 0.8.9) writes Langevin dynamics as Euler-Maruyama on
dx = -grad E dt + sqrt(2 D) dW with D = noise_scale^2 (torchebm.core.base_integrator,
BaseSDERungeKuttaIntegrator.step):

    x_new = x + eta * (-grad E(x)) + sqrt(2 * noise_scale_tebm^2) * sqrt(eta) * randn

Our op (docs/op.md) is y = x - a * grad + s * xi. So the same update is

    eta = a,   noise_scale_tebm = s / sqrt(2 a),

and torchebm's `clamp=(lo, hi)` clamps after every step as ours does. Its gradient is
`torch.autograd.grad(E(x), x, grad_outputs=ones)` on a BaseModel whose forward returns per-chain
energies [B], the same gradient our chains compute. Its noise comes from torch's generator;
for the agreement check we give its integrator our noise stream instead (`PhiloxNoiseIntegrator`).

JAX (PyPI `jax`; on a GPU with its CUDA plugin) runs the same chain as a user would write it for
speed: the energy's gradient by jax.grad, the update, noise from jax.random, the K steps in one
lax.scan inside jax.jit. For the agreement check the same scan takes our noise stream as input.
JAX preallocates most of a GPU's memory at its first use unless told not to: this module sets
XLA_PYTHON_CLIENT_PREALLOCATE=false before importing it, so torch and JAX share the device.
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Callable

import torch

TORCHEBM_MISSING = "torchebm is not installed (pip install .[bench] or pip install --no-deps torchebm)"


def import_problem(package: str, missing: str, *modules: str) -> str | None:
    """None when `package` is installed and `modules` import, else why not (`missing` when absent)."""
    if importlib.util.find_spec(package) is None:
        return missing
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (any import failure makes the peer unavailable)
        return f"{package} does not import: {type(exc).__name__}: {exc}"
    return None


def torchebm_unavailable() -> str | None:
    """None when torchebm imports, else why not."""
    return import_problem("torchebm", TORCHEBM_MISSING, "torchebm.samplers", "torchebm.integrators")


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


# ----------------------------------------------------------------------------- JAX

JAX_MISSING = "jax is not installed (pip install jax; on a GPU also its CUDA plugin)"


def jax_unavailable(device: torch.device) -> str | None:
    """None when JAX imports and has a backend for `device`'s type, else why not."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    reason = import_problem("jax", JAX_MISSING, "jax")
    if reason:
        return reason
    import jax
    platform = "gpu" if device.type == "cuda" else "cpu"
    try:
        jax.devices(platform)
    except RuntimeError as exc:
        return f"jax has no {platform} backend here ({str(exc).splitlines()[0][:120]})"
    return None


def jax_device(device: torch.device):
    import jax
    return jax.devices("gpu" if device.type == "cuda" else "cpu")[0]


def to_jax(tensor: torch.Tensor, device: torch.device):
    """A copy of `tensor` as a JAX array on the matching JAX device."""
    import jax
    return jax.device_put(tensor.detach().cpu().numpy(), jax_device(device))


def to_torch(array, device: torch.device) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.array(array)).to(device)     # a writable copy


def jax_double_well(x):
    """E(x) = 2 * sum_i (x_i^2 - 1)^2 per chain, in JAX."""
    import jax.numpy as jnp
    return 2.0 * jnp.sum((x * x - 1.0) ** 2, axis=-1)


def jax_mlp(net: torch.nn.Sequential):
    """The energy of a torch Sequential of Linear and SiLU layers (last output squeezed), in JAX.

    The weights are copied once; a layer of another kind raises TypeError naming it.
    """
    import jax
    import jax.numpy as jnp
    layers = []
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            layers.append(("linear", jnp.asarray(layer.weight.detach().cpu().numpy().T),
                           jnp.asarray(layer.bias.detach().cpu().numpy())))
        elif isinstance(layer, torch.nn.SiLU):
            layers.append(("silu", None, None))
        else:
            raise TypeError(f"jax_mlp: no JAX port of layer {type(layer).__name__} (Linear and SiLU only)")

    def energy(x):
        for kind, weight, bias in layers:
            x = x @ weight + bias if kind == "linear" else jax.nn.silu(x)
        return x[..., 0]
    return energy


def jax_chain(energy, *, n_steps: int, step_size: float, noise_scale: float, clamp):
    """(run(x0, key), run_with_noise(x0, noises)): jit-compiled K-step Langevin chains in JAX.

    run draws step k's noise from jax.random (a key split per step), as JAX code does;
    run_with_noise takes noises[k] instead (the agreement check). Both run the K steps in one
    lax.scan, so one compiled program runs the whole chain; it runs where its inputs were put
    (jax_key, to_jax).
    """
    import jax
    import jax.numpy as jnp

    grad = jax.grad(lambda x: jnp.sum(energy(x)))
    lo, hi = (None, None) if clamp is None else clamp

    def update(x, noise):
        y = x - step_size * grad(x) + noise_scale * noise
        return y if clamp is None else jnp.clip(y, lo, hi)

    def run(x0, key):
        def body(carry, _):
            x, key = carry
            key, sub = jax.random.split(key)
            return (update(x, jax.random.normal(sub, x.shape, x.dtype)), key), None
        (x, _), _ = jax.lax.scan(body, (x0, key), None, length=n_steps)
        return x

    def run_with_noise(x0, noises):
        x, _ = jax.lax.scan(lambda x, noise: (update(x, noise), None), x0, noises)
        return x

    return jax.jit(run), jax.jit(run_with_noise)


def jax_key(seed: int, device: torch.device):
    """A jax.random key on the JAX device matching `device`."""
    import jax
    return jax.device_put(jax.random.key(seed), jax_device(device))


# ----------------------------------------------------------------------------- MCMC peers (samplers suite)
#
# Both peers take p(x) ~ exp(-E(x)) and a step eps in the same convention as our chains' drift a:
# x' = x - eps grad E(x) + sqrt(2 eps) xi (ebmkit's MALA; blackjax's overdamped Langevin proposal
# with grad log p = -grad E). What each costs in gradient evaluations per transition is read off
# their source (ebmkit 0.16, blackjax 1.7) and stated where it is counted.

EBMKIT_MISSING = "ebmkit is not installed (pip install ebmkit; it imports as `ebm`)"
BLACKJAX_MISSING = "blackjax is not installed (pip install blackjax; it needs jax)"


def ebmkit_unavailable() -> str | None:
    """None when ebmkit's samplers import, else why not."""
    reason = import_problem("ebm", EBMKIT_MISSING, "ebm")
    if reason is None and not all(hasattr(importlib.import_module("ebm"), name) for name in ("HMC", "AdaptiveMALA")):
        reason = "ebmkit does not provide HMC and AdaptiveMALA (tested with ebmkit 0.16)"
    return reason


def blackjax_unavailable(device: torch.device) -> str | None:
    """None when blackjax imports and JAX has a backend for `device`, else why not."""
    if importlib.util.find_spec("blackjax") is None:
        return BLACKJAX_MISSING
    return jax_unavailable(device) or import_problem("blackjax", BLACKJAX_MISSING, "blackjax")


# ebmkit's MALA recomputes E and grad E at the current state in every transition (it caches
# nothing), so a transition costs 2 gradients; its HMC recomputes the gradient at the start of
# each trajectory, so a trajectory of L leapfrog steps costs L + 1.
EBMKIT_MALA_GRADS_PER_STEP = 2


def ebmkit_hmc_grads_per_step(leapfrog_steps: int) -> int:
    return leapfrog_steps + 1


def ebmkit_adaptive_mala(energy, x0: torch.Tensor, *, initial_step: float, warmup: int, steps: int):
    """ebmkit AdaptiveMALA: `warmup` dual-averaging transitions (its own shared step), then
    `steps` kept ones; returns (kept draws [steps, B, dim], the frozen step)."""
    from ebm import AdaptiveMALA
    sampler = AdaptiveMALA(step_size=initial_step, steps=steps, warmup=warmup)
    trajectory = sampler.sample(energy, x0, return_trajectory=True)
    return trajectory[1:], sampler.step_size


def ebmkit_hmc(energy, x0: torch.Tensor, *, step_size: float, leapfrog_steps: int, warmup: int, steps: int):
    """ebmkit HMC at a fixed step and trajectory length: `warmup` trajectories discarded, then
    `steps` kept; returns the kept draws [steps, B, dim]."""
    from ebm import HMC
    sampler = HMC(step_size=step_size, leapfrog_steps=leapfrog_steps, steps=steps)
    x = sampler.sample(energy, x0, steps=warmup) if warmup else x0
    return sampler.sample(energy, x, return_trajectory=True)[1:]


def blackjax_mala(energy, *, step_size: float, warmup: int, steps: int):
    """run(x0 [B, dim], key) -> (kept positions [steps, B, dim], mean acceptance): blackjax.mala on
    every chain (jax.vmap) with warm-up and kept steps each in one lax.scan, all in one jax.jit.

    blackjax's MALA state carries log p and its gradient, so a step costs one gradient.
    """
    import blackjax
    import jax
    import jax.numpy as jnp

    mala = blackjax.mala(lambda x: -energy(x[None])[0], step_size)
    step = jax.vmap(mala.step)

    def advance(state, key):
        state, info = step(jax.random.split(key, state.position.shape[0]), state)
        return state, (state.position, info.is_accepted)

    def run(x0, key):
        warm_key, keep_key = jax.random.split(key)
        state = jax.vmap(mala.init)(x0)
        state, _ = jax.lax.scan(lambda s, k: (advance(s, k)[0], None), state, jax.random.split(warm_key, warmup))
        _, (positions, accepted) = jax.lax.scan(advance, state, jax.random.split(keep_key, steps))
        return positions, jnp.mean(accepted)

    return jax.jit(run)
