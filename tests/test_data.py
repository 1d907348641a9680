"""Embedded data: toy samplers agree with their densities; digits scaling; data-root errors."""
import numpy as np
import pytest
import torch

from langevin_kernels.train.data import (TOY_DATASETS, DataRootError, check_image_root, load_digits_split,
                                         toy_dataset)
from langevin_kernels.train.metrics import toy_grid


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_samples_shape_and_bounds(name):
    toy = toy_dataset(name)
    x = toy.sample(4000, np.random.default_rng(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    lo, hi = toy.bounds
    # The plotting/metric square must hold essentially all the mass (tails of Gaussians aside).
    inside = ((x >= lo) & (x <= hi)).all(1).float().mean()
    assert inside > 0.995


def test_toy_sampling_is_seeded():
    toy = toy_dataset("pinwheel")
    a, b = toy.sample(10, np.random.default_rng(3)), toy.sample(10, np.random.default_rng(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians", "rings", "checkerboard"])
def test_exact_density_integrates_to_one(name):
    toy = toy_dataset(name)
    pts, area = toy_grid(toy.bounds, 400)
    mass = np.exp(toy.log_density(pts)).sum() * area
    # Midpoint rule on a 400x400 grid; checkerboard's square edges cost O(cell width) = 0.6%.
    assert mass == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians", "rings", "checkerboard"])
def test_density_matches_sampler(name):
    # Histogram of 200k exact samples vs the density integrated per cell on a 20x20 grid:
    # TV between them is small (sampling noise ~ sqrt(cells / n) ~ 0.05 at most, discretisation
    # of the density inside a cell a few percent).
    toy = toy_dataset(name)
    lo, hi = toy.bounds
    x = toy.sample(200_000, np.random.default_rng(1)).numpy()
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=20, range=[[lo, hi], [lo, hi]])
    fine, area = toy_grid(toy.bounds, 200)
    dens = np.exp(toy.log_density(fine)).reshape(20, 10, 20, 10).sum((1, 3)) * area
    tv = 0.5 * np.abs(counts / counts.sum() - dens / dens.sum()).sum()
    assert tv < 0.05


def test_unknown_toy_rejected():
    with pytest.raises(ValueError, match="dataset='moons'.*8gaussians"):
        toy_dataset("moons")


def test_digits_scaled_and_split():
    d = load_digits_split()
    assert d.train_x.shape == (1438, 1, 8, 8) and d.test_x.shape == (359, 1, 8, 8)
    assert d.train_x.min() == -1 and d.train_x.max() == 1
    again = load_digits_split()
    assert torch.equal(d.test_y, again.test_y)  # fixed split


def test_data_root_missing(tmp_path):
    with pytest.raises(DataRootError, match="cifar-10-batches-py"):
        check_image_root("cifar10", str(tmp_path))
    with pytest.raises(DataRootError, match="--data-root=None"):
        check_image_root("celeba64", None)
    with pytest.raises(DataRootError, match="<class>"):
        check_image_root("imagefolder", str(tmp_path / "nothing"))


def test_data_root_present(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    check_image_root("cifar10", str(tmp_path))
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.png").write_bytes(b"")
    check_image_root("imagefolder", str(tmp_path))
