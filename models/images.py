"""Reference architectures for 32x32 and 64x64 RGB images (docs/training.md, "Architectures").

Images are [B, 3, S, S] with S in {32, 64}, scaled to [-1, 1]; latent codes z ~ N(0, I_d), d = 128.
- ResNetEnergy: residual down-blocks, no BatchNorm, spectral norm on every layer, global average
  pool, Linear to 1.
- SNGANGenerator: Linear to 4x4, residual up-blocks (BN-ReLU-upsample-conv), BN-ReLU-conv-tanh.
- ConvEncoder: 4 stride-2 convs with LeakyReLU(0.2), two conv heads (mu, log-variance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .common import GaussianEncoderHead

_SUPPORTED_SIZES = (32, 64)


def _check_size(image_size: int) -> int:
    if image_size not in _SUPPORTED_SIZES:
        raise ValueError(f"image_size={image_size!r} is not supported; allowed: {_SUPPORTED_SIZES}")
    return image_size


class _DownBlock(nn.Module):
    """Residual block: (act-conv-act-conv) + shortcut 1x1 conv, then 2x average pool if down."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.shortcut = spectral_norm(nn.Conv2d(c_in, c_out, 1))
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))
        out = h + self.shortcut(x)
        return F.avg_pool2d(out, 2) if self.down else out


class ResNetEnergy(nn.Module):
    """Spectral-normalised ResNet energy. Input [B, 3, S, S] in [-1, 1]; output energies [B]."""

    def __init__(self, image_size: int = 32, channels: int = 128):
        super().__init__()
        n_down = {32: 3, 64: 4}[_check_size(image_size)]  # down to 4x4 either way
        blocks = [_DownBlock(3, channels, down=True)]
        blocks += [_DownBlock(channels, channels, down=True) for _ in range(n_down - 1)]
        blocks += [_DownBlock(channels, channels, down=False)]
        self.blocks = nn.Sequential(*blocks)
        self.out = spectral_norm(nn.Linear(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.blocks(x), 0.2).mean(dim=(2, 3))
        return self.out(h).squeeze(-1)


class _UpBlock(nn.Module):
    """SNGAN generator block: BN-ReLU-upsample-conv-BN-ReLU-conv + upsampled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class SNGANGenerator(nn.Module):
    """SNGAN-style generator. Input z [B, latent_dim]; output [B, 3, S, S] in [-1, 1] (tanh)."""

    def __init__(self, latent_dim: int = 128, image_size: int = 32, channels: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        n_up = {32: 3, 64: 4}[_check_size(image_size)]  # 4x4 -> S x S
        widths = [channels] * (n_up + 1) if image_size == 32 else \
            [channels * 2, channels * 2, channels, channels // 2, channels // 4]
        self.widths = widths
        self.fc = nn.Linear(latent_dim, 4 * 4 * widths[0])
        self.blocks = nn.Sequential(*[_UpBlock(widths[i], widths[i + 1]) for i in range(n_up)])
        self.out = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(),
                                 nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.widths[0], 4, 4)
        return self.out(self.blocks(h))


class ConvEncoder(nn.Module):
    """q(z | x): input [B, 3, S, S] in [-1, 1]; output (mu, logvar), each [B, latent_dim]."""

    def __init__(self, latent_dim: int = 128, image_size: int = 32, channels: int = 64):
        super().__init__()
        self.latent_dim = latent_dim
        final = _check_size(image_size) // 16  # four stride-2 convs
        widths = [3, channels, channels * 2, channels * 4, channels * 8]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.trunk = nn.Sequential(*layers)
        self.head = GaussianEncoderHead(_TwoConvHeads(widths[-1], latent_dim, final), latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x))


class _TwoConvHeads(nn.Module):
    """Separate conv heads for mu and log-variance, concatenated along channels."""

    def __init__(self, c_in: int, latent_dim: int, kernel: int):
        super().__init__()
        self.mu = nn.Conv2d(c_in, latent_dim, kernel)
        self.logvar = nn.Conv2d(c_in, latent_dim, kernel)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mu(h), self.logvar(h)], dim=1)
