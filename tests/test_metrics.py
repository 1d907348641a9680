"""Metrics against closed forms."""
import math

import numpy as np
import pytest
import torch

from langevin_kernels.train.data import toy_dataset
from langevin_kernels.train.metrics import (digits_frechet, frechet_distance, grid_kl_tv, mmd2_unbiased,
                                            mode_metrics, reconstruction_mse, toy_grid,
                                            true_log_density_on_grid, DigitsClassifier)


def _std_normal_logp(pts, shift=0.0):
    d = pts - np.array([shift, 0.0])
    return -0.5 * (d ** 2).sum(1) - math.log(2 * math.pi)


def test_grid_kl_tv_closed_form():
    # p = N(0, I), q = N((1, 0), I): KL = |shift|^2 / 2 = 0.5, TV = 2 Phi(1/2) - 1 = 0.3829.
    # On [-7, 7]^2 with 200 cells per side the truncation and midpoint errors are < 1e-3.
    pts, _ = toy_grid((-7.0, 7.0), 200)
    out = grid_kl_tv(-_std_normal_logp(pts, 1.0), _std_normal_logp(pts))
    assert out["grid_kl"] == pytest.approx(0.5, abs=2e-3)
    assert out["grid_tv"] == pytest.approx(math.erf(0.5 / math.sqrt(2)), abs=2e-3)


def test_grid_temperature_and_zero_support():
    pts, _ = toy_grid((-7.0, 7.0), 100)
    logp = _std_normal_logp(pts)
    # E = -logp / 2 at T = 0.5 is the same density: KL 0.
    assert grid_kl_tv(-logp / 2, logp, temperature=0.5)["grid_kl"] == pytest.approx(0.0, abs=1e-9)
    logp_cut = np.where(pts[:, 0] > 0, logp, -np.inf)  # half the support: zero-mass cells skipped
    out = grid_kl_tv(-logp, logp_cut)
    assert out["grid_kl"] == pytest.approx(math.log(2), abs=1e-2)


def test_mmd_unbiased_null_and_alternative():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 2, generator=gen), torch.randn(1000, 2, generator=gen)
    null = mmd2_unbiased(x, y)
    # Under equal laws the unbiased estimate has mean 0 and std O(1/n) (~1e-3 here).
    assert abs(null) < 5e-3
    shifted = mmd2_unbiased(x, y + torch.tensor([1.0, 0.0]))
    assert shifted > 20 * abs(null) and shifted > 0.05


def test_mode_metrics_on_exact_samples():
    toy = toy_dataset("8gaussians")
    x = toy.sample(20000, np.random.default_rng(0))
    out = mode_metrics(x, toy)
    # |N(0, s^2 I_2)| <= 3s with probability 1 - exp(-9/2) = 0.98889; binomial std 7e-4 at n=20000.
    assert out["realistic_ratio"] == pytest.approx(1 - math.exp(-4.5), abs=4e-3)
    assert out["modes_covered"] == 8
    collapsed = torch.tensor(toy.modes[:1], dtype=torch.float32).repeat(100, 1)
    assert mode_metrics(collapsed, toy)["modes_covered"] == 1


def test_mode_metrics_rings_and_non_mode_toys():
    toy = toy_dataset("rings")
    out = mode_metrics(toy.sample(20000, np.random.default_rng(0)), toy)
    assert out["realistic_ratio"] == pytest.approx(0.9973, abs=3e-3)  # |N(0,1)| <= 3
    assert out["modes_covered"] == 3
    assert mode_metrics(torch.zeros(5, 2), toy_dataset("swissroll")) == {}


def test_histogram_density_for_toys_without_one():
    toy = toy_dataset("swissroll")
    pts, area = toy_grid(toy.bounds, 50)
    logp, source = true_log_density_on_grid(toy, pts, area, n_samples=50_000)
    assert source == "histogram"
    assert np.exp(logp).sum() * area == pytest.approx(1.0, abs=1e-6)


def test_frechet_closed_forms():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    # Equal laws: 0 up to sampling error (~d^2/n); mean shift m: |m|^2 = 4;
    # N(0, I) vs N(0, 4I): d (1 + 4 - 2*2) = 4.
    assert frechet_distance(a, b) < 0.01
    assert frechet_distance(a, b + 1.0) == pytest.approx(4.0, abs=0.1)
    assert frechet_distance(a, 2 * b) == pytest.approx(4.0, abs=0.15)


def test_digits_frechet_runs_on_classifier_features():
    clf = DigitsClassifier()
    x = torch.rand(100, 1, 8, 8) * 2 - 1
    assert digits_frechet(clf, x, x) == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_mse():
    assert reconstruction_mse(torch.zeros(2, 3), torch.ones(2, 3)) == 1.0
