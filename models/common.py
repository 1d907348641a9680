"""Pieces shared by every inference model."""
from __future__ import annotations

import torch
from torch import nn

#: Bounds of the encoders' log-variance head (docs/training.md, "Notation").
LOGVAR_RANGE = (-8.0, 4.0)


class GaussianEncoderHead(nn.Module):
    """Wraps a layer whose output has 2*latent_dim channels into (mu, clamped logvar).

    The wrapped layer's output is split along dim 1; trailing spatial dims (a conv head on a
    1x1 map) are flattened away, so both outputs are [B, latent_dim].
    """

    def __init__(self, layer: nn.Module, latent_dim: int):
        super().__init__()
        self.layer = layer
        self.latent_dim = latent_dim

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.layer(h).flatten(1)
        mu, logvar = out[:, : self.latent_dim], out[:, self.latent_dim:]
        return mu, logvar.clamp(*LOGVAR_RANGE)


def gaussian_nll(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-example NLL of z under N(mu, diag(exp(logvar))), constant dropped: shape [B]."""
    return 0.5 * (logvar + (z - mu) ** 2 * torch.exp(-logvar)).flatten(1).sum(1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * noise (noise ~ N(0, I) supplied by the caller's generator)."""
    return mu + torch.exp(0.5 * logvar) * noise
