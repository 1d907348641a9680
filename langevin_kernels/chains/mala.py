"""MALA: the Metropolis test of Langevin proposals (docs/chains.md, "MALA")."""
from __future__ import annotations

import torch

from ..ops import langevin_step, philox_normal
from .checks import _broadcast, _per_chain

ACCEPT_SEED_XOR = 0x9E3779B97F4A7C15  # golden-ratio constant: the accept stream's key differs from the noise key


def log_q_ratio(x, y, grad_x, grad_y, step_size, noise_scale) -> torch.Tensor:
    """log q(x|y) - log q(y|x) per chain for q(y|x) = N(y; x - a G(x), s^2 I).

    step_size a and noise_scale s are floats or per-chain [B] tensors (adapted MALA).

    grad_x, grad_y are the full drifts G (clipped energy gradient plus prior term). With
    d = y - x the difference of the two Gaussian exponents is
    sum[(G_x + G_y) * ((a / s^2) d - (a^2 / (2 s^2)) (G_y - G_x))]: one elementwise
    expression and one per-chain reduction (a single kernel once compiled), and no
    cancellation of ``y - x + a G_x`` against itself when s is small.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # the sums need more than 8-11 mantissa bits
        x, y, grad_x, grad_y = (t.float() for t in (x, y, grad_x, grad_y))
    a, s2 = step_size, noise_scale * noise_scale
    if isinstance(a, torch.Tensor):   # per-chain: [B] -> [B, 1, ...] over each chain's elements
        a, s2 = _broadcast(a, x), _broadcast(s2, x)
    terms = (grad_x + grad_y) * ((a / s2) * (y - x) - (a * a / (2 * s2)) * (grad_y - grad_x))
    return _per_chain(terms).sum(1)



class MalaSteps:
    """MALA's part of a chain (mixed into the sampler core): what a step carries, the proposal,
    the accept test. The compiled blocks (compiled.py) call `_mala_accept` too."""

    def _mala_current(self, x):
        """(total energy, clipped grad, norms) at x: what a MALA step carries between steps."""
        energy, grad = self._energy_and_grad(x)
        grad, norms = self._clip(grad)
        return self._with_prior(energy, x), grad, norms

    def _mala_step(self, x, k, offset, rng_state, current):
        # The proposal is the unclamped op (a proper Gaussian); the clamp box becomes the
        # target's support instead: proposals outside it are rejected in _mala_accept.
        kwargs = self._op_kwargs(k, offset, None if rng_state is None else rng_state[0], x)
        y = langevin_step(x, current[1], **kwargs)
        normals = philox_normal(x.shape[0], seed=self.accept_seed, offset=offset, device=x.device,
                                rng_state=None if rng_state is None else rng_state[1])
        return self._mala_accept(x, y, current, kwargs["step_size"], kwargs["noise_scale"], normals)

    def _mala_accept(self, x, y, current, a, s, normals, adaptation=None):
        """MALA's accept test of proposal y from x with the accept stream's normals; returns
        (state, what the next step carries, this step's record). Shared with compiled blocks.
        adaptation: a DualAveraging fed each chain's acceptance probability (warm-up only)."""
        energy_x, grad_x, norms_x = current
        energy_y, grad_y, norms_y = self._mala_current(y)
        lam = self.prior_weight
        drift_x, drift_y = (grad_x + lam * x, grad_y + lam * y) if lam else (grad_x, grad_y)
        log_alpha = energy_x.float() - energy_y.float() + log_q_ratio(x, y, drift_x, drift_y, a, s).float()
        # NaN/inf energies make log_alpha NaN or -inf: the comparison rejects them.
        accept = torch.special.log_ndtr(normals) < log_alpha
        if self.clamp is not None:
            inside = self._inside_box(y)
            accept = accept & inside
        if adaptation is not None:
            # min(1, exp(log_alpha)); a proposal outside the clamp box has probability 0.
            prob = torch.exp(log_alpha.clamp(max=0.0))
            adaptation.update(prob if self.clamp is None else prob * inside)
        x = torch.where(_broadcast(accept, x), y, x)
        current = (torch.where(accept, energy_y, energy_x), torch.where(_broadcast(accept, grad_x), grad_y, grad_x),
                   torch.where(accept, norms_y, norms_x))
        diag = None
        if self.track_stats:
            bad = ~(torch.isfinite(energy_y) & torch.isfinite(norms_y))
            diag = self._diagnostics(current[0], current[2], accept, bad)
        return x, current, diag

    def _inside_box(self, y):
        lo, hi = self.clamp
        inside = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        if lo is not None:
            inside = inside & (_per_chain(y) >= lo).all(1)
        if hi is not None:
            inside = inside & (_per_chain(y) <= hi).all(1)
        return inside
