"""The evaluator: the metrics of each config at every evaluation, and the plots that show them.

toy2d: grid KL/TV of exp(-E/T), MMD^2, modes and realistic ratio per kind of sample, density.png;
digits: classifier Frechet distances (and reconstruction MSE), samples.png; images: sample grids,
FID when a feature network is given. Metric definitions: docs/metrics.md.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from langevin_kernels._optional import pyplot

from .config import TrainConfig
from .data import load_digits_split, toy_dataset
from .methods import Method
from . import metrics as M

EVAL_SEED = 12345  # evaluation chains and noise use fixed seeds: metrics do not disturb training

#: Panel titles of the sample plots: what each kind of sample is.
SAMPLE_TITLES = {"generator": "generator g(z), z ~ N(0, I)", "ebm": "EBM: Langevin chain samples",
                 "reconstruction": "reconstruction (top: test digits, bottom: g(z~))"}
GRID_IMAGES = 64       # images per panel of a sample grid (8 x 8)
FID_CHUNK = 500        # evaluation samples drawn (and featurised) per chain run


class Evaluator:
    """Computes the config's metrics and writes plots for one method.

    Image configs: a sample grid (generator and EBM chain) at every evaluation; FID when a feature
    network is given (``fid_weights``, see train/fid.py), otherwise FID is skipped with the reason.
    """

    def __init__(self, cfg: TrainConfig, out_dir: str, device, source=None, fid_weights: str | None = None):
        self.cfg, self.out_dir, self.device, self.source = cfg, out_dir, device, source
        self.fid = None
        self._real_features = None
        if fid_weights is not None and cfg.config in ("toy2d", "digits"):
            raise ValueError(f"--fid-weights is for image configs; config={cfg.config!r} reports "
                             f"{'grid KL, MMD and modes' if cfg.config == 'toy2d' else 'a digits-classifier Frechet distance'}"
                             " instead")
        if fid_weights is not None:
            from .fid import FeatureExtractor
            self.fid = FeatureExtractor(fid_weights, cfg.image_size, device)
        if cfg.config == "toy2d":
            self.toy = toy_dataset(cfg.dataset)
            self.grid, self.area = M.toy_grid(self.toy.bounds, cfg.grid_n)
            self.true_logp, self.density_source = M.true_log_density_on_grid(self.toy, self.grid, self.area)
            self.true_samples = self.toy.sample(cfg.n_eval, np.random.default_rng(EVAL_SEED))
        elif cfg.config == "digits":
            self.digits = load_digits_split()
            cache = os.environ.get("LANGEVIN_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                                  "langevin_kernels"))
            self.classifier = M.digits_classifier(self.digits.train_x, self.digits.train_y, cache, seed=0)

    def evaluate(self, method: Method, iteration: int) -> dict:
        """The metrics of this evaluation (and its plots). The models' buffers (BatchNorm running
        statistics, spectral-norm power-iteration vectors), which evaluation chains in train mode
        update, are restored afterwards: evaluating never changes the training run."""
        kept = {name: {k: b.clone() for k, b in model.named_buffers()} for name, model in method.models.items()}
        try:
            return self._evaluate(method, iteration)
        finally:
            with torch.no_grad():
                for name, model in method.models.items():
                    for k, b in model.named_buffers():
                        b.copy_(kept[name][k])

    def _evaluate(self, method: Method, iteration: int) -> dict:
        if self.cfg.config == "toy2d":
            return self._toy(method, iteration)
        if self.cfg.config == "digits":
            return self._digits(method, iteration)
        return self._images(method, iteration)

    def _images(self, method: Method, iteration: int) -> dict:
        """Sample grid of every kind; FID of cfg.n_eval samples per kind against as many data images."""
        n = self.cfg.n_eval if self.fid else GRID_IMAGES
        grids, features = {}, {}
        for i, start in enumerate(range(0, n, FID_CHUNK)):
            samples = method.sample(min(FID_CHUNK, n - start), EVAL_SEED + i)
            for kind, x in samples.items():
                x = x.detach()
                if i == 0:
                    grids[kind] = x[:GRID_IMAGES].cpu()
                if self.fid:
                    features.setdefault(kind, []).append(self.fid.features(x.clamp(-1, 1)))
        self._plot_images(grids, iteration)
        if not self.fid:
            return {"fid": None, "fid_skipped": "no --fid-weights: FID needs an Inception feature network "
                                                "supplied as a local file (see train/fid.py); not computed"}
        real = self._real()
        out = {f"fid_{kind}": self.fid.fid(real, torch.cat(f)) for kind, f in features.items()}
        out["fid_n"] = n
        return out

    def _real(self) -> torch.Tensor:
        """Features of min(n_eval, data set size) data images (a fixed-seed subset), computed once."""
        if self._real_features is None:
            size = self.source.size
            gen = torch.Generator().manual_seed(EVAL_SEED)
            idx = torch.randperm(size, generator=gen)[:min(self.cfg.n_eval, size)]
            feats = [self.fid.features(self.source.get(idx[i:i + FID_CHUNK])) for i in range(0, len(idx), FID_CHUNK)]
            self._real_features = torch.cat(feats)
        return self._real_features

    def _toy(self, method: Method, iteration: int) -> dict:
        energy = M.energy_on_grid(method.models["energy"], self.grid, self.device)
        out = {**M.grid_kl_tv(energy, self.true_logp, method.temperature), "density_source": self.density_source}
        samples = method.sample(self.cfg.n_eval, EVAL_SEED)
        for kind, x in samples.items():
            x = x.detach().cpu()
            finite = x[torch.isfinite(x).all(1)]
            out[f"mmd2_{kind}"] = M.mmd2_unbiased(finite, self.true_samples) if len(finite) > 1 else float("nan")
            out.update({f"{k}_{kind}": v for k, v in M.mode_metrics(x, self.toy).items()})
        self._plot_toy(energy, samples, method.temperature, iteration)
        return out

    def _digits(self, method: Method, iteration: int) -> dict:
        samples = method.sample(self.cfg.n_eval, EVAL_SEED)
        out = {f"frechet_{kind}": M.digits_frechet(self.classifier, self.digits.train_x, x)
               for kind, x in samples.items()}
        images = {kind: x[:64] for kind, x in samples.items()}
        if hasattr(method, "reconstruct"):
            test = self.digits.test_x.to(self.device)
            recon = method.reconstruct(test, EVAL_SEED).cpu()
            out["recon_mse"] = M.reconstruction_mse(self.digits.test_x, recon)
            images["reconstruction"] = torch.cat([self.digits.test_x[:32], recon[:32]])
        self._plot_digits(images, iteration, out)
        return out

    def _plot_toy(self, energy, samples, temperature, iteration):
        plt = pyplot("the evaluation figures")

        n = self.cfg.grid_n
        lo, hi = self.toy.bounds
        density = np.exp(M._log_normalise(-energy / temperature)).reshape(n, n)
        panels = [("true samples", self.true_samples)] + [(f"{k} samples", v.detach().cpu()) for k, v in
                                                          samples.items()]
        fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4 * (1 + len(panels)), 4))
        axes[0].imshow(density.T, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        axes[0].set_title(f"exp(-E/T), iter {iteration}")
        for ax, (title, pts) in zip(axes[1:], panels):
            pts = pts[:2000].numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
            ax.set_xlim(lo, hi), ax.set_ylim(lo, hi), ax.set_aspect("equal"), ax.set_title(title)
        fig.tight_layout()
        fig.savefig(os.path.join(self.out_dir, f"density_{iteration:07d}.png"), dpi=80)
        fig.savefig(os.path.join(self.out_dir, "density.png"), dpi=80)
        plt.close(fig)

    def _plot_digits(self, images, iteration, metrics=None):
        plt = pyplot("the evaluation figures")

        metrics = metrics or {}
        fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 4.8))
        for ax, (kind, x) in zip(np.atleast_1d(axes), images.items()):
            x = x.detach().cpu().clamp(-1, 1)[:64]
            rows = int(math.ceil(len(x) / 8))
            grid = torch.ones(rows * 9, 8 * 9)
            for i, img in enumerate(x):
                r, c = divmod(i, 8)
                grid[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = img[0]
            ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1)
            score = metrics.get(f"frechet_{kind}", metrics.get("recon_mse") if kind == "reconstruction" else None)
            label = "Frechet distance" if kind != "reconstruction" else "MSE per pixel"
            ax.set_title(SAMPLE_TITLES.get(kind, kind) + (f"\n{label} {score:.4g}" if score is not None else ""),
                         fontsize=10)
            ax.set_xticks([])
            if kind == "reconstruction":  # which rows are data and which are reconstructions
                ax.set_yticks([rows * 9 / 4, rows * 9 * 3 / 4], ["test digits", "reconstructed"], fontsize=9)
            else:
                ax.set_yticks([])
        fig.suptitle(f"digits, method {self.cfg.method}, iteration {iteration}")
        fig.tight_layout()
        fig.savefig(os.path.join(self.out_dir, f"samples_{iteration:07d}.png"), dpi=80)
        fig.savefig(os.path.join(self.out_dir, "samples.png"), dpi=80)
        plt.close(fig)

    def _plot_images(self, images, iteration):
        """One 8 x 8 grid per kind of sample (images in [-1, 1] shown in [0, 1])."""
        plt = pyplot("the evaluation figures")

        fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 5.4))
        for ax, (kind, x) in zip(np.atleast_1d(axes), images.items()):
            x = (x.float().clamp(-1, 1) + 1) / 2
            n, c, h, w = x.shape
            rows = int(math.ceil(n / 8))
            grid = torch.ones(3, rows * (h + 2), 8 * (w + 2))
            for i, img in enumerate(x):
                r, col = divmod(i, 8)
                grid[:, r * (h + 2):r * (h + 2) + h, col * (w + 2):col * (w + 2) + w] = img.expand(3, h, w)
            ax.imshow(grid.permute(1, 2, 0).numpy())
            ax.set_title(SAMPLE_TITLES.get(kind, kind), fontsize=10)
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(f"{self.cfg.dataset}, method {self.cfg.method}, iteration {iteration}")
        fig.tight_layout()
        fig.savefig(os.path.join(self.out_dir, f"samples_{iteration:07d}.png"), dpi=80)
        fig.savefig(os.path.join(self.out_dir, "samples.png"), dpi=80)
        plt.close(fig)


#: What a learning curve shows, per config: (metrics.json key, label) pairs, one axes per pair list.
CURVE_PANELS = {
    "toy2d": ([("grid_kl", "grid KL(data || exp(-E/T))")],
              [("mmd2_ebm", "EBM chain"), ("mmd2_generator", "generator")]),
    "digits": ([("frechet_ebm", "EBM chain"), ("frechet_generator", "generator")],),
}
CURVE_YLABELS = {"grid_kl": "grid KL", "mmd2_ebm": "MMD^2", "frechet_ebm": "Frechet distance"}


def curve_points(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(iteration, value) of every evaluation with a finite ``key``, zero and negative values
    included: the unbiased MMD^2 estimator is negative when two samples agree within its noise,
    and a curve that dropped those points would hide the evaluations where the model did best."""
    return [(e["iteration"], float(e[key])) for e in history
            if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]


def y_scale(values: list[float]) -> tuple[str, dict]:
    """A log axis for positive values; otherwise symlog, linear up to the decade of the largest
    negative value: an estimate that can come out negative is noise at that size, and a log
    scale below it would draw the noise as decades of change."""
    if all(v > 0 for v in values):
        return "log", {}
    negatives = [-v for v in values if v < 0]
    return "symlog", {"linthresh": 10.0 ** math.ceil(math.log10(max(negatives))) if negatives else 1.0}


def plot_learning_curve(history: list[dict], config: str, path: str, title: str = "") -> bool:
    """learning_curve.png: each evaluation's metrics against iteration (toy2d: grid KL on a log
    scale and MMD^2 on a symlog one, which keeps its negative estimates; digits: Frechet
    distances). False (nothing written) for configs without a curve."""
    panels = CURVE_PANELS.get(config)
    if not panels or not history:
        return False
    plt = pyplot("the evaluation figures")

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, series in zip(axes[0], panels):
        values = []
        for key, label in series:
            points = curve_points(history, key)
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label)
                values += [v for _, v in points]
        scale, options = y_scale(values)
        ax.set_yscale(scale, **options)
        if scale == "symlog":
            ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel(CURVE_YLABELS.get(series[0][0], series[0][0]))
        ax.grid(True, which="both", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def evaluation_line(entry: dict, iters: int) -> str:
    """One line summarising an evaluation (printed at every evaluation, e.g. under --no-progress)."""
    skip = {"iteration", "losses", "eval_seconds"}
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()
             if k not in skip and not k.startswith("modes_total") and isinstance(v, (int, float))
             and not isinstance(v, bool)]
    losses = [f"{k} {v:.4g}" for k, v in entry.get("losses", {}).items() if k.startswith("loss")]
    return (f"iteration {entry['iteration']}/{iters}: " + ", ".join(parts + losses)
            + f" (evaluated in {entry.get('eval_seconds', 0):.1f} s)")
