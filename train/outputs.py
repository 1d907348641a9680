"""What a run writes besides checkpoints and plots: losses.csv (one row per iteration) and the
provenance recorded in config.json (versions, git commit, command line)."""
from __future__ import annotations

import os
import time

import torch

from .checkpoints import atomic_write

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
        atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in lines).encode()))

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
