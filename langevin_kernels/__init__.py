"""langevin-kernels: fused Langevin-update kernels and samplers for energy-based models.

    import langevin_kernels as lk
    y = lk.langevin_step(x, grad, step_size=a, noise_scale=s, seed=0, offset=0)
    x_k = lk.DataChain(energy, n_steps=60, step_size=a, noise_scale=s).run(x0)

See README.md and docs/ for the op contract and the noise stream.
"""
from .chains import ChainStats, DataChain, KineticChain, LatentChain, NonFiniteChainError, sample
from .diagnostics import (StreamingDiagnostics, acceptance_per_chain, chain_diagnostics, effective_sample_size,
                          split_rhat)
from .losses import contrastive_divergence_loss
from .dispatch import backends, get_backend, set_backend, use_backend
from .kinetic_ops import kinetic_step, kinetic_step_
from .ops import langevin_step, langevin_step_, noise_offset_advance, philox_normal
from .replay import ReplayBuffer
from .schedules import Constant, CosineDecay, ExponentialDecay, Linear, Schedule

__version__ = "0.1.0"  # the one version string: pyproject.toml reads it ([tool.setuptools.dynamic])

__all__ = [
    "backends", "get_backend", "set_backend", "use_backend",
    "langevin_step", "langevin_step_", "noise_offset_advance", "philox_normal",
    "kinetic_step", "kinetic_step_", "KineticChain",
    "DataChain", "LatentChain", "ChainStats", "NonFiniteChainError", "ReplayBuffer", "sample",
    "effective_sample_size", "split_rhat", "acceptance_per_chain", "chain_diagnostics", "StreamingDiagnostics",
    "contrastive_divergence_loss",
    "Schedule", "Constant", "Linear", "ExponentialDecay", "CosineDecay",
]
