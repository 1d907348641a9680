"""Losses for training energy-based models with samples from the chains.

    e = energy(torch.cat([x_data, x_samples.detach()]))          # one forward for both batches
    loss = lk.contrastive_divergence_loss(e[:len(x_data)], e[len(x_data):],
                                          temperature=chain_T, energy_reg=0.1)
    loss.backward()

The contrastive-divergence loss is the maximum-likelihood gradient estimator of an EBM
p(x) ~ exp(-E(x) / T): lowering it pushes energy down on data and up on the model's samples.
"""
from __future__ import annotations

import math
import numbers

import torch


def _energies(name: str, e) -> torch.Tensor:
    if not isinstance(e, torch.Tensor) or not e.is_floating_point():
        got = f"a {e.dtype} tensor" if isinstance(e, torch.Tensor) else type(e).__name__
        raise TypeError(f"{name} must be a floating-point tensor of per-example energies, got {got}")
    if e.numel() == 0:
        raise ValueError(f"{name} is empty; it needs at least one energy")
    return e


def _number(name: str, value, allowed: str, ok) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}={value!r} is out of range; allowed: {allowed}")
    return float(value)


def contrastive_divergence_loss(energy_data: torch.Tensor, energy_samples: torch.Tensor, *,
                                temperature: float = 1.0, energy_reg: float = 0.0) -> torch.Tensor:
    """[mean E(data) - mean E(samples)] / temperature + energy_reg * [mean E(data)^2 + mean E(samples)^2].

    Args:
        energy_data: energies of a data batch (any shape, typically [B]).
        energy_samples: energies of the model's samples (chain outputs), computed from samples
            detached from the chain (the estimator treats them as fixed draws).
        temperature: T of the chain that drew the samples, which targets exp(-E / T): a chain step
            ``x - a * dE/dx + s * noise`` has T = s^2 / (2 a). Dividing by T makes this the
            gradient of the negative log-likelihood of exp(-E / T) (up to the sampling error).
        energy_reg: weight of the energy-squared regulariser, which keeps energies near zero
            (the loss is otherwise unchanged by adding a constant to E, so they can drift without
            bound); the mean of E^2 is taken over each batch and the two means are added
            (computed as ``(e_data^2 + e_samples^2).mean()`` when the batches have the same shape).

    Returns:
        The scalar loss (differentiable in both energies). The raw energy gap
        ``energy_data.mean() - energy_samples.mean()`` is the quantity to watch for divergence:
        it means the same at every temperature.
    """
    e_data = _energies("energy_data", energy_data)
    e_samples = _energies("energy_samples", energy_samples)
    t = _number("temperature", temperature, "a finite number > 0", lambda v: v > 0)
    reg = _number("energy_reg", energy_reg, "a finite number >= 0", lambda v: v >= 0)
    gap = e_data.mean() - e_samples.mean()
    if e_data.shape == e_samples.shape:
        square = (e_data.pow(2) + e_samples.pow(2)).mean()
    else:
        square = e_data.pow(2).mean() + e_samples.pow(2).mean()
    return gap / t + reg * square
