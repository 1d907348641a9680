"""The one trainer: data batches, the method's step, evaluation, plots, checkpoints, DDP.

A run directory holds config.json, metrics.json (a list, one entry per evaluation),
checkpoint.pt (written atomically: temp file + os.replace) and PNGs.
"""
from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import time

import numpy as np
import torch

from .config import TrainConfig
from .data import TOY_DATASETS, check_image_root, load_digits_split, load_image_dataset, toy_dataset
from .distributed import max_over_ranks
from .methods import Diverged, Method, build_method
from . import metrics as M

CHECKPOINT = "checkpoint.pt"
EVAL_SEED = 12345  # evaluation chains and noise use fixed seeds: metrics do not disturb training


class TrainingDiverged(RuntimeError):
    """Raised when a loss or chain diverges; the last good checkpoint is left in place."""

    agreed = True  # under DDP every rank raises it at the same check point (Method.agree)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a completed iteration, whose checkpoint was saved.

    ``exit_status`` is the shell convention 128 + signal number (130 for SIGINT, 143 for SIGTERM).
    """

    agreed = True  # under DDP every rank raises it at the same iteration (distributed_context)

    def __init__(self, iteration: int, signum: int, checkpoint: str):
        self.iteration, self.signum, self.checkpoint = iteration, signum, checkpoint
        self.exit_status = 128 + signum
        super().__init__(f"interrupted at iteration {iteration}; continue with --resume "
                         f"(checkpoint {checkpoint} saved)")


class _StopSignals:
    """While active, the first SIGINT/SIGTERM only records itself: the loop finishes the iteration,
    saves a checkpoint and stops. The handler then reverts to the default, so a second signal stops
    the process at once (nothing saved beyond the last checkpoint). Previous handlers are restored
    on exit. Only the main thread can own signal handlers; elsewhere this does nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, announce: bool):
        self.signum = 0
        self.announce = announce
        self._previous: dict = {}

    def __enter__(self) -> "_StopSignals":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal
        import sys

        self.signum = self.signum or signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: finishing this iteration and saving a checkpoint "
                  "(send it again to stop at once, without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


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
        return self.get(idx)

    def get(self, idx):
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

    def get(self, idx):
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

    def _plot_digits(self, images, iteration, metrics=None):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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


# ----------------------------------------------------------------------------- checkpoints

TMP_MARK = ".tmp"  # temp files are "<final name>.tmp<pid>" in the final file's directory

#: Test hook (tests/test_train_hardening.py): "N:STAGE" makes the N-th atomic_save of this process
#: SIGKILL itself mid-write. STAGE "partial": the temp file holds only the first half of the bytes;
#: "written": the temp file is complete but not yet renamed; "replaced": just after the rename.
KILL_HOOK_ENV = "LANGEVIN_TEST_KILL_SAVE"
_saves = 0


def _kill_hook(stage: str, tmp: str) -> None:
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return
    count, want = spec.split(":")
    if _saves != int(count) or stage != want:
        return
    if stage == "partial":
        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
            f.flush()
            os.fsync(f.fileno())
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write, hook: bool = False) -> None:
    """write(file) into "<path>.tmp<pid>", flush + fsync, os.replace onto path, fsync the directory.

    A reader (or a resumed run after a kill or power loss) sees either the old complete file or the
    new complete one, never a torn one; a kill leaves at most a stale temp file, which
    remove_stale_temps() deletes and nothing ever reads.
    """
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if hook:
            _kill_hook("partial", tmp)
            _kill_hook("written", tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hook:
        _kill_hook("replaced", tmp)
    _fsync_dir(os.path.dirname(path))


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, then os.replace (never a torn file)."""
    global _saves
    _saves += 1
    _atomic_write(path, lambda f: torch.save(obj, f), hook=True)


def _write_json(obj, path: str) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def remove_stale_temps(path: str) -> list[str]:
    """Delete "<path>.tmp<pid>" files left by killed writers (not those of live processes); returns them."""
    directory, name = os.path.split(path)
    removed = []
    try:
        entries = os.listdir(directory or ".")
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.startswith(name + TMP_MARK):
            continue
        pid = entry[len(name + TMP_MARK):]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another live process is writing it right now
        try:
            os.remove(os.path.join(directory, entry))
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, not ours, or from a different configuration."""


#: Config keys that may change when a run is resumed (run length, device, compilation and
#: evaluation settings; max_energy_gap, and its old name max_energy_loss, only decide when to
#: stop). Every other key must equal the checkpoint's.
RESUMABLE_KEYS = frozenset({"iters", "device", "eval_every", "ckpt_every", "n_eval", "grid_n", "eval_x_steps",
                            "eval_x_step", "eval_x_noise", "max_energy_gap", "max_energy_loss",
                            "compile"})
CHECKPOINT_KEYS = ("iteration", "config", "method", "source", "history", "torch_rng", "python_rng")


def _fix_hint(path: str) -> str:
    return (f"Delete it (rm {path}) to start this run from scratch, run without --resume, or choose "
            f"another --out.")


#: What a checkpoint may hold: exactly what ``torch.load(weights_only=True)`` admits without extra
#: allow-listed globals. The trainer saves nothing else (``check_plain`` enforces it on save), so a
#: file that needs any other Python object to load was not written by langevin-train.
PLAIN_TYPES = (dict, collections.OrderedDict, list, tuple, str, int, float, bool, type(None))  # + tensors


def check_plain(obj, where: str = "checkpoint") -> None:
    """TypeError naming the first value (by its key path) that is not a tensor or of a PLAIN_TYPES type
    (exactly: numpy.float64 subclasses float but pickles as a numpy object)."""
    if isinstance(obj, torch.Tensor):
        return
    if type(obj) not in PLAIN_TYPES:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                        "tensors, numbers, strings, None, lists, tuples and dicts (what torch.load(weights_only="
                        "True) reads), so convert it (e.g. numpy scalars with .item())")
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_plain(key, f"{where} key")
            check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")


def _unpickling_reason(err: Exception) -> str:
    """The informative line of a torch.load failure (the weights-only message starts with boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or [""])[0][:200]


def load_checkpoint(path: str, map_location=None) -> dict:
    """torch.load a trainer checkpoint safely (weights_only=True: tensors and plain data, never code).

    CheckpointError naming the file when it is not a checkpoint, and when it holds other Python
    objects: unpickling those can run code chosen by whoever wrote the file, so it is refused.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle ...
        reason = _unpickling_reason(err)
        code = re.search(r"GLOBAL ([\w.]+)", str(err))
        if code:
            raise CheckpointError(
                f"checkpoint {path} refused: it holds the Python object {code.group(1)}, and loading that could "
                f"run code chosen by whoever wrote the file (langevin-train checkpoints hold only tensors and "
                f"plain data). Nothing from it was executed. {_fix_hint(path)}") from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {reason}); it is truncated, "
            f"corrupt or not written by langevin-train. {_fix_hint(path)}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a training checkpoint "
                              f"(a dict with {', '.join(CHECKPOINT_KEYS)}). {_fix_hint(path)}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint: missing "
                              f"{missing or ['config (a dict)']}. {_fix_hint(path)}")
    return state


def config_differences(saved: dict, requested: dict) -> dict:
    """{key: (saved, requested)} for the keys outside RESUMABLE_KEYS whose values differ."""
    out = {}
    for key in sorted(set(saved) | set(requested)):
        if key in RESUMABLE_KEYS:
            continue
        a, b = saved.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            out[key] = (saved.get(key, "<absent>"), requested.get(key, "<absent>"))
    return out


# ----------------------------------------------------------------------------- the loop

class Trainer:
    """Runs cfg.iters iterations of cfg.method, evaluating and checkpointing periodically."""

    def __init__(self, cfg: TrainConfig, out_dir: str, *, data_root: str | None = None, download: bool = False,
                 progress: bool = True, rank: int = 0, world_size: int = 1, wrap=None,
                 fid_weights: str | None = None):
        self.cfg, self.out_dir = cfg, out_dir
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(cfg.device)
        self.progress = progress and rank == 0
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r} but torch.cuda.is_available() is False; use --device cpu")
        os.makedirs(out_dir, exist_ok=True)
        if rank == 0:
            for name in ("config.json", "metrics.json"):
                remove_stale_temps(os.path.join(out_dir, name))
        remove_stale_temps(self.checkpoint_path)
        torch.manual_seed(cfg.seed + rank)  # model initialisation (DDP then broadcasts rank 0's)
        random.seed(cfg.seed + rank)
        self.source = make_source(cfg, rank, data_root, download)
        self.method = build_method(cfg, self.device, self.source.shape, rank, wrap)
        self.evaluator = Evaluator(cfg, out_dir, self.device, self.source, fid_weights) if rank == 0 else None
        self.loss_log = LossLog(os.path.join(out_dir, LOSSES_CSV)) if rank == 0 else None
        self.iteration = 0
        self.saved_iteration: int | None = None  # iteration of the checkpoint this run wrote or resumed
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
        state = self.state_dict()
        check_plain(state)  # what load_checkpoint's weights-only unpickler will accept
        atomic_save(state, self.checkpoint_path)
        self.saved_iteration = self.iteration

    def resume(self) -> bool:
        """Load the run's checkpoint if there is one; True when resumed.

        CheckpointError (a ValueError; the CLI exits with status 2) names the file when it is
        unreadable or not a checkpoint, and the keys when it was written by a different
        configuration (only RESUMABLE_KEYS may differ). Stale temp files of killed writers are
        removed first (they are never read).
        """
        path = self.checkpoint_path
        remove_stale_temps(path)
        if not os.path.exists(path):
            return False
        # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest to the device.
        state = load_checkpoint(path, map_location="cpu")
        diff = config_differences(state["config"], self.cfg.to_dict())
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r}, requested {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(
                f"checkpoint {path} was written by a different configuration ({detail}). Resume with the "
                f"checkpoint's settings, or start a new run: {_fix_hint(path)}")
        try:
            self.method.load_state_dict(state["method"])
            self.source.load_state_dict(state["source"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            self.iteration, self.history = int(state["iteration"]), list(state["history"])
            self.saved_iteration = self.iteration
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this run's models or data "
                                  f"({type(err).__name__}: {str(err).strip()[:300]}). {_fix_hint(path)}") from err
        if not 0 <= self.iteration <= self.cfg.iters:
            raise CheckpointError(f"checkpoint {path} is at iteration {self.iteration}, beyond iters="
                                  f"{self.cfg.iters}: pass --iters {self.iteration} or more to continue it. "
                                  f"{_fix_hint(path)}")
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
            raise TrainingDiverged(f"training diverged at iteration {self.iteration + 1}: {err}. "
                                   f"{self._what_is_saved()}") from err
        self.iteration += 1
        epoch = self._epoch_size()
        if self.cfg.lr_decay != 1.0 and epoch and self.iteration % epoch == 0:
            for sched in self.method.schedulers.values():
                sched.step()
        return losses

    def learning_rates(self) -> dict[str, float]:
        """{"lr_energy": ..., ...}: the current learning rate of each model the method trains."""
        return {f"lr_{name}": float(opt.param_groups[0]["lr"]) for name, opt in self.method.optimizers.items()}

    def _what_is_saved(self) -> str:
        """What a diverged run leaves on disk, as it is."""
        if self.saved_iteration is not None:
            return (f"The last good checkpoint, of iteration {self.saved_iteration} ({self.checkpoint_path}), "
                    "was kept.")
        first = min(self.cfg.ckpt_every, self.cfg.iters)
        return (f"No checkpoint of this run exists yet (the first was due at iteration {first}), so nothing "
                "was saved; there is nothing to resume.")

    def evaluate(self) -> dict:
        start = time.time()
        entry = {"iteration": self.iteration, **_plain_numbers(self.evaluator.evaluate(self.method, self.iteration))}
        entry["eval_seconds"] = round(time.time() - start, 2)
        entry["losses"] = self.last_losses
        self.history.append(entry)
        _write_json(self.history, os.path.join(self.out_dir, "metrics.json"))
        self._say(evaluation_line(entry, self.cfg.iters))
        return entry

    def _say(self, line: str) -> None:
        """A line on stdout that does not tear the progress bar."""
        (getattr(self, "_bar", None) or _NoBar()).write(line)

    def train(self) -> list[dict]:
        """Run to cfg.iters; evaluate/checkpoint every eval_every/ckpt_every and at the end.

        SIGINT / SIGTERM: the current iteration (and its due evaluation) completes, a checkpoint is
        saved and TrainingInterrupted is raised; under DDP every rank stops at the same iteration.
        """
        with _StopSignals(announce=self.rank == 0) as signals:
            if self.rank == 0:
                _write_json({**self.cfg.to_dict(), "run": run_provenance()}, os.path.join(self.out_dir, "config.json"))
                self.loss_log.start(self.iteration)
            bar = self._bar = _progress(self.cfg.iters, self.iteration, self.progress)
            try:
                while self.iteration < self.cfg.iters:
                    started = time.perf_counter()
                    self.last_losses = self.step()
                    if self.rank == 0:
                        self.loss_log.write(self.iteration, self.last_losses, self.learning_rates(),
                                            time.perf_counter() - started)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in self.last_losses.items() if k.startswith("loss")})
                    last = self.iteration == self.cfg.iters
                    if self.rank == 0 and (self.iteration % self.cfg.eval_every == 0 or last):
                        self.evaluate()
                    saved = self.iteration % self.cfg.ckpt_every == 0 or last
                    if saved:
                        self.save()
                    signum = max_over_ranks(signals.signum)  # every rank stops at the same iteration
                    if signum:
                        if not saved:
                            self.save()
                        raise TrainingInterrupted(self.iteration, signum, self.checkpoint_path)
            finally:
                bar.close()
        return self.history


def _plain_numbers(metrics: dict) -> dict:
    """numpy scalars -> Python numbers (JSON and weights-only checkpoints hold plain data only)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()}


LOSSES_CSV = "losses.csv"


class LossLog:
    """<run>/losses.csv: one row per iteration (iteration, each loss, learning rates, seconds).

    Rows are appended and flushed as training goes. ``start(iteration)`` keeps only the rows up
    to the iteration training starts from (a resumed run redoes the iterations after its
    checkpoint, so their earlier rows are dropped and each iteration appears once).
    """

    def __init__(self, path: str):
        self.path = path
        self.columns: list[str] | None = None

    def start(self, iteration: int) -> None:
        import csv

        rows, self.columns = [], None
        if iteration > 0 and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                reader = csv.reader(f)
                self.columns = next(reader, None)
                rows = [r for r in reader if r and r[0].isdigit() and int(r[0]) <= iteration]
        lines = ([",".join(self.columns)] if self.columns else []) + [",".join(r) for r in rows]
        _atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in lines).encode()))

    def write(self, iteration: int, losses: dict, lrs: dict, seconds: float) -> None:
        values = {"iteration": iteration, **losses, **lrs, "seconds": seconds}
        new_file = self.columns is None
        if new_file:
            self.columns = list(values)
        with open(self.path, "a") as f:
            if new_file:
                f.write(",".join(self.columns) + "\n")
            f.write(",".join(_csv_number(values.get(c, "")) for c in self.columns) + "\n")


def _csv_number(v) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def run_provenance() -> dict:
    """What produced a run: package and torch versions, the git commit of the source (None outside a
    git checkout) and whether it had uncommitted changes, the command line, the start time."""
    import subprocess
    import sys

    import langevin_kernels

    source = os.path.dirname(os.path.dirname(os.path.abspath(langevin_kernels.__file__)))

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"langevin_kernels_version": langevin_kernels.__version__, "git_commit": commit,
            "git_dirty": bool(dirty) if commit else None, "torch_version": torch.__version__,
            "python_version": sys.version.split()[0], "argv": list(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def evaluation_line(entry: dict, iters: int) -> str:
    """One line summarising an evaluation (printed at every evaluation, e.g. under --no-progress)."""
    skip = {"iteration", "losses", "eval_seconds"}
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()
             if k not in skip and not k.startswith("modes_total") and isinstance(v, (int, float))
             and not isinstance(v, bool)]
    losses = [f"{k} {v:.4g}" for k, v in entry.get("losses", {}).items() if k.startswith("loss")]
    return (f"iteration {entry['iteration']}/{iters}: " + ", ".join(parts + losses)
            + f" (evaluated in {entry.get('eval_seconds', 0):.1f} s)")


class _NoBar:
    def write(self, line):
        print(line, flush=True)

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
