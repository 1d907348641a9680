"""Adaptive per-chain MALA (DataChain(mala=True, adapt_step_size=True)): the API, the
per-chain proposal density, and validation on known targets (docs/chains.md)."""
from __future__ import annotations

import math

import pytest
import torch

import langevin_kernels as lk
from langevin_kernels.chains.mala import log_q_ratio
from langevin_kernels.diagnostics import effective_sample_size
from langevin_kernels.targets import GaussianMixture2D, IllConditionedGaussian

from host_reads import HostReadError, forbid_host_reads

BAND = (0.50, 0.65)


def _spread_start(target, n_chains, dim, seed=0):
    """Chains started at scales 0.01 .. 10 around the target's mean (the issue's hard start)."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, n_chains, dtype=torch.float64)
    return target.mean + scales[:, None] * torch.randn(n_chains, dim, generator=gen, dtype=torch.float64)


def _adapted_chain(energy, **kwargs):
    options = dict(n_steps=2000, step_size=0.01, noise_scale=math.sqrt(0.02), mala=True, adapt_step_size=True,
                   warmup=1000, seed=0)
    options.update(kwargs)
    return lk.DataChain(energy, **options)


def _fraction_in_band(chain):
    acc = chain.stats.acceptance_per_chain
    return float(((acc >= BAND[0]) & (acc <= BAND[1])).float().mean())


def _check_moments(traj, target):
    """Pooled mean and variance of the kept draws against the exact ones, in units of their
    Monte Carlo standard errors from the ESS (mean: sd / sqrt(ESS); variance: var * sqrt(2 / ESS),
    the Gaussian value). 5 standard errors: a false alarm below 1e-5 per coordinate."""
    draws = traj[1:]
    ess = effective_sample_size(draws, method="mean")
    pooled = draws.reshape(-1, draws.shape[-1])
    mean, var = pooled.mean(0), pooled.var(0)
    z_mean = (mean - target.mean).abs() / (target.var.sqrt() / ess.sqrt())
    rel_var = (var / target.var - 1).abs()
    assert float(z_mean.max()) < 5.0, (mean, target.mean, ess)
    # a mixture's variance estimate is less Gaussian: 5 SE of the Gaussian formula, plus 5 % slack
    assert bool((rel_var < 5.0 * torch.sqrt(2.0 / ess) + 0.05).all()), (var, target.var, ess)


# ----------------------------------------------------------------------------- API

def test_log_q_ratio_per_chain_equals_scalar_rows():
    gen = torch.Generator().manual_seed(0)
    x, y, gx, gy = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    a = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    s = torch.sqrt(2 * a)
    got = log_q_ratio(x, y, gx, gy, a, s)
    for b in range(3):
        want = log_q_ratio(x[b:b + 1], y[b:b + 1], gx[b:b + 1], gy[b:b + 1], float(a[b]), float(s[b]))
        torch.testing.assert_close(got[b:b + 1], want)


def test_steps_are_frozen_after_warm_up_and_reused():
    target = IllConditionedGaussian()
    chain = _adapted_chain(target.energy, n_steps=50, warmup=200)
    x0 = _spread_start(target, 8, target.dim)
    assert chain.step_sizes_per_chain is None
    chain.run(x0)
    steps = chain.step_sizes_per_chain.clone()
    assert steps.shape == (8,) and bool((steps > 0).all())
    advance = lk.noise_offset_advance(x0.numel())
    assert chain.offset == 250 * advance                     # warm-up steps use the stream too
    torch.testing.assert_close(chain.noise_scales_per_chain, torch.sqrt(2 * steps))   # temperature 1
    chain.run(x0)                                             # second run: no warm-up, same steps
    assert chain.offset == 300 * advance
    assert torch.equal(chain.step_sizes_per_chain, steps)
    fresh = _adapted_chain(target.energy, n_steps=50, warmup=200)
    fresh.load_state_dict(chain.state_dict())                 # reuse in a new chain: no warm-up
    assert torch.equal(fresh.step_sizes_per_chain, steps) and fresh.offset == chain.offset


def test_equal_frozen_steps_equal_the_scalar_mala_chain():
    """Frozen per-chain steps that are all a0 give the plain MALA chain with step a0: the per-chain
    op call, proposal density and accept test reduce to the scalar ones."""
    target = IllConditionedGaussian()
    x0 = _spread_start(target, 6, target.dim)
    adapted = _adapted_chain(target.energy, n_steps=20, warmup=0)
    adapted.step_sizes_per_chain = torch.full((6,), 0.01, dtype=torch.float64)
    plain = lk.DataChain(target.energy, n_steps=20, step_size=0.01, noise_scale=math.sqrt(0.02), mala=True, seed=0)
    torch.testing.assert_close(adapted.run(x0), plain.run(x0), rtol=1e-12, atol=1e-12)
    assert torch.equal(adapted.stats.acceptance_per_chain, plain.stats.acceptance_per_chain)


@pytest.mark.parametrize("flag", ["capture_graph", "differentiable"])
def test_unsupported_paths_refuse(flag):
    with pytest.raises(NotImplementedError, match=f"adapt_step_size=True is not implemented with {flag}=True"):
        _adapted_chain(lambda x: x.pow(2).sum(1), **{flag: True})


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="needs mala=True"):
        _adapted_chain(lambda x: x.pow(2).sum(1), mala=False)
    with pytest.raises(ValueError, match="warmup=-1 must be an int >= 0"):
        _adapted_chain(lambda x: x.pow(2).sum(1), warmup=-1)
    with pytest.raises(ValueError, match="target_accept=1.5 must be a number in"):
        _adapted_chain(lambda x: x.pow(2).sum(1), target_accept=1.5)
    with pytest.raises(ValueError, match="constant step_size"):
        _adapted_chain(lambda x: x.pow(2).sum(1), n_steps=2, step_size=[0.1, 0.2])
    chain = _adapted_chain(lambda x: x.pow(2).sum(1), n_steps=2)
    chain.step_sizes_per_chain = torch.ones(3)
    with pytest.raises(ValueError, match="step_sizes_per_chain has 3 entries but the state has 4 chains"):
        chain.run(torch.zeros(4, 2))


def test_latent_chain_adapts_on_a_linear_gaussian_posterior():
    """x = W z + N(0, sigma^2 I), z ~ N(0, I): the posterior is N(S W^T x / sigma^2, S) with
    S = (I + W^T W / sigma^2)^-1, known exactly; chains start at scales 0.01 .. 10."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    sigma, n = 0.5, 32
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma ** 2)
    mean = x @ w @ cov / sigma ** 2                                  # [n, 2], cov is symmetric
    chain = lk.LatentChain(lambda z: z @ w.T, sigma=sigma, n_steps=1500, step_size=0.01,
                           noise_scale=math.sqrt(0.02), mala=True, adapt_step_size=True, warmup=500, seed=2)
    z0 = torch.logspace(-2, 1, n, dtype=torch.float64)[:, None] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    _, traj = chain.run(z0, x, return_trajectory=True)
    assert _fraction_in_band(chain) >= 0.95
    # Residuals in the posterior's whitened coordinates are N(0, I) for every chain.
    white = (traj[1:] - mean) @ torch.linalg.cholesky(torch.linalg.inv(cov))
    ess = effective_sample_size(white, method="mean")
    pooled = white.reshape(-1, 2)
    assert float((pooled.mean(0).abs() * ess.sqrt()).max()) < 5.0      # 5 ESS-based standard errors
    assert bool(((pooled.var(0) - 1).abs() < 5.0 * torch.sqrt(2.0 / ess)).all())


# ----------------------------------------------------------------------------- validation

@pytest.mark.slow
@pytest.mark.parametrize("make_target", [IllConditionedGaussian, GaussianMixture2D], ids=["gaussian", "mixture"])
def test_chains_started_at_different_scales_reach_the_band_and_the_moments(make_target):
    target = make_target()
    dim = target.mean.shape[0]
    chain = _adapted_chain(target.energy, seed=1)
    _, traj = chain.run(_spread_start(target, 64, dim), return_trajectory=True)
    # Dual averaging aims at 0.574; over 2000 kept steps a chain's acceptance has a standard
    # error of about 0.02-0.03 (autocorrelated decisions), so 0.50-0.65 is ~3 SE either side.
    assert _fraction_in_band(chain) >= 0.95
    _check_moments(traj, target)


def test_adapted_chain_reads_nothing_on_the_host_until_the_end():
    # The CPU twin of the CUDA test below: host reads are what make a GPU wait, and the dispatch
    # mode raises at each one (bool(t), t.item(), nonzero, ...). Its first version found the
    # adapter validating its chain-built initial steps with a device read.
    target = IllConditionedGaussian()
    x0 = _spread_start(target, 16, target.dim)
    _adapted_chain(target.energy, n_steps=20, warmup=30, on_nonfinite="ignore").run(x0)  # one-time setup
    chain = _adapted_chain(target.energy, n_steps=20, warmup=30, on_nonfinite="ignore")
    with forbid_host_reads():
        chain.run(x0)
    with pytest.raises(HostReadError), forbid_host_reads():   # the mode is live: a read is caught
        bool((x0 > 0).all())


@pytest.mark.gpu
def test_adapted_chain_on_cuda_never_syncs_until_the_end():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    target = IllConditionedGaussian()
    chain = _adapted_chain(target.energy, n_steps=200, warmup=300, on_nonfinite="ignore")
    x0 = _spread_start(target, 64, target.dim).cuda()
    chain.run(x0)   # first CUDA calls (allocator, kernels' one-time queries) may sync
    chain = _adapted_chain(target.energy, n_steps=200, warmup=300, on_nonfinite="ignore")
    torch.cuda.set_sync_debug_mode("error")
    try:
        chain.run(x0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert chain.step_sizes_per_chain.device.type == "cuda"
