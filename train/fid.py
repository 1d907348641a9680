"""FID with an Inception network the user supplies as a local file (``--fid-weights PATH``).

Nothing is downloaded: these machines cannot fetch the usual FID Inception weights, so without
``--fid-weights`` FID is skipped and metrics.json says why. PATH is a TorchScript module (made with
``torch.jit.script`` or ``torch.jit.trace`` and saved with ``torch.jit.save``) that maps a float
batch of images [N, 3, H, W] in [-1, 1], at the run's image size, to features [N, D] (for the
standard FID: Inception-v3's 2048 pool features, the module resizing to 299 x 299 itself). FID is
the Frechet distance between Gaussians fitted to the features of real and generated images.
"""
from __future__ import annotations

import torch

from .metrics import frechet_distance


class FIDWeightsError(ValueError):
    """--fid-weights names a file that is not a usable feature extractor (CLI exit status 2)."""


def _load_network(path: str, device: torch.device):
    """The exported program's module, else the TorchScript module, at ``path``; FIDWeightsError if neither."""
    import warnings

    errors = []
    try:
        return torch.export.load(path).module().to(device)
    except Exception as err:  # not an exported program: try TorchScript
        errors.append(err)
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated but still reads these files
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location=device).eval()
    except Exception as err:  # missing file, a torch.save pickle, garbage ...
        errors.append(err)
    reason = "; ".join(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:150] if str(e).strip() else ''}"
                       for e in errors)
    raise FIDWeightsError(f"--fid-weights={path!r} cannot be loaded as an exported program or a TorchScript "
                          f"module ({reason}); it must be a feature network saved with torch.export.save or "
                          "torch.jit.save (see train/fid.py)")


class FeatureExtractor:
    """The TorchScript network at ``path`` on ``device``, checked on a 2-image batch at load time."""

    def __init__(self, path: str, image_size: int, device="cpu", batch: int = 250):
        self.path, self.device, self.batch = path, torch.device(device), batch
        self.net = _load_network(path, self.device)
        probe = torch.zeros(2, 3, image_size, image_size, device=self.device)
        try:
            out = self.features(probe)
        except FIDWeightsError:
            raise
        except Exception as err:
            raise FIDWeightsError(f"--fid-weights={path!r} fails on a batch of shape {tuple(probe.shape)} "
                                  f"({type(err).__name__}: {str(err)[:200]})") from None
        self.dim = out.shape[1]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, D] float64 CPU features of images [N, 3, H, W] in [-1, 1], in batches."""
        out = []
        for i in range(0, len(images), self.batch):
            f = self.net(images[i:i + self.batch].to(self.device).float())
            if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != len(images[i:i + self.batch]):
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise FIDWeightsError(f"--fid-weights={self.path!r} returned {got} for "
                                      f"{len(images[i:i + self.batch])} images; expected features [N, D]")
            out.append(f.double().cpu())
        return torch.cat(out)

    def fid(self, real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
        """Frechet distance of two feature sets (each with at least 2 rows)."""
        return frechet_distance(real_features, fake_features)
