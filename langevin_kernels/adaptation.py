"""Per-chain step-size adaptation by dual averaging, all on the device.

Hoffman & Gelman (2014), "The No-U-Turn Sampler", Algorithm 5, applied to each chain
independently: every quantity is a [B] tensor, so one update is a handful of elementwise
kernels and never reads a value back to the host.
"""
import math

import torch

__all__ = ["DualAveraging"]


class DualAveraging:
    """Tunes one step size per chain so that its Metropolis acceptance approaches `target_accept`.

    Call `update(accept_prob)` once per warm-up step with each chain's acceptance probability
    min(1, ratio) ([B]); read `step_size` for the next proposal. After warm-up use
    `final_step_size` (the averaged iterate, which is what the algorithm freezes) for every
    kept sample, so those samples come from one fixed kernel.
    """

    def __init__(self, initial_step_size, target_accept=0.574, gamma=0.05, t0=10.0, kappa=0.75, *,
                 n_chains=None, device=None):
        """`initial_step_size`: a [B] tensor of positive step sizes, or one positive number for
        `n_chains` chains on `device`. The number form is checked on the host and filled on the
        device, so building the adapter never waits for the device; a tensor is checked with one
        device read."""
        if isinstance(initial_step_size, (int, float)) and not isinstance(initial_step_size, bool):
            if n_chains is None or int(n_chains) < 1:
                raise ValueError(f"a number as initial_step_size needs n_chains >= 1 (one step size per "
                                 f"chain), got n_chains={n_chains}")
            if not (math.isfinite(initial_step_size) and initial_step_size > 0):
                raise ValueError(f"initial_step_size must be positive and finite, got {initial_step_size}")
            eps0 = torch.full((int(n_chains),), float(initial_step_size), dtype=torch.float64, device=device)
        else:
            eps0 = torch.as_tensor(initial_step_size, device=device)
            if eps0.dim() != 1 or not torch.is_floating_point(eps0):
                raise ValueError(f"initial_step_size must be a floating [B] tensor (one per chain) or a "
                                 f"number with n_chains, got shape {tuple(eps0.shape)} dtype {eps0.dtype}")
            if not bool(((eps0 > 0) & eps0.isfinite()).all()):
                raise ValueError("initial_step_size must be positive and finite for every chain")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if gamma <= 0 or t0 < 0 or not 0.5 < kappa <= 1.0:
            raise ValueError(f"need gamma > 0, t0 >= 0 and kappa in (0.5, 1], got {gamma}, {t0}, {kappa}")
        self.target_accept, self.gamma, self.t0, self.kappa = target_accept, gamma, t0, kappa
        # mu = log(10 eps0): shrinkage point a bit above the start, so the search favours larger steps.
        self.mu = torch.log(10 * eps0)
        self.log_step = torch.log(eps0).clone()
        self.log_step_avg = torch.zeros_like(eps0)
        self.h_avg = torch.zeros_like(eps0)
        self.count = 0  # a host int: the same for every chain, so it needs no device read

    @property
    def step_size(self):
        """Step size per chain for the next warm-up proposal ([B])."""
        return self.log_step.exp()

    @property
    def final_step_size(self):
        """Averaged step size per chain, to freeze after warm-up ([B])."""
        return (self.log_step_avg if self.count else self.log_step).exp()

    def update(self, accept_prob):
        """One dual-averaging step from each chain's acceptance probability ([B], values in [0, 1])."""
        alpha = torch.nan_to_num(accept_prob.to(self.h_avg), nan=0.0).clamp(0.0, 1.0)  # a NaN proposal counts as rejected
        self.count += 1
        m = self.count
        w = 1.0 / (m + self.t0)
        self.h_avg.mul_(1.0 - w).add_(w * (self.target_accept - alpha))
        torch.sub(self.mu, (math.sqrt(m) / self.gamma) * self.h_avg, out=self.log_step)
        eta = m ** (-self.kappa)
        self.log_step_avg.mul_(1.0 - eta).add_(eta * self.log_step)
        return self.log_step.exp()
