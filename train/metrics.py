"""What "it learned" means (docs/metrics.md).

2-D: grid KL / TV of the normalised model density vs the true density, unbiased MMD^2 (RBF,
median heuristic), modes covered and realistic ratio. Digits: Frechet distance in the
penultimate features of a small fixed-seed classifier, reconstruction MSE.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import ToyDataset


# ----------------------------------------------------------------------------- grid densities

def toy_grid(bounds: tuple[float, float], n: int = 200) -> tuple[np.ndarray, float]:
    """Cell centres [n*n, 2] (row-major: x-index slow) of an n x n grid on bounds^2, and cell area."""
    lo, hi = bounds
    width = (hi - lo) / n
    ticks = lo + width * (np.arange(n) + 0.5)
    pts = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    return pts, width * width


@torch.no_grad()
def energy_on_grid(energy: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray,
                   device="cpu", chunk: int = 8192) -> np.ndarray:
    """E at each grid point, as float64 numpy [N]."""
    out = []
    pts = torch.from_numpy(points.astype(np.float32))
    for i in range(0, len(pts), chunk):
        out.append(energy(pts[i:i + chunk].to(device)).double().cpu())
    return torch.cat(out).numpy()


def _log_normalise(log_w: np.ndarray) -> np.ndarray:
    finite = np.isfinite(log_w)
    m = log_w[finite].max()
    return log_w - (m + np.log(np.exp(log_w[finite] - m).sum()))


def grid_kl_tv(model_energy: np.ndarray, true_log_density: np.ndarray,
               temperature: float = 1.0) -> dict[str, float]:
    """KL(p_true || p_model) and TV between the two densities normalised over the same grid.

    p_model is proportional to exp(-E / T); both are normalised over the grid cells, so the
    numbers compare shapes on the plotted square. KL is the forward direction (it punishes a
    model that misses true mass); cells where p_true is 0 contribute 0 to it.
    """
    log_q = _log_normalise(-model_energy / temperature)
    log_p = _log_normalise(true_log_density)
    p, q = np.exp(log_p), np.exp(log_q)
    support = p > 0
    kl = float(np.sum(p[support] * (log_p[support] - log_q[support])))
    tv = float(0.5 * np.abs(p - q).sum())
    return {"grid_kl": kl, "grid_tv": tv}


def true_log_density_on_grid(toy: ToyDataset, points: np.ndarray, area: float,
                             n_samples: int = 200_000, seed: int = 0) -> tuple[np.ndarray, str]:
    """The true log-density on the grid: exact where the toy has one, else a histogram estimate.

    The histogram (n_samples exact samples, one bin per cell, +0.5 pseudo-count so log is
    finite) is what the 2spirals / pinwheel / swissroll numbers compare against; the second
    return value says which was used ("exact" or "histogram").
    """
    if toy.log_density is not None:
        return toy.log_density(points), "exact"
    n = int(round(math.sqrt(len(points))))
    lo, hi = toy.bounds
    x = toy.sample(n_samples, np.random.default_rng(seed)).numpy()
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=n, range=[[lo, hi], [lo, hi]])
    return np.log((counts.reshape(-1) + 0.5) / ((n_samples + 0.5 * n * n) * area)), "histogram"


# ----------------------------------------------------------------------------- MMD

def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None] - 2 * a @ b.T).clamp_min(0)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance of the pooled samples (first max_points of each, for cost)."""
    pooled = torch.cat([x[:max_points], y[:max_points]]).double()
    d = _sq_dists(pooled, pooled)
    off_diag = d[~torch.eye(len(pooled), dtype=torch.bool)]
    return float(off_diag.median().sqrt())


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None,
                  chunk: int = 512) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 h^2)), h = median heuristic by default.

    Diagonal terms are excluded from the within-sample means (that is what makes it unbiased;
    the value can be slightly negative when the two laws are equal).
    """
    x, y = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
    h = bandwidth or median_bandwidth(x, y)

    def kernel_sum(a, b):
        total = 0.0
        for i in range(0, len(a), chunk):
            total += torch.exp(-_sq_dists(a[i:i + chunk], b) / (2 * h * h)).sum().item()
        return total

    n, m = len(x), len(y)
    kxx = (kernel_sum(x, x) - n) / (n * (n - 1))
    kyy = (kernel_sum(y, y) - m) / (m * (m - 1))
    kxy = kernel_sum(x, y) / (n * m)
    return float(kxx + kyy - 2 * kxy)


# ----------------------------------------------------------------------------- modes

def mode_metrics(samples: torch.Tensor, toy: ToyDataset, n_std: float = 3.0,
                 min_share: float = 0.1) -> dict[str, float]:
    """Modes covered and realistic ratio for mode-based toys (empty dict for the others).

    A sample is realistic when it lies within n_std std of its nearest mode (per coordinate
    distance for Gaussian modes: |x - c| <= n_std * std; radial for rings). A mode is covered
    when it receives at least min_share of the samples a uniform split over modes would give.
    """
    if toy.modes is None:
        return {}
    x = samples.detach().double().cpu().numpy()
    x = x[np.isfinite(x).all(1)]
    modes = toy.modes
    if toy.mode_kind == "ring":
        dist = np.abs(np.linalg.norm(x, axis=1)[:, None] - modes[None])
    else:
        dist = np.linalg.norm(x[:, None, :] - modes[None], axis=-1)
    nearest, d_min = dist.argmin(1), dist.min(1)
    realistic = d_min <= n_std * toy.mode_std
    counts = np.bincount(nearest[realistic], minlength=len(modes))
    threshold = max(1.0, min_share * len(samples) / len(modes))
    return {"modes_covered": int((counts >= threshold).sum()), "modes_total": int(len(modes)),
            "realistic_ratio": float(realistic.sum() / max(len(samples), 1))}


# ----------------------------------------------------------------------------- digits

class DigitsClassifier(nn.Module):
    """Small MLP classifier on 8x8 digits; ``features`` gives its 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64),
                                  nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_digits_classifier(train_x: torch.Tensor, train_y: torch.Tensor, seed: int = 0,
                            epochs: int = 30) -> DigitsClassifier:
    """Train the feature classifier deterministically (fixed seed, full-batch-order shuffles)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def digits_classifier(train_x, train_y, cache_dir: str | None, seed: int = 0) -> DigitsClassifier:
    """The cached feature classifier (trained once per seed and stored under cache_dir)."""
    path = os.path.join(cache_dir, f"digits_classifier_seed{seed}.pt") if cache_dir else None
    if path and os.path.exists(path):
        model = DigitsClassifier()
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model.eval()
    model = train_digits_classifier(train_x, train_y, seed=seed)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) of Gaussians fitted to two feature sets.

    Tr((S_a S_b)^{1/2}) = sum of sqrt of the eigenvalues of S_a^{1/2} S_b S_a^{1/2} (symmetric
    PSD), which avoids a non-symmetric matrix square root.
    """
    a, b = feat_a.double().cpu().numpy(), feat_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


@torch.no_grad()
def digits_frechet(classifier: DigitsClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between real and generated digits in the classifier's features."""
    fake = fake.detach().cpu().clamp(-1, 1)
    return frechet_distance(classifier.features(real.cpu()), classifier.features(fake))


def reconstruction_mse(x: torch.Tensor, recon: torch.Tensor) -> float:
    """Mean squared error per pixel between data and reconstructions."""
    return float(((x - recon) ** 2).mean())
