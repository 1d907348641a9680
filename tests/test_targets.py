"""The validation targets (langevin_kernels.targets): their exact samplers and energies agree
with the moments and densities they declare."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from langevin_kernels.targets import Banana, GaussianMixture2D, IllConditionedGaussian, NealsFunnel

TARGETS = [IllConditionedGaussian(), NealsFunnel(), Banana(), GaussianMixture2D()]
IDS = ["gaussian", "funnel", "banana", "mixture"]


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_exact_sampler_matches_declared_moments(target):
    n = 400_000
    x = target.sample(n, generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, target.dim)
    # Independent draws: the standard error of the sample mean is sd/sqrt(n), that of the sample
    # variance sqrt((mu4 - var^2)/n). 6 standard errors over <= 10 coordinates fails by chance with
    # probability < 1e-7; a wrong formula (e.g. var(x2) of the banana without the twist) is off by far more.
    centred = x - x.mean(0)
    var = centred.pow(2).mean(0)
    mean_se = (var / n).sqrt()
    var_se = ((centred.pow(4).mean(0) - var ** 2) / n).sqrt()
    assert ((x.mean(0) - target.mean).abs() <= 6 * mean_se).all()
    assert ((var - target.var).abs() <= 6 * var_se).all()


def _log_density(target, x):
    """log p(x) from torch.distributions, built independently of target.energy."""
    if isinstance(target, IllConditionedGaussian):
        return MultivariateNormal(target.loc, covariance_matrix=target.covariance).log_prob(x)
    if isinstance(target, NealsFunnel):
        v = x[:, 0]
        return Normal(0.0, target.scale).log_prob(v) + Normal(0.0, (v / 2).exp()[:, None]).log_prob(x[:, 1:]).sum(1)
    if isinstance(target, Banana):
        z2 = x[:, 1] - target.b * (x[:, 0] ** 2 - target.s ** 2)  # Jacobian 1
        return Normal(0.0, target.s).log_prob(x[:, 0]) + Normal(0.0, 1.0).log_prob(z2)
    comps = torch.stack([Normal(c, target.sigma).log_prob(x).sum(1) for c in target.centers], dim=1)
    return torch.logsumexp(comps, dim=1) - math.log(2)


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_energy_is_negative_log_density_up_to_a_constant(target):
    x = target.sample(64, generator=torch.Generator().manual_seed(2))
    e = target.energy(x)
    assert e.shape == (64,)
    shift = e + _log_density(target, x)  # the normalising constant: the same for every x
    torch.testing.assert_close(shift, shift[:1].expand(64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_energy_is_differentiable_in_float32(target):
    x = target.sample(8, generator=torch.Generator().manual_seed(3)).float().requires_grad_()
    (grad,) = torch.autograd.grad(target.energy(x).sum(), x)
    assert grad.shape == x.shape and grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_gaussian_condition_number_is_as_asked():
    target = IllConditionedGaussian(dim=10, condition=100.0)
    eig = torch.linalg.eigvalsh(target.covariance)
    assert eig.max() / eig.min() == pytest.approx(100.0, rel=1e-9)
    torch.testing.assert_close(target.covariance @ target.precision, torch.eye(10, dtype=torch.float64))
