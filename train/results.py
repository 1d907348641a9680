"""Regenerate train/RESULTS.md: dual-MCMC teaching vs its baselines, several seeds per cell.

    python -m langevin_kernels.train.results --out runs/results --workers 2
    python -m langevin_kernels.train.results --table-only --out runs/results   # re-aggregate

Every cell is one ``langevin-train`` command (listed in the table), run in its own process with
one thread; finished cells (metrics.json at the final iteration) are skipped, so an interrupted
sweep resumes where it stopped. The table reports mean +- std over seeds of the final evaluation.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

TOY_DATASETS = ("8gaussians", "25gaussians", "rings")
METHODS = ("dual", "coop", "shortrun")
TOY_ITERS = 1000
DIGITS_ITERS = 300
SEEDS = (0, 1, 2)

# (metrics.json key, column title, decimals); lower is better except modes covered.
TOY_COLUMNS = (("grid_kl", "grid KL (EBM)", 3), ("mmd2_ebm", "MMD² (EBM chain)", 4),
               ("mmd2_generator", "MMD² (generator)", 4), ("modes_covered_ebm", "modes (EBM chain)", 1))
DIGITS_COLUMNS = (("frechet_ebm", "Fréchet (EBM chain)", 1), ("frechet_generator", "Fréchet (generator)", 1),
                  ("recon_mse", "recon MSE", 4))


@dataclass(frozen=True)
class Cell:
    config: str
    dataset: str
    method: str
    seed: int
    iters: int

    @property
    def name(self) -> str:
        return f"{self.config}-{self.dataset}-{self.method}-s{self.seed}"

    def argv(self, out_root: str) -> list[str]:
        """Arguments of ``langevin-train`` for this cell."""
        args = ["--config", self.config, "--method", self.method, "--iters", str(self.iters),
                "--seed", str(self.seed), "--eval-every", str(self.iters), "--out", os.path.join(out_root, self.name)]
        if self.config == "toy2d":
            args[2:2] = ["--dataset", self.dataset]
        return args


def cells(toy_iters: int, digits_iters: int, seeds) -> list[Cell]:
    toys = [Cell("toy2d", d, m, s, toy_iters) for d, m, s in itertools.product(TOY_DATASETS, METHODS, seeds)]
    digits = [Cell("digits", "digits", m, s, digits_iters) for m, s in itertools.product(METHODS, seeds)]
    return toys + digits


def final_metrics(cell: Cell, out_root: str) -> dict | None:
    """The cell's last evaluation if the run reached its final iteration, else None."""
    path = os.path.join(out_root, cell.name, "metrics.json")
    try:
        with open(path) as f:
            history = json.load(f)
    except (OSError, ValueError):
        return None
    return history[-1] if history and history[-1].get("iteration") == cell.iters else None


def run_cell(cell: Cell, out_root: str) -> tuple[Cell, float, int]:
    """Run (or resume) one cell in a subprocess with one thread; returns (cell, seconds, exit status)."""
    if final_metrics(cell, out_root) is not None:
        return cell, 0.0, 0
    cmd = [sys.executable, "-m", "langevin_kernels.train", *cell.argv(out_root), "--threads", "1",
           "--no-progress", "--resume"]
    start = time.time()
    os.makedirs(os.path.join(out_root, cell.name), exist_ok=True)
    with open(os.path.join(out_root, cell.name, "log.txt"), "a") as log:
        status = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return cell, time.time() - start, status


def _fmt(values: list[float], decimals: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def table(rows: list[tuple[str, str, list[Cell]]], columns, out_root: str) -> list[str]:
    """Markdown rows: one per (dataset, method), mean ± std over its seeds' final metrics."""
    lines = ["| data | method | seeds | " + " | ".join(c[1] for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for dataset, method, group in rows:
        finals = [m for m in (final_metrics(c, out_root) for c in group) if m is not None]
        cols = []
        for key, _title, decimals in columns:
            vals = [float(m[key]) for m in finals if m.get(key) is not None]
            cols.append(_fmt(vals, decimals))
        lines.append(f"| {dataset} | {method} | {len(finals)} | " + " | ".join(cols) + " |")
    return lines


def write_report(all_cells: list[Cell], out_root: str, path: str, wall: dict[str, float]) -> None:
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for c in all_cells:
        groups.setdefault((c.config, c.dataset, c.method), []).append(c)
    toy_rows = [(d, m, g) for (cfg, d, m), g in groups.items() if cfg == "toy2d"]
    digit_rows = [(d, m, g) for (cfg, d, m), g in groups.items() if cfg == "digits"]
    seeds = sorted({c.seed for c in all_cells})
    toy_iters = next((c.iters for c in all_cells if c.config == "toy2d"), 0)
    digit_iters = next((c.iters for c in all_cells if c.config == "digits"), 0)
    lines = [
        "# Results: dual-MCMC teaching vs cooperative learning vs short-run EBM",
        "",
        "Generated by `python -m langevin_kernels.train.results` (train/results.py); each cell is the",
        f"final evaluation of one `langevin-train` run, mean ± std over seeds {seeds}. Every method uses",
        "the same preset (network sizes, chain lengths, learning rates) and the same iteration budget;",
        "CPU, one thread per run. Lower is better except modes covered.",
        "",
        "Metrics ([docs/metrics.md](../docs/metrics.md)): *grid KL* is KL(data ‖ model) of exp(-E/T) normalised on a",
        "200×200 grid; *MMD²* is the unbiased squared MMD between 5000 model samples and 5000 data samples",
        "(EBM chain: the method's own evaluation chain on the EBM; generator: ancestral samples);",
        "*modes* counts mixture components (of 8, 25, or 5 rings) that receive at least 10% of a uniform",
        "share of the samples lying within 3 std of them.",
        "*Fréchet* is the Fréchet distance of a digits classifier's features (trained on the training",
        "split) between 1438 model samples and the training data; *recon MSE* is the per-pixel MSE of",
        "test digits reconstructed through the encoder (and latent chain), methods with an encoder only.",
        "",
        f"## 2-D toys ({toy_iters} iterations, batch 256)",
        "",
        *table(toy_rows, TOY_COLUMNS, out_root),
        "",
        f"## Digits (scikit-learn 8×8, {digit_iters} iterations, batch 100)",
        "",
        *table(digit_rows, DIGITS_COLUMNS, out_root),
        "",
        "## Commands",
        "",
        "Each row's runs (`{seed}` over the seeds above); the sweep adds `--threads 1 --no-progress --resume`:",
        "",
        "```bash",
    ]
    for (cfg, d, m), g in groups.items():
        argv = g[0].argv("runs/results")
        argv[argv.index("--seed") + 1] = "{seed}"
        out = argv.index("--out") + 1
        argv[out] = argv[out].replace(f"-s{g[0].seed}", "-s{seed}")
        lines.append("langevin-train " + " ".join(argv))
    lines += ["```", ""]
    if wall:
        lines += [f"Run time of this sweep: {sum(wall.values()) / 60:.1f} minutes summed over cells (each cell's wall "
                  f"time; slowest {max(wall, key=wall.get)}: {max(wall.values()):.0f} s).", ""]
    reading = _kept_reading(path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + (("\n" + reading) if reading else ""))


def _kept_reading(path: str) -> str:
    """The hand-written interpretation (from a line '## Reading' to the end) of an existing report.

    The numbers are regenerated; what they mean is written by a person and survives regeneration.
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    at = text.find(READING_HEADER)
    return text[at:] if at >= 0 else ""


READING_HEADER = "## Reading"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m langevin_kernels.train.results", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/results", help="root of the runs (one folder per cell)")
    p.add_argument("--report", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    p.add_argument("--workers", type=int, default=2, help="cells run in parallel (one thread each)")
    p.add_argument("--toy-iters", type=int, default=TOY_ITERS)
    p.add_argument("--digits-iters", type=int, default=DIGITS_ITERS)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--only", choices=("toy2d", "digits"), default=None, help="run one half of the grid")
    p.add_argument("--table-only", action="store_true", help="aggregate existing runs, run nothing")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    all_cells = cells(args.toy_iters, args.digits_iters, args.seeds)
    todo = [c for c in all_cells if args.only in (None, c.config)]
    wall: dict[str, float] = {}
    if not args.table_only:
        from tqdm import tqdm
        with ThreadPoolExecutor(args.workers) as pool, tqdm(total=len(todo), desc="cells") as bar:
            for cell, seconds, status in pool.map(lambda c: run_cell(c, args.out), todo):
                bar.update(1)
                if seconds:
                    wall[cell.name] = seconds
                if status != 0:
                    tqdm.write(f"{cell.name}: exit status {status}, see {args.out}/{cell.name}/log.txt")
    write_report(all_cells, args.out, args.report, wall)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
