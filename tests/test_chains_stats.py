"""Statistical tests of the samplers against closed-form targets (fixed seeds).

Bounds: the final states of B independent chains are B independent draws of the chain's law
after K steps. For a sample covariance S of n draws from a law with covariance C, the standard
error of S_ij is sqrt((C_ii C_jj + C_ij^2) / n) (Gaussian fourth moments); of a sample mean,
sqrt(C_ii / n). Tests allow 5 standard errors (two-sided p ~ 6e-7 per entry), plus the known
discretisation bias where a law other than the one sampled is the reference.

ULA on a Gaussian target with precision P (drift a, noise s) is the linear recursion
x' = (I - aP) x + a h + s xi, whose stationary law is Gaussian with the exact mean P^-1 h and,
in P's eigenbasis (eigenvalue l), variance s^2 / (a l (2 - a l)): with s^2 = 2a that is
1 / (l (1 - a l / 2)), the truth 1/l inflated by O(a). These tests compare ULA to that exact
discretised law and MALA (which has no such bias) to the truth.
"""
import math

import pytest
import torch

from langevin_kernels.chains import DataChain, LatentChain

pytestmark = pytest.mark.slow

SIGMA = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)   # eigenvalues 1.8, 0.2
PRECISION = torch.linalg.inv(SIGMA)                                     # eigenvalues 0.556, 5


def gaussian_energy(precision):
    p = precision.float()
    return lambda x: 0.5 * ((x @ p) * x).sum(1)


def ula_stationary_cov(precision, a, s):
    lam, vecs = torch.linalg.eigh(precision)
    assert (a * lam < 2).all(), "ULA is unstable for a * eigenvalue >= 2"
    return vecs @ torch.diag(s * s / (a * lam * (2 - a * lam))) @ vecs.T


def cov_standard_error(cov, n):
    d = torch.diagonal(cov)
    return torch.sqrt((d[:, None] * d[None, :] + cov ** 2) / n)


def sample_moments(x):
    x = x.double()
    return x.mean(0), torch.cov(x.T)


def test_ula_small_step_matches_discretised_and_true_gaussian():
    a = 0.05
    s = math.sqrt(2 * a)
    n_chains = 16384
    # Slowest mode contracts by (1 - a * 0.556) per step: after 300 steps the start's trace in the
    # covariance is (0.972)^600 ~ 4e-8 of it.
    chain = DataChain(gaussian_energy(PRECISION), n_steps=300, step_size=a, noise_scale=s, seed=1)
    mean, cov = sample_moments(chain.run(torch.zeros(n_chains, 2)))
    exact = ula_stationary_cov(PRECISION, a, s)
    se = cov_standard_error(exact, n_chains)
    print(f"ULA a={a}: sample cov {cov.tolist()} | discretised {exact.tolist()} | truth {SIGMA.tolist()} | "
          f"mean {mean.tolist()}")
    assert (mean.abs() <= 5 * torch.sqrt(torch.diagonal(exact) / n_chains)).all()
    assert ((cov - exact).abs() <= 5 * se).all()
    # Against the truth: the discretisation bias (0.014 here) plus sampling error.
    assert ((cov - SIGMA).abs() <= (exact - SIGMA).abs() + 5 * se).all()


def test_mala_large_step_is_unbiased_where_ula_is_visibly_biased():
    a = 0.25                                  # a * 5 = 1.25: ULA's stiff-mode variance 0.533 vs true 0.2
    s = math.sqrt(2 * a)
    n_chains = 16384
    x0 = torch.zeros(n_chains, 2)
    # Slowest mode contracts by 1 - 0.139 per (accepted) step: 120 steps leave < 1e-5 of the start.
    ula = DataChain(gaussian_energy(PRECISION), n_steps=120, step_size=a, noise_scale=s, seed=2)
    _, ula_cov = sample_moments(ula.run(x0))
    exact = ula_stationary_cov(PRECISION, a, s)          # [[1.233, 0.700], [0.700, 1.233]]
    assert ((ula_cov - exact).abs() <= 5 * cov_standard_error(exact, n_chains)).all()
    assert (ula_cov.diagonal() - 1.0).min() > 0.15, "ULA should be visibly biased at this step"

    mala = DataChain(gaussian_energy(PRECISION), n_steps=120, step_size=a, noise_scale=s, mala=True, seed=2)
    mean, cov = sample_moments(mala.run(x0))
    rate = mala.stats.to_dict()["acceptance_rate"]
    print(f"a={a}: ULA cov {ula_cov.tolist()} (discretised {exact.tolist()}) | MALA cov {cov.tolist()} "
          f"mean {mean.tolist()} acceptance {rate:.3f} | truth {SIGMA.tolist()}")
    assert ((cov - SIGMA).abs() <= 5 * cov_standard_error(SIGMA, n_chains)).all()
    assert (mean.abs() <= 5 * torch.sqrt(torch.diagonal(SIGMA) / n_chains)).all()
    # Rejections happen (the step is large) and most proposals pass (the drift is right).
    assert 0.3 < rate < 0.95


def test_long_chains_visit_both_modes_of_a_mixture():
    # 1/2 N(-2, 1) + 1/2 N(2, 1): density at the saddle x = 0 is 0.27 of the modes', so a chain
    # crosses every ~200 steps at a = 0.1; 3000 steps give ~15 crossings per chain.
    def energy(x):
        return -torch.logsumexp(torch.stack([-(x[:, 0] - 2) ** 2, -(x[:, 0] + 2) ** 2]) / 2, dim=0)

    chain = DataChain(energy, n_steps=3000, step_size=0.1, noise_scale=math.sqrt(0.2), seed=3)
    _, traj = chain.run(torch.full((256, 1), -2.0), return_trajectory=True, thin=10)
    states = traj[:, :, 0]
    near_left = ((states + 2).abs() < 0.5).any(0)
    near_right = ((states - 2).abs() < 0.5).any(0)
    assert near_left.all() and near_right.all(), "every chain must visit both modes"
    # By symmetry the stationary mass right of 0 is 1/2 (ULA's bias is symmetric too); after
    # 500 steps burn-in, ~256 chains x ~12 crossings make the error of the pooled fraction ~0.01.
    right = (states[50:] > 0).double().mean().item()
    print(f"mixture: fraction right of the saddle {right:.3f} (truth 0.5)")
    assert abs(right - 0.5) < 0.05


def test_latent_chain_linear_generator_matches_gaussian_posterior():
    torch.manual_seed(0)
    latent, observed, sigma = 3, 6, 0.5
    weight = 0.3 * torch.randn(observed, latent, dtype=torch.float64)
    bias = torch.randn(observed, dtype=torch.float64)
    x_obs = torch.randn(observed, dtype=torch.float64)
    precision = torch.eye(latent, dtype=torch.float64) + weight.T @ weight / sigma ** 2
    post_cov = torch.linalg.inv(precision)
    post_mean = post_cov @ weight.T @ (x_obs - bias) / sigma ** 2

    w32, b32 = weight.float(), bias.float()
    a = 0.05
    s = math.sqrt(2 * a)
    n_chains = 8192
    # Precision eigenvalues lie in [1, ~4]: after 200 steps the start's trace is < (1 - 0.05)^400 ~ 1e-9.
    chain = LatentChain(lambda z: z @ w32.T + b32, sigma=sigma, n_steps=200, step_size=a, noise_scale=s, seed=4)
    z = chain.run(torch.zeros(n_chains, latent), x_obs.float().expand(n_chains, observed))
    mean, cov = sample_moments(z)
    exact = ula_stationary_cov(precision, a, s)
    se = cov_standard_error(exact, n_chains)
    print(f"latent: mean {mean.tolist()} vs {post_mean.tolist()} | cov {cov.tolist()} vs truth "
          f"{post_cov.tolist()} (discretised {exact.tolist()})")
    # ULA's stationary mean on a Gaussian is exact.
    assert ((mean - post_mean).abs() <= 5 * torch.sqrt(torch.diagonal(exact) / n_chains)).all()
    assert ((cov - exact).abs() <= 5 * se).all()
    assert ((cov - post_cov).abs() <= (exact - post_cov).abs() + 5 * se).all()


def test_step_compiles_with_inductor():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
    chain = DataChain(lambda x: net(x).squeeze(-1), n_steps=2, step_size=0.01, noise_scale=0.1, seed=5)
    x = torch.randn(64, 8)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(chain.step, fullgraph=True)
        torch.testing.assert_close(compiled(x, 1), chain.step(x, 1), rtol=1e-5, atol=1e-5)
