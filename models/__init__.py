"""Energy nets, generators and inference models (installed as ``langevin_kernels.models``).

Every energy maps a batch to energies of shape [B]; every generator maps z [B, d] to a batch of
data; every encoder maps a batch of data to (mu, logvar), each [B, d].

- 2-D toys: :class:`EnergyMLP`, :class:`GeneratorMLP`, :class:`EncoderMLP`
- 8x8 digits: :class:`DigitsEnergy`, :class:`DigitsGenerator`, :class:`DigitsEncoder`
- 32x32 / 64x64 images: :class:`ResNetEnergy`, :class:`SNGANGenerator`, :class:`ConvEncoder`
"""
from .common import LOGVAR_RANGE, gaussian_nll, reparameterize
from .digits import DigitsEncoder, DigitsEnergy, DigitsGenerator
from .images import ConvEncoder, ResNetEnergy, SNGANGenerator
from .toy2d import EncoderMLP, EnergyMLP, GeneratorMLP

__all__ = [
    "LOGVAR_RANGE", "gaussian_nll", "reparameterize",
    "EnergyMLP", "GeneratorMLP", "EncoderMLP",
    "DigitsEnergy", "DigitsGenerator", "DigitsEncoder",
    "ResNetEnergy", "SNGANGenerator", "ConvEncoder",
]
