"""Model shapes, output ranges and the constraints each model documents."""
import pytest
import torch

from langevin_kernels.models import (LOGVAR_RANGE, ConvEncoder, DigitsEncoder, DigitsEnergy, DigitsGenerator,
                                     EncoderMLP, EnergyMLP, GeneratorMLP, ResNetEnergy, SNGANGenerator,
                                     gaussian_nll, reparameterize)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (conftest's one_thread restores the previous count)."""


def test_toy_mlps_shapes():
    z = torch.randn(5, 2)
    x = GeneratorMLP(2)(z)
    assert x.shape == (5, 2)
    assert EnergyMLP()(x).shape == (5,)
    mu, logvar = EncoderMLP(latent_dim=2)(x)
    assert mu.shape == logvar.shape == (5, 2)


def test_digits_nets_shapes_and_range():
    x = DigitsGenerator(16)(torch.randn(4, 16) * 10)  # large z: tanh must still bound the output
    assert x.shape == (4, 1, 8, 8) and x.abs().max() <= 1
    assert DigitsEnergy()(x).shape == (4,)
    mu, logvar = DigitsEncoder(16)(x)
    assert mu.shape == logvar.shape == (4, 16)


@pytest.mark.parametrize("size", [32, 64])
def test_image_nets_shapes(size):
    g, e, q = SNGANGenerator(128, size, channels=32), ResNetEnergy(size, channels=16), ConvEncoder(128, size, 8)
    x = g(torch.randn(2, 128))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert e(x).shape == (2,)
    mu, logvar = q(x)
    assert mu.shape == logvar.shape == (2, 128)


def test_image_size_rejected():
    with pytest.raises(ValueError, match="image_size=48"):
        ResNetEnergy(48)


def test_logvar_clamped():
    enc = EncoderMLP()
    with torch.no_grad():
        enc.head.layer.bias.fill_(1e3)  # pushes the raw log-variance far above the bound
    _, logvar = enc(torch.zeros(3, 2))
    assert logvar.max() <= LOGVAR_RANGE[1]
    with torch.no_grad():
        enc.head.layer.bias.fill_(-1e3)
    _, logvar = enc(torch.zeros(3, 2))
    assert logvar.min() >= LOGVAR_RANGE[0]


def test_spectral_norm_bounds_energy_layers():
    # After enough power iterations in train mode, every normalised weight (conv kernels
    # reshaped to [out, in*k*k], as spectral_norm does) has top singular value ~1.
    e = ResNetEnergy(32, channels=8)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(30):
        e(x)
    for name, module in e.named_modules():
        if hasattr(module, "parametrizations"):
            w = module.weight.detach().flatten(1)
            assert torch.linalg.matrix_norm(w, ord=2) == pytest.approx(1.0, abs=0.05), name


def test_gaussian_nll_matches_torch_distribution():
    mu, logvar, z = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3)
    ref = -torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    const = 0.5 * 3 * torch.log(torch.tensor(2 * torch.pi))
    torch.testing.assert_close(gaussian_nll(z, mu, logvar), ref - const)


def test_reparameterize():
    mu, logvar, noise = torch.ones(2, 2), torch.full((2, 2), 2 * torch.log(torch.tensor(3.0))), torch.ones(2, 2)
    torch.testing.assert_close(reparameterize(mu, logvar, noise), torch.full((2, 2), 4.0))
