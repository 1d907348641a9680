"""The one trainer: data batches, the method's step, evaluation, plots, checkpoints, DDP.

A run directory holds config.json, metrics.json (a list, one entry per evaluation),
checkpoint.pt (written atomically: temp file + os.replace) and PNGs.
"""
from __future__ import annotations

import json
import math
import os
import random
import time

import numpy as np
import torch

from .config import TrainConfig
from .data import TOY_DATASETS, check_image_root, load_digits_split, load_image_dataset, toy_dataset
from .methods import Diverged, Method, build_method
from . import metrics as M

CHECKPOINT = "checkpoint.pt"
EVAL_SEED = 12345  # evaluation chains and noise use fixed seeds: metrics do not disturb training


class TrainingDiverged(RuntimeError):
    """Raised when a loss or chain diverges; the last good checkpoint is left in place."""


# ----------------------------------------------------------------------------- data sources

class ToySource:
    """Fresh exact samples of a 2-D toy per batch, from a checkpointed numpy generator."""

    def __init__(self, name: str, seed: int, rank: int):
        self.toy = toy_dataset(name)
        self.rng = np.random.default_rng([seed, rank, 1])
        self.shape = (2,)
        self.size = 0

    def batch(self, n: int) -> torch.Tensor:
        return self.toy.sample(n, self.rng)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class TensorSource:
    """Random minibatches (with replacement across batches) of an in-memory tensor data set."""

    def __init__(self, data: torch.Tensor, seed: int, rank: int):
        self.data = data
        self.gen = torch.Generator().manual_seed(seed * 1000 + rank + 3)
        self.shape = tuple(data.shape[1:])
        self.size = len(data)

    def batch(self, n: int) -> torch.Tensor:
        idx = torch.randint(0, len(self.data), (n,), generator=self.gen)
        return self._get(idx)

    def _get(self, idx):
        return self.data[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class DatasetSource(TensorSource):
    """Random minibatches of a torchvision-style data set (items (image, label))."""

    def __init__(self, dataset, seed: int, rank: int):
        self.dataset = dataset
        super().__init__(torch.empty(len(dataset), 0), seed, rank)
        self.shape = tuple(dataset[0][0].shape)

    def _get(self, idx):
        return torch.stack([self.dataset[int(i)][0] for i in idx])


def make_source(cfg: TrainConfig, rank: int = 0, data_root: str | None = None, download: bool = False):
    if cfg.config == "toy2d":
        if cfg.dataset not in TOY_DATASETS:
            raise ValueError(f"dataset={cfg.dataset!r} is not a 2-D toy; allowed with --config toy2d: "
                             f"{', '.join(TOY_DATASETS)}")
        return ToySource(cfg.dataset, cfg.seed, rank)
    if cfg.config == "digits":
        return TensorSource(load_digits_split().train_x, cfg.seed, rank)
    if not download:
        check_image_root(cfg.dataset, data_root)
    return DatasetSource(load_image_dataset(cfg.dataset, data_root, cfg.image_size, download), cfg.seed, rank)


# ----------------------------------------------------------------------------- evaluation

class Evaluator:
    """Computes the config's metrics and writes plots for one method."""

    def __init__(self, cfg: TrainConfig, out_dir: str, device):
        self.cfg, self.out_dir, self.device = cfg, out_dir, device
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
        if self.cfg.config == "toy2d":
            return self._toy(method, iteration)
        if self.cfg.config == "digits":
            return self._digits(method, iteration)
        return {"fid": None, "fid_skipped": "FID needs Inception weights supplied locally; not computed"}

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
        self._plot_digits(images, iteration)
        return out

    def _plot_toy(self, energy, samples, temperature, iteration):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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

    def _plot_digits(self, images, iteration):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4))
        for ax, (title, x) in zip(np.atleast_1d(axes), images.items()):
            x = x.detach().cpu().clamp(-1, 1)[:64]
            rows = int(math.ceil(len(x) / 8))
            grid = torch.ones(rows * 9, 8 * 9)
            for i, img in enumerate(x):
                r, c = divmod(i, 8)
                grid[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = img[0]
            ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_title(f"{title}, iter {iteration}"), ax.axis("off")
        fig.tight_layout()
        fig.savefig(os.path.join(self.out_dir, f"samples_{iteration:07d}.png"), dpi=80)
        fig.savefig(os.path.join(self.out_dir, "samples.png"), dpi=80)
        plt.close(fig)


# ----------------------------------------------------------------------------- checkpoints

def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, then os.replace (never a torn file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the loop

class Trainer:
    """Runs cfg.iters iterations of cfg.method, evaluating and checkpointing periodically."""

    def __init__(self, cfg: TrainConfig, out_dir: str, *, data_root: str | None = None, download: bool = False,
                 progress: bool = True, rank: int = 0, world_size: int = 1, wrap=None):
        self.cfg, self.out_dir = cfg, out_dir
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(cfg.device)
        self.progress = progress and rank == 0
        os.makedirs(out_dir, exist_ok=True)
        torch.manual_seed(cfg.seed + rank)  # model initialisation (DDP then broadcasts rank 0's)
        random.seed(cfg.seed + rank)
        self.source = make_source(cfg, rank, data_root, download)
        self.method = build_method(cfg, self.device, self.source.shape, rank, wrap)
        self.evaluator = Evaluator(cfg, out_dir, self.device) if rank == 0 else None
        self.iteration = 0
        self.history: list[dict] = []
        self.last_losses: dict = {}

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, CHECKPOINT if self.rank == 0 else f"checkpoint_rank{self.rank}.pt")

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "config": self.cfg.to_dict(), "method": self.method.state_dict(),
                "source": self.source.state_dict(), "history": self.history,
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

    def save(self) -> None:
        atomic_save(self.state_dict(), self.checkpoint_path)

    def resume(self) -> bool:
        """Load the run's checkpoint if there is one; True when resumed."""
        if not os.path.exists(self.checkpoint_path):
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.method.load_state_dict(state["method"])
        self.source.load_state_dict(state["source"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.iteration, self.history = state["iteration"], state["history"]
        return True

    def _epoch_size(self) -> int:
        if self.cfg.epoch_size:
            return self.cfg.epoch_size
        return max(1, self.source.size // self.cfg.batch_size) if self.source.size else 0

    def step(self) -> dict:
        x = self.source.batch(self.cfg.batch_size).to(self.device)
        try:
            losses = self.method.train_step(x)
        except Diverged as err:
            raise TrainingDiverged(
                f"training diverged at iteration {self.iteration + 1}: {err}. The last good checkpoint "
                f"({self.checkpoint_path}) was kept.") from err
        self.iteration += 1
        epoch = self._epoch_size()
        if self.cfg.lr_decay != 1.0 and epoch and self.iteration % epoch == 0:
            for sched in self.method.schedulers.values():
                sched.step()
        return losses

    def evaluate(self) -> dict:
        start = time.time()
        entry = {"iteration": self.iteration, **self.evaluator.evaluate(self.method, self.iteration)}
        entry["eval_seconds"] = round(time.time() - start, 2)
        entry["losses"] = self.last_losses
        self.history.append(entry)
        _write_json(self.history, os.path.join(self.out_dir, "metrics.json"))
        return entry

    def train(self) -> list[dict]:
        """Run to cfg.iters; evaluate/checkpoint every eval_every/ckpt_every and at the end."""
        if self.rank == 0:
            _write_json(self.cfg.to_dict(), os.path.join(self.out_dir, "config.json"))
        bar = _progress(self.cfg.iters, self.iteration, self.progress)
        while self.iteration < self.cfg.iters:
            self.last_losses = self.step()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in self.last_losses.items() if k.startswith("loss")})
            last = self.iteration == self.cfg.iters
            if self.rank == 0 and (self.iteration % self.cfg.eval_every == 0 or last):
                self.evaluate()
            if self.iteration % self.cfg.ckpt_every == 0 or last:
                self.save()
        bar.close()
        return self.history


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, d):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, dynamic_ncols=True)
