"""Per-chain dual averaging (langevin_kernels.adaptation.DualAveraging)."""
import math

import pytest
import torch

from langevin_kernels.adaptation import DualAveraging


def test_reaches_target_on_a_known_acceptance_curve_per_chain():
    # accept(eps) = exp(-(eps / s_i)^2): the step that gives 0.574 is s_i sqrt(-log 0.574), and
    # the chains' answers span four orders of magnitude, so one shared step could suit only a few.
    scales = torch.logspace(-3, 1, 16, dtype=torch.float64)
    adapt = DualAveraging(torch.full((16,), 0.1, dtype=torch.float64))
    for _ in range(2000):
        adapt.update(torch.exp(-(adapt.step_size / scales) ** 2))
    want = scales * math.sqrt(-math.log(0.574))
    torch.testing.assert_close(adapt.final_step_size, want, rtol=0.02, atol=0)


def test_nan_acceptance_counts_as_rejection_and_shrinks_the_step():
    adapt = DualAveraging(torch.ones(2))
    for _ in range(50):
        adapt.update(torch.tensor([float("nan"), 1.0]))
    small, large = adapt.step_size.tolist()
    assert math.isfinite(small) and small < 1.0 < large


@pytest.mark.parametrize("kwargs,match", [
    (dict(initial_step_size=0.1), "needs n_chains"),
    (dict(initial_step_size=0.0, n_chains=4), "positive and finite"),
    (dict(initial_step_size=float("nan"), n_chains=4), "positive and finite"),
    (dict(initial_step_size=torch.tensor([0.1, float("inf")])), "positive and finite"),
    (dict(initial_step_size=torch.ones(2, 2)), "initial_step_size must be a floating \\[B\\] tensor"),
    (dict(initial_step_size=torch.tensor([0.1, -1.0])), "positive"),
    (dict(initial_step_size=torch.ones(2), target_accept=1.0), "target_accept"),
    (dict(initial_step_size=torch.ones(2), kappa=0.3), "kappa"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualAveraging(**kwargs)


def test_a_number_for_n_chains_is_the_same_adapter_as_its_tensor():
    from_number = DualAveraging(0.05, n_chains=3)
    from_tensor = DualAveraging(torch.full((3,), 0.05, dtype=torch.float64))
    for accept in ([0.9, 0.2, 0.5], [0.1, 0.8, 0.6]):
        from_number.update(torch.tensor(accept))
        from_tensor.update(torch.tensor(accept))
    assert from_number.final_step_size.dtype == torch.float64
    torch.testing.assert_close(from_number.final_step_size, from_tensor.final_step_size, rtol=0, atol=0)


def _eager_mala(energy, x, step, n_steps, generator, adapt=None):
    """Test-only MALA with a step size per chain ([B]); returns acceptance probabilities [n_steps, B].

    Proposal y = x - eps grad E(x) + sqrt(2 eps) xi; accept with min(1, p(y) q(x|y) / (p(x) q(y|x))).
    """
    def energy_and_grad(z):
        z = z.detach().requires_grad_()
        e = energy(z)
        return e.detach(), torch.autograd.grad(e.sum(), z)[0]

    record = []
    e_x, g_x = energy_and_grad(x)
    for _ in range(n_steps):
        eps = (adapt.step_size if adapt is not None else step)[:, None]
        y = x - eps * g_x + (2 * eps).sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        e_y, g_y = energy_and_grad(y)
        log_q_xy = -((x - y + eps * g_y) ** 2).sum(1) / (4 * eps[:, 0])
        log_q_yx = -((y - x + eps * g_x) ** 2).sum(1) / (4 * eps[:, 0])
        accept_prob = torch.exp(torch.clamp(e_x - e_y + log_q_xy - log_q_yx, max=0.0))
        take = torch.rand(x.shape[0], generator=generator, dtype=x.dtype) < accept_prob
        x = torch.where(take[:, None], y, x)
        e_x, g_x = torch.where(take, e_y, e_x), torch.where(take[:, None], g_y, g_x)
        if adapt is not None:
            adapt.update(accept_prob)
        record.append(accept_prob)
    return x, torch.stack(record)


def _fraction_in_band(accept):
    rate = accept.mean(0)
    return ((rate >= 0.50) & (rate <= 0.65)).double().mean().item()


def test_per_chain_steps_put_chains_of_different_scales_in_the_acceptance_band():
    # Chain i samples N(0, s_i^2 I_10) with s_i from 0.01 to 10: MALA's acceptance depends on
    # eps / s_i^2, so the right step differs by 10^6 across chains.
    gen = torch.Generator().manual_seed(0)
    n_chains, dim = 64, 10
    scales = torch.logspace(-2, 1, n_chains, dtype=torch.float64)[:, None]
    energy = lambda z: 0.5 * (z / scales).pow(2).sum(1)  # noqa: E731
    x0 = scales * torch.randn(n_chains, dim, generator=gen, dtype=torch.float64)

    adapt = DualAveraging(torch.full((n_chains,), 0.01, dtype=torch.float64))
    x, _ = _eager_mala(energy, x0, None, 1500, gen, adapt=adapt)
    tuned = adapt.final_step_size
    _, kept = _eager_mala(energy, x, tuned, 1000, gen)  # frozen kernel
    # Dual averaging aims at 0.574; 1000 kept steps give each chain's rate a standard error of
    # about 0.02, so the band 0.50-0.65 (about 3.5 standard errors) holds for >= 95% of chains.
    assert _fraction_in_band(kept) >= 0.95

    # Control: the best single step (the median of the tuned ones) leaves most chains outside.
    _, shared = _eager_mala(energy, x, tuned.median().expand(n_chains), 300, gen)
    assert _fraction_in_band(shared) < 0.2
