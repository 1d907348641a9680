"""The training loop: batches, the method's step, evaluation and checkpoints on schedule, DDP.

A run directory holds config.json, metrics.json (a list, one entry per evaluation), losses.csv,
checkpoint.pt and PNGs. Where each part lives: data sources (sources.py), metrics and plots
(evaluation.py), checkpoint files (checkpoints.py), losses.csv and provenance (outputs.py).
"""
from __future__ import annotations

import os
import random
import time

import numpy as np
import torch

from langevin_kernels._optional import require

from .checkpoints import (CHECKPOINT, CheckpointError, atomic_save, check_plain, config_differences, fix_hint,
                          load_checkpoint, remove_stale_temps, write_json)
from .config import TrainConfig
from .distributed import max_over_ranks
from .evaluation import Evaluator, evaluation_line, plot_learning_curve
from .methods import Diverged, build_method
from .outputs import LOSSES_CSV, LossLog, run_provenance
from .sources import make_source


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

    def train(self) -> list[dict]:
        """Run to cfg.iters; evaluate/checkpoint every eval_every/ckpt_every and at the end.

        SIGINT / SIGTERM: the current iteration (and its due evaluation) completes, a checkpoint is
        saved and TrainingInterrupted is raised; under DDP every rank stops at the same iteration.
        """
        with _StopSignals(announce=self.rank == 0) as signals:
            if self.rank == 0:
                write_json({**self.cfg.to_dict(), "run": run_provenance()}, os.path.join(self.out_dir, "config.json"))
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

    def evaluate(self) -> dict:
        start = time.time()
        entry = {"iteration": self.iteration, **_plain_numbers(self.evaluator.evaluate(self.method, self.iteration))}
        entry["eval_seconds"] = round(time.time() - start, 2)
        entry["losses"] = self.last_losses
        self.history.append(entry)
        write_json(self.history, os.path.join(self.out_dir, "metrics.json"))
        plot_learning_curve(self.history, self.cfg.config, os.path.join(self.out_dir, "learning_curve.png"),
                            f"learning curve: {self.cfg.dataset}, method {self.cfg.method}")
        self._say(evaluation_line(entry, self.cfg.iters))
        return entry

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
                f"checkpoint's settings, or start a new run: {fix_hint(path)}")
        try:
            self.method.load_state_dict(state["method"])
            self.source.load_state_dict(state["source"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            self.iteration, self.history = int(state["iteration"]), list(state["history"])
            self.saved_iteration = self.iteration
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this run's models or data "
                                  f"({type(err).__name__}: {str(err).strip()[:300]}). {fix_hint(path)}") from err
        if not 0 <= self.iteration <= self.cfg.iters:
            raise CheckpointError(f"checkpoint {path} is at iteration {self.iteration}, beyond iters="
                                  f"{self.cfg.iters}: pass --iters {self.iteration} or more to continue it. "
                                  f"{fix_hint(path)}")
        return True

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.out_dir, CHECKPOINT if self.rank == 0 else f"checkpoint_rank{self.rank}.pt")

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "config": self.cfg.to_dict(), "method": self.method.state_dict(),
                "source": self.source.state_dict(), "history": self.history,
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

    def learning_rates(self) -> dict[str, float]:
        """{"lr_energy": ..., ...}: the current learning rate of each model the method trains."""
        return {f"lr_{name}": float(opt.param_groups[0]["lr"]) for name, opt in self.method.optimizers.items()}

    def _epoch_size(self) -> int:
        if self.cfg.epoch_size:
            return self.cfg.epoch_size
        return max(1, self.source.size // self.cfg.batch_size) if self.source.size else 0

    def _what_is_saved(self) -> str:
        """What a diverged run leaves on disk, as it is."""
        if self.saved_iteration is not None:
            return (f"The last good checkpoint, of iteration {self.saved_iteration} ({self.checkpoint_path}), "
                    "was kept.")
        first = min(self.cfg.ckpt_every, self.cfg.iters)
        return (f"No checkpoint of this run exists yet (the first was due at iteration {first}), so nothing "
                "was saved; there is nothing to resume.")

    def _say(self, line: str) -> None:
        """A line on stdout that does not tear the progress bar."""
        (getattr(self, "_bar", None) or _NoBar()).write(line)


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


def _plain_numbers(metrics: dict) -> dict:
    """numpy scalars -> Python numbers (JSON and weights-only checkpoints hold plain data only)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()}

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
    tqdm = require("tqdm", "the progress bar").tqdm
    return tqdm(total=total, initial=initial, dynamic_ncols=True)
