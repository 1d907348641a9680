"""MLPs for 2-D toy densities (docs/training.md, "Architectures").

Inputs are points in R^2 (the toys live roughly in [-4.5, 4.5]^2); latent codes are N(0, I) in R^d.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import GaussianEncoderHead, LOGVAR_RANGE


def _mlp(sizes: list[int], activation: type[nn.Module], **act_kwargs) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation(**act_kwargs))
    return nn.Sequential(*layers)


class EnergyMLP(nn.Module):
    """Energy E(x) of a 2-D point: MLP 2-128-128-128-1 with SiLU.

    Input: x of shape [B, dim] (any real values). Output: energies of shape [B]
    (E = -log density up to a constant).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.net = _mlp([dim] + [hidden] * depth + [1], nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class GeneratorMLP(nn.Module):
    """Generator g(z): MLP z(latent_dim)-128-128-dim with LeakyReLU(0.2), linear output.

    Input: z of shape [B, latent_dim] (N(0, I) codes). Output: points of shape [B, dim].
    """

    def __init__(self, latent_dim: int = 2, dim: int = 2, hidden: int = 128):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = _mlp([latent_dim, hidden, hidden, dim], nn.LeakyReLU, negative_slope=0.2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class EncoderMLP(nn.Module):
    """Inference model q(z | x) = N(mu(x), diag(exp(v(x)))): MLP dim-128-128-(2*latent_dim).

    Input: x of shape [B, dim]. Output: (mu, logvar), each [B, latent_dim]; logvar is clamped
    to LOGVAR_RANGE = [-8, 4] so exp(v) neither underflows nor explodes early in training.
    """

    def __init__(self, dim: int = 2, latent_dim: int = 2, hidden: int = 128):
        super().__init__()
        self.latent_dim = latent_dim
        self.trunk = _mlp([dim, hidden, hidden], nn.LeakyReLU, negative_slope=0.2)
        self.act = nn.LeakyReLU(0.2)
        self.head = GaussianEncoderHead(nn.Linear(hidden, 2 * latent_dim), latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.act(self.trunk(x)))


__all__ = ["EnergyMLP", "GeneratorMLP", "EncoderMLP", "LOGVAR_RANGE"]
