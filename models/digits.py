"""Small conv nets for scikit-learn's 8x8 digits.

Images are [B, 1, 8, 8] scaled to [-1, 1]; latent codes are N(0, I) in R^latent_dim.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import GaussianEncoderHead


def _conv_trunk(act: type[nn.Module], **act_kwargs) -> nn.Sequential:
    """[B, 1, 8, 8] -> [B, 512]: 8x8 -> 4x4 -> 2x2 feature maps."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), act(**act_kwargs),
        nn.Conv2d(32, 64, 4, stride=2, padding=1), act(**act_kwargs),
        nn.Conv2d(64, 128, 4, stride=2, padding=1), act(**act_kwargs),
        nn.Flatten(),
    )


class DigitsEnergy(nn.Module):
    """Energy of an 8x8 digit. Input [B, 1, 8, 8] in [-1, 1]; output energies [B]."""

    def __init__(self):
        super().__init__()
        self.trunk = _conv_trunk(nn.SiLU)
        self.out = nn.Linear(128 * 2 * 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x)).squeeze(-1)


class DigitsGenerator(nn.Module):
    """Generator of 8x8 digits. Input z [B, latent_dim]; output [B, 1, 8, 8] in [-1, 1] (tanh)."""

    def __init__(self, latent_dim: int = 16):
        super().__init__()
        self.latent_dim = latent_dim
        self.fc = nn.Sequential(nn.Linear(latent_dim, 128 * 2 * 2), nn.LeakyReLU(0.2))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 4x4
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),   # 8x8
            nn.Conv2d(32, 1, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, 128, 2, 2))


class DigitsEncoder(nn.Module):
    """q(z | x) for 8x8 digits. Input [B, 1, 8, 8]; output (mu, logvar), each [B, latent_dim]."""

    def __init__(self, latent_dim: int = 16):
        super().__init__()
        self.latent_dim = latent_dim
        self.trunk = _conv_trunk(nn.LeakyReLU, negative_slope=0.2)
        self.head = GaussianEncoderHead(nn.Linear(128 * 2 * 2, 2 * latent_dim), latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x))
