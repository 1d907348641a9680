"""Regenerate train/RESULTS.md: dual-MCMC teaching vs its baselines at converged budgets, 3 seeds.

    python -m langevin_kernels.train.results --out runs/results --workers 2          # everything
    python -m langevin_kernels.train.results --datasets 8gaussians --seeds 0         # one part
    python -m langevin_kernels.train.results --table-only --out runs/results         # re-aggregate

Every run is one ``langevin-train`` command in its own process with one thread. Budgets come from
learning curves: a run starts at its data set's first budget, evaluating every EVAL_EVERY
iterations; when its curve (grid KL for the toys; for digits the generator's Frechet distance, or
the EBM chain's for the methods without a generator) reached a new best in the last 20 % of
training (by more than 10 %), the run is resumed to twice the budget, up to LARGEST_BUDGET.
Finished runs (converged, or at the largest budget) are skipped, so a sweep resumes where it
stopped and runs in parts. Each run's wall time (all its processes) is kept in <out>/<run>.sweep.json.
The report shows mean +- std over seeds of each run's final evaluation, one learning-curve figure
per data set (every method on one axes) and, for digits, one sample grid per method.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from langevin_kernels._optional import pyplot

from .config import METHODS
from .data import TOY_DATASETS
from .evaluation import curve_points
from .methods import METHOD_CLASSES

#: The data sets of the sweep (a selection of data.TOY_DATASETS, plus digits) and each one's first
#: budget in iterations; a budget doubles while the learning curve is not flat, up to the largest.
#: The toys start at 4000: dual-MCMC's grid KL can sit on a plateau for 1000-2000 iterations before
#: the modes separate (8 Gaussians, seed 2: 0.58-0.63 from 400 to 2800, then 0.20-0.24 from 3400;
#: seed 0: 0.53-0.63 to 1000, 0.26 at 4000), and the patience rule cannot tell a plateau from the end.
FIRST_BUDGET = {"8gaussians": 4000, "25gaussians": 4000, "rings": 4000, "2spirals": 4000, "checkerboard": 4000,
                "pinwheel": 4000, "digits": 1000}
#: At 8000 five toy runs were still improving (25 Gaussians persistent 2 of 3 and short-run 1 of 3,
#: 2 spirals dual 1, checkerboard VAEBM-teach 1), and at 16000 one (checkerboard VAEBM-teach,
#: seed 2): the largest toy budget is 32000.
LARGEST_BUDGET = {**{d: 32000 for d in FIRST_BUDGET}, "digits": 4000}
EVAL_EVERY = {**{d: 200 for d in FIRST_BUDGET}, "digits": 100}
SWEEP_DATASETS = tuple(FIRST_BUDGET)
assert all(d in TOY_DATASETS for d in SWEEP_DATASETS if d != "digits")
SEEDS = (0, 1, 2)
FLAT_SHARE = 0.2         # the last 20 % of training ...
FLAT_TOLERANCE = 0.10    # ... improves the best value of the curve metric by at most 10 % (or by
FLAT_ABSOLUTE = {"grid_kl": 0.02, "frechet_generator": 1.0, "frechet_ebm": 1.0}  # less than these amounts)

# (metrics.json key, column title, decimals); lower is better except modes covered.
TOY_COLUMNS = (("grid_kl", "grid KL (EBM)", 3), ("mmd2_ebm", "MMD² (EBM chain)", 4),
               ("mmd2_generator", "MMD² (generator)", 4), ("modes_covered_ebm", "modes (EBM chain)", 1),
               ("realistic_ratio_ebm", "realistic (EBM chain)", 2))
DIGITS_COLUMNS = (("frechet_ebm", "Fréchet (EBM chain)", 1), ("frechet_generator", "Fréchet (generator)", 1),
                  ("recon_mse", "recon MSE", 4))
FIGURES = "figures"  # beside the report


def curve_key(dataset: str, method: str) -> str:
    """The metric whose learning curve decides convergence: grid KL on the toys; on digits the
    generator's Frechet distance, or the EBM chain's for a method without a generator."""
    if dataset != "digits":
        return "grid_kl"
    return "frechet_generator" if "generator" in METHOD_CLASSES[method].uses else "frechet_ebm"


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a data set, a method and a seed."""

    dataset: str
    method: str
    seed: int

    @property
    def config(self) -> str:
        return "digits" if self.dataset == "digits" else "toy2d"

    @property
    def name(self) -> str:
        return f"{self.config}-{self.dataset}-{self.method}-s{self.seed}"

    @property
    def first_budget(self) -> int:
        return FIRST_BUDGET[self.dataset]

    @property
    def largest_budget(self) -> int:
        return LARGEST_BUDGET[self.dataset]

    def argv(self, out_root: str, iters: int) -> list[str]:
        """Arguments of ``langevin-train`` for this cell at a budget of ``iters``."""
        args = ["--config", self.config, "--method", self.method, "--iters", str(iters), "--seed", str(self.seed),
                "--eval-every", str(EVAL_EVERY[self.dataset]), "--ckpt-every", str(EVAL_EVERY[self.dataset]),
                "--out", os.path.join(out_root, self.name)]
        if self.config == "toy2d":
            args[2:2] = ["--dataset", self.dataset]
        return args


def cells(datasets=SWEEP_DATASETS, methods=METHODS, seeds=SEEDS) -> list[Cell]:
    return [Cell(d, m, s) for d, m, s in itertools.product(datasets, methods, seeds)]


def history(cell: Cell, out_root: str) -> list[dict]:
    """The cell's evaluations so far (metrics.json), [] when it has none."""
    try:
        with open(os.path.join(out_root, cell.name, "metrics.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def is_flat(curve: list[tuple[int, float]], key: str) -> bool:
    """True when the last FLAT_SHARE of the iterations found no better value of the metric than the
    best before them, by more than FLAT_TOLERANCE (relative) or FLAT_ABSOLUTE[key] (early stopping
    with patience). Bests, not single evaluations: a toy's grid KL moves by 0.1-0.4 between
    evaluations, so comparing one evaluation with another stopped runs on an upward spike and
    ran others on after a downward one. A curve that rose counts as flat (more budget would not help)."""
    if len(curve) < 2:
        return False
    end_iter = curve[-1][0]
    before = [v for i, v in curve if i <= (1 - FLAT_SHARE) * end_iter]
    last = [v for i, v in curve if i > (1 - FLAT_SHARE) * end_iter]
    if not before or not all(math.isfinite(v) for v in before + last):
        return False
    best_before, best_last = min(before), min(last)
    return best_before - best_last <= max(FLAT_TOLERANCE * abs(best_before), FLAT_ABSOLUTE.get(key, 0.0))


def status(cell: Cell, out_root: str) -> tuple[str, int]:
    """("done", budget) when the run finished at a budget where its curve is flat or the largest
    budget; otherwise ("run", the budget to train to)."""
    budget, largest = cell.first_budget, cell.largest_budget
    hist = history(cell, out_root)
    if not hist:
        return "run", budget
    last = int(hist[-1].get("iteration", 0))
    while budget < last:
        budget *= 2
    if last < budget:
        return "run", budget  # an interrupted run: finish its budget
    if _flat(cell, hist) or budget >= largest:
        return "done", budget
    return "run", budget * 2


def converged(cell: Cell, out_root: str) -> bool:
    """True when the cell's learning curve is flat at its last evaluation (is_flat); a run stopped
    at the largest budget while still improving is done but not converged."""
    return _flat(cell, history(cell, out_root))


def _flat(cell: Cell, hist: list[dict]) -> bool:
    key = curve_key(cell.dataset, cell.method)
    return is_flat([(int(e["iteration"]), float(e[key])) for e in hist if isinstance(e.get(key), (int, float))], key)


def final_metrics(cell: Cell, out_root: str) -> dict | None:
    """The cell's last evaluation when the cell is done, else None."""
    state, _ = status(cell, out_root)
    return history(cell, out_root)[-1] if state == "done" else None


def _sweep_file(cell: Cell, out_root: str) -> str:
    """<out>/<run>.sweep.json: outside the run directory, which holds only what langevin-train writes."""
    return os.path.join(out_root, f"{cell.name}.sweep.json")


def wall_seconds(cell: Cell, out_root: str) -> float | None:
    try:
        with open(_sweep_file(cell, out_root)) as f:
            return float(json.load(f)["wall_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_cell(cell: Cell, out_root: str) -> tuple[Cell, int]:
    """Train the cell until it is done (doubling its budget while the curve falls); returns
    (cell, exit status of the last process). Wall time accumulates in <out>/<run>.sweep.json."""
    folder = os.path.join(out_root, cell.name)
    os.makedirs(out_root, exist_ok=True)
    code = 0
    while True:
        state, budget = status(cell, out_root)
        if state == "done":
            return cell, 0
        if os.path.exists(os.path.join(folder, "checkpoint.pt")):
            resume = ["--resume"]
        else:  # a run killed before its first checkpoint starts over
            resume = ["--overwrite"] if os.path.isdir(folder) and os.listdir(folder) else []
        cmd = [sys.executable, "-m", "langevin_kernels.train", *cell.argv(out_root, budget), "--threads", "1",
               "--no-progress", *resume]
        start = time.time()
        with open(os.path.join(out_root, f"{cell.name}.log"), "a") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        total = (wall_seconds(cell, out_root) or 0.0) + time.time() - start
        with open(_sweep_file(cell, out_root), "w") as f:
            json.dump({"wall_seconds": round(total, 1), "budget": budget, "exit_status": code}, f)
        if code != 0:
            return cell, code


def _fmt(values: list[float], decimals: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:  # one seed: no spread to report
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def table(groups: dict[tuple[str, str], list[Cell]], dataset: str, columns, out_root: str) -> list[str]:
    """Markdown rows of one data set: one per method, mean ± std over its finished seeds."""
    lines = ["| method | seeds done | budget (iters) | converged | " + " | ".join(c[1] for c in columns)
             + " | wall time per run |", "|---|---|---|---|" + "---|" * (len(columns) + 1)]
    for (d, method), group in groups.items():
        if d != dataset:
            continue
        done = [c for c in group if final_metrics(c, out_root) is not None]
        finals = [final_metrics(c, out_root) for c in done]
        budgets = sorted({status(c, out_root)[1] for c in done})
        cols = [_fmt([float(m[key]) for m in finals if isinstance(m.get(key), (int, float))], dec)
                for key, _title, dec in columns]
        walls = [w for w in (wall_seconds(c, out_root) for c in done) if w is not None]
        wall = f"{statistics.fmean(walls) / 60:.1f} min" if walls else "n/a"
        flat = f"{sum(converged(c, out_root) for c in done)}/{len(done)}" if done else "n/a"
        lines.append(f"| {method} | {len(done)}/{len(group)} | {', '.join(map(str, budgets)) or 'n/a'} | {flat} | "
                     + " | ".join(cols) + f" | {wall} |")
    return lines


def plot_curves(dataset: str, groups: dict[tuple[str, str], list[Cell]], out_root: str, path: str) -> bool:
    """One figure per data set, every method on the same axes (each seed a thin line, the seed mean
    where seeds share iterations a thick one): grid KL for a toy; for digits two panels, the EBM
    chain's Frechet distance (every method) and the generator's (the methods that have one)."""
    plt = pyplot("the RESULTS.md figures")

    keys = ["frechet_ebm", "frechet_generator"] if dataset == "digits" else ["grid_kl"]
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4), squeeze=False)
    drawn = False
    for ax, key in zip(axes[0], keys):
        for i, ((d, method), group) in enumerate(groups.items()):
            if d == dataset:
                drawn |= _plot_method(ax, [history(c, out_root) for c in group], key, method, f"C{i % 10}")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(CURVE_LABELS[key])
        ax.set_title(f"{dataset}: learning curves")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if drawn:
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


CURVE_LABELS = {"grid_kl": "grid KL(data || exp(-E/T))", "frechet_ebm": "Fréchet (EBM chain)",
                "frechet_generator": "Fréchet (generator)"}


def _plot_method(ax, histories: list[list[dict]], key: str, method: str, color: str) -> bool:
    """One method's seeds on ax; False when none of them recorded the metric."""
    curves = []
    for hist in histories:
        pts = curve_points(hist, key)   # grid KL and Frechet are positive
        if pts:
            ax.plot(*zip(*pts), color=color, lw=0.7, alpha=0.5)
            curves.append(dict(pts))
    if not curves:
        return False
    shared = sorted(set.intersection(*(set(c) for c in curves)))
    ax.plot(shared, [statistics.fmean(c[i] for c in curves) for i in shared], color=color, lw=2,
            label=f"{method} ({len(curves)} seeds)")
    return True


def write_report(all_cells: list[Cell], out_root: str, path: str) -> None:
    """RESULTS.md with its figures (in FIGURES beside it); a person's '## Reading' section is kept."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in all_cells:
        groups.setdefault((c.dataset, c.method), []).append(c)
    figures = os.path.join(os.path.dirname(os.path.abspath(path)), FIGURES)
    os.makedirs(figures, exist_ok=True)
    seeds = sorted({c.seed for c in all_cells})
    lines = [
        "# Results: dual-MCMC teaching vs its baselines",
        "",
        *textwrap.wrap(
            "Generated by `python -m langevin_kernels.train.results` (train/results.py). Each row is the "
            f"final evaluation of `langevin-train` runs, mean ± std over the seeds done (of {seeds}); every "
            "method uses the same preset (network sizes, chain lengths, learning rates); CPU, one thread per "
            "run. Budgets come from learning curves: a run whose curve metric (grid KL; digits: the "
            "generator's Fréchet, the EBM chain's for methods without a generator) reached a new best in its "
            f"last {FLAT_SHARE:.0%} (better than the best before by more than {FLAT_TOLERANCE:.0%}) was "
            f"resumed to twice its budget (first budgets: toys {FIRST_BUDGET['8gaussians']}, digits "
            f"{FIRST_BUDGET['digits']}; largest: {LARGEST_BUDGET['8gaussians']} and {LARGEST_BUDGET['digits']}); "
            "*budget* lists the final budgets of a row's runs, *converged* how many of its finished runs "
            "ended on a flat curve (the others stopped at the largest budget still improving: their numbers "
            "are not final). *Wall time* is per run (training and evaluations, on the shared 2-core machine: "
            "other work ran beside it). Lower is better except modes and realistic ratio. Rows with fewer "
            "seeds done than planned are partial; `n/a`: not run.", 100),
        "",
        *textwrap.wrap(
            "Metrics ([docs/metrics.md](../docs/metrics.md)): *grid KL* is KL(data ‖ model) of exp(-E/T) "
            "normalised on a 200×200 grid; *MMD²* the unbiased squared MMD between model and data samples "
            "(EBM chain: the method's evaluation chain; generator: ancestral samples); *modes* the mixture "
            "components covered; *realistic* the share of EBM-chain samples within 3 std of a component. "
            "*Fréchet* is the Fréchet distance of a digits classifier's features between model samples and "
            "the training data; *recon MSE* the per-pixel error of test digits through the encoder.", 100),
        "",
    ]
    for dataset in dict.fromkeys(c.dataset for c in all_cells):
        columns = DIGITS_COLUMNS if dataset == "digits" else TOY_COLUMNS
        lines += [f"## {dataset}", "", *table(groups, dataset, columns, out_root), ""]
        curve = os.path.join(figures, f"{dataset}_curves.png")
        if plot_curves(dataset, groups, out_root, curve):
            lines += [f"![{dataset} learning curves]({FIGURES}/{dataset}_curves.png)", ""]
        if dataset == "digits":
            lines += _digits_grids(groups, out_root, figures)
    lines += ["## Commands", "",
              "One run (the sweep adds `--threads 1 --no-progress --resume` and raises `--iters` while the "
              "curve falls):", "", "```bash"]
    for group in groups.values():
        argv = group[0].argv("runs/results", group[0].first_budget)
        argv[argv.index("--seed") + 1] = "{seed}"
        out = argv.index("--out") + 1
        argv[out] = argv[out].replace(f"-s{group[0].seed}", "-s{seed}")
        lines.append("langevin-train " + " ".join(argv))
    lines += ["```", ""]
    reading = _kept_reading(path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + (("\n" + reading) if reading else ""))


def _digits_grids(groups, out_root: str, figures: str) -> list[str]:
    """Copy each digits method's final sample grid (its lowest finished seed) next to the report."""
    lines = []
    for (dataset, method), group in groups.items():
        done = [c for c in group if dataset == "digits" and final_metrics(c, out_root) is not None]
        if not done:
            continue
        cell = min(done, key=lambda c: c.seed)
        source = os.path.join(out_root, cell.name, "samples.png")
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(figures, f"digits_samples_{method}.png"))
            lines += [f"![digits samples, {method}, seed {cell.seed}]({FIGURES}/digits_samples_{method}.png)", ""]
    return lines


READING_HEADER = "## Reading"


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


def _names(kind: str, allowed):
    def parse(text: str) -> list[str]:
        values = [v for v in text.split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"--{kind} {text!r}: unknown {bad}; allowed: {', '.join(allowed)}")
        return values
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m langevin_kernels.train.results", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/results", help="root of the runs (one folder per run)")
    p.add_argument("--report", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--datasets", type=_names("datasets", SWEEP_DATASETS), default=list(SWEEP_DATASETS),
                   help=f"comma-separated (default: all of {', '.join(SWEEP_DATASETS)})")
    p.add_argument("--methods", type=_names("methods", METHODS), default=list(METHODS),
                   help=f"comma-separated (default: all of {', '.join(METHODS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--table-only", action="store_true", help="aggregate existing runs, run nothing")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    todo = cells(args.datasets, args.methods, args.seeds)
    if not args.table_only:
        with ThreadPoolExecutor(args.workers) as pool:
            for cell, code in pool.map(lambda c: run_cell(c, args.out), todo):
                state, budget = status(cell, args.out)
                print(f"{cell.name}: {state} at {budget} iterations" + (f", exit status {code}, see "
                      f"{args.out}/{cell.name}.log" if code else ""), flush=True)
    write_report(cells(seeds=sorted(set(SEEDS) | set(args.seeds))), args.out, args.report)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
