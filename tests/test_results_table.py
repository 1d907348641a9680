"""train/results.py: the RESULTS.md sweep picks budgets from learning curves, aggregates exactly the
runs that finished, runs in parts and resumes."""
import json
import os

import pytest

from langevin_kernels.train import results as R
from langevin_kernels.train.config import METHODS
from langevin_kernels.train.data import TOY_DATASETS


def _write_metrics(root, cell, history):
    os.makedirs(os.path.join(root, cell.name), exist_ok=True)
    with open(os.path.join(root, cell.name, "metrics.json"), "w") as f:
        json.dump(history, f)


def _curve(cell, values, key="grid_kl"):
    """A history with one evaluation per tenth of the first budget."""
    step = cell.first_budget // 10
    return [{"iteration": step * (i + 1), key: v} for i, v in enumerate(values)]


def test_one_definition_of_datasets_and_methods():
    assert R.METHODS is METHODS  # the sweep uses config's methods and data's toys, not copies
    assert set(R.SWEEP_DATASETS) - {"digits"} <= set(TOY_DATASETS)
    assert set(R.SWEEP_DATASETS) == {"8gaussians", "25gaussians", "rings", "2spirals", "checkerboard", "pinwheel",
                                     "digits"}


def test_cells_cover_the_grid_and_name_uniquely():
    cells = R.cells()
    assert len(cells) == len(R.SWEEP_DATASETS) * len(METHODS) * 3
    assert len({c.name for c in cells}) == len(cells)
    toy = next(c for c in cells if c.dataset == "rings")
    argv = toy.argv("out", 10)
    assert argv[argv.index("--dataset") + 1] == "rings" and argv[argv.index("--iters") + 1] == "10"
    digits = next(c for c in cells if c.config == "digits")
    assert "--dataset" not in digits.argv("out", 10)
    assert R.cells(["8gaussians"], ["dual"], [0]) == [R.Cell("8gaussians", "dual", 0)]  # a part of the sweep


@pytest.mark.parametrize("values, flat", [  # evaluations at 200, ..., 2000: the last fifth is 1800 and 2000
    ([2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3], False),    # 0.45 -> 0.3: -33 %
    ([2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.31, 0.305, 0.30], True),  # -3 %
    ([2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.10, 0.095, 0.09], True),  # -10 %, and only 0.01 absolute
    ([2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.3, 0.35, 0.5], True),     # rose: more budget would not help
    ([2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.30, 0.6], False),   # a new best 0.30 under an upward spike
    ([2.0, 1.0, 0.8, 0.7, 0.6, 0.3, 0.9, 0.9, 0.33, 0.31], True),     # a downward spike at 1600, no new best
    ([0.5], False)])
def test_flatness_over_the_last_fifth(values, flat):
    curve = [(200 * (i + 1), v) for i, v in enumerate(values)]
    assert R.is_flat(curve, "grid_kl") is flat


def test_budget_doubles_while_the_curve_falls(tmp_path):
    root = str(tmp_path)
    cell = R.Cell("8gaussians", "dual", 0)
    first = cell.first_budget
    assert R.status(cell, root) == ("run", first)
    _write_metrics(root, cell, _curve(cell, [2, 1, 0.8]))  # interrupted: finish the budget
    assert R.status(cell, root) == ("run", first)
    falling = [2.0, 1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3]
    _write_metrics(root, cell, _curve(cell, falling))
    assert R.status(cell, root) == ("run", 2 * first)
    assert R.final_metrics(cell, root) is None  # not converged: not in the table
    _write_metrics(root, cell, _curve(cell, falling + [0.25] * 9 + [0.249]))
    assert R.status(cell, root) == ("done", 2 * first)
    # at the largest budget a run is done even if still falling
    largest = cell.largest_budget
    _write_metrics(root, cell, _curve(cell, [1.0 / (i + 1) for i in range(largest // (first // 10))]))
    assert R.status(cell, root) == ("done", largest)


def test_finished_runs_are_skipped(tmp_path):
    root = str(tmp_path)
    done = R.Cell("8gaussians", "dual", 0)
    _write_metrics(root, done, _curve(done, [1.0] * 10))
    assert R.final_metrics(done, root)["grid_kl"] == 1.0
    assert R.run_cell(done, root) == (done, 0)  # without starting a process
    assert not os.path.exists(os.path.join(root, f"{done.name}.sweep.json"))


def test_table_reports_mean_sample_std_and_wall_time(tmp_path):
    root = str(tmp_path)
    group = [R.Cell("rings", "coop", s) for s in range(3)]
    for cell, kl in zip(group[:2] + group[2:], (1.0, 2.0, 4.0)):
        _write_metrics(root, cell, [{**e, "mmd2_ebm": 0.5, "modes_covered_ebm": 5}
                                    for e in _curve(cell, [kl] * 10)])
        with open(os.path.join(root, f"{cell.name}.sweep.json"), "w") as f:
            json.dump({"wall_seconds": 60.0 * (cell.seed + 1)}, f)
    unfinished = R.Cell("rings", "coop", 3)
    _write_metrics(root, unfinished, _curve(unfinished, [9.0]))
    lines = R.table({("rings", "coop"): group + [unfinished]}, "rings", R.TOY_COLUMNS, root)
    row = [c.strip() for c in lines[-1].strip("|").split("|")]
    # mean 7/3; sample std sqrt(((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2) = sqrt(7/3) = 1.528
    assert row[0] == "coop" and row[1] == "3/4" and row[2] == str(group[0].first_budget)
    assert row[3] == "3/3"  # flat curves
    assert row[4] == "2.333 ± 1.528"
    assert row[7] == "5.0 ± 0.0"
    assert row[6] == "n/a"  # no generator for this fake run: reported as missing, never as zero
    assert row[-1] == "2.0 min"  # mean of 1, 2 and 3 minutes


def test_table_tells_runs_stopped_at_the_largest_budget_from_converged_ones(tmp_path):
    root = str(tmp_path)
    flat, capped = R.Cell("pinwheel", "dual", 0), R.Cell("pinwheel", "dual", 1)
    largest = flat.largest_budget
    n = largest // (flat.first_budget // 10)
    _write_metrics(root, flat, _curve(flat, [1.0] * n))
    # a straight decline from 2 to 1: the last fifth improves on the best before by about 0.2 / 1.2,
    # 17 %, at any number of points (a geometric decay shrank below FLAT_ABSOLUTE at 32000)
    _write_metrics(root, capped, _curve(capped, [2 - i / n for i in range(n)]))
    assert R.status(capped, root) == ("done", largest) and not R.converged(capped, root)
    assert R.converged(flat, root)
    row = [c.strip() for c in R.table({("pinwheel", "dual"): [flat, capped]}, "pinwheel",
                                      R.TOY_COLUMNS, root)[-1].strip("|").split("|")]
    assert row[1] == "2/2" and row[3] == "1/2"


def test_report_lists_a_command_per_row_and_draws_curves(tmp_path):
    cells = R.cells(seeds=(0, 1))
    done = R.Cell("8gaussians", "dual", 0)
    _write_metrics(str(tmp_path / "runs"), done, _curve(done, [1.0] * 10))
    path = str(tmp_path / "RESULTS.md")
    R.write_report(cells, str(tmp_path / "runs"), path)
    text = open(path).read()
    commands = [line for line in text.splitlines() if line.startswith("langevin-train ")]
    assert len(commands) == len(R.SWEEP_DATASETS) * len(METHODS)
    assert all("--seed {seed}" in c for c in commands)
    assert os.path.exists(tmp_path / R.FIGURES / "8gaussians_curves.png")
    assert "(figures/8gaussians_curves.png)" in text and "rings_curves.png" not in text  # drawn where runs exist


def test_regeneration_keeps_the_hand_written_reading(tmp_path):
    cells = R.cells(seeds=(0,))
    path = str(tmp_path / "RESULTS.md")
    R.write_report(cells, str(tmp_path), path)
    with open(path, "a") as f:
        f.write("\n## Reading\n\nwritten by a person\n")
    R.write_report(cells, str(tmp_path), path)
    text = open(path).read()
    assert text.count("## Reading") == 1 and text.endswith("written by a person\n")


def test_bad_part_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        R.main(["--datasets", "moons", "--table-only"])
    assert "unknown ['moons']" in capsys.readouterr().err


def test_digits_methods_without_a_generator_are_judged_by_their_ebm_chain(tmp_path):
    # shortrun and persistent report no generator metric: judged on it, their curve was empty, never
    # flat, and every run went to the largest budget whatever it did.
    root = str(tmp_path)
    shortrun, dual = R.Cell("digits", "shortrun", 0), R.Cell("digits", "dual", 0)
    _write_metrics(root, shortrun, _curve(shortrun, [490.0] * 10, key="frechet_ebm"))
    assert R.curve_key("digits", "shortrun") == "frechet_ebm"
    assert R.status(shortrun, root) == ("done", shortrun.first_budget) and R.converged(shortrun, root)
    # a generator method is judged by its generator, whatever its EBM chain does
    _write_metrics(root, dual, [{**e, "frechet_ebm": 90.0} for e in
                                _curve(dual, [200 * 0.8 ** i for i in range(10)], key="frechet_generator")])
    assert R.curve_key("digits", "dual") == "frechet_generator"
    assert R.status(dual, root) == ("run", 2 * dual.first_budget)


def test_digits_figure_draws_every_method(tmp_path, monkeypatch):
    root = str(tmp_path / "runs")
    cells = [R.Cell("digits", m, 0) for m in ("shortrun", "dual")]
    _write_metrics(root, cells[0], _curve(cells[0], [490.0] * 10, key="frechet_ebm"))
    _write_metrics(root, cells[1], [{**e, "frechet_ebm": 90.0} for e in _curve(cells[1], [60.0] * 10,
                                                                                key="frechet_generator")])
    drawn = []
    plot_method = R._plot_method
    monkeypatch.setattr(R, "_plot_method", lambda ax, hists, key, method, color:
                        plot_method(ax, hists, key, method, color) and not drawn.append((key, method)))
    assert R.plot_curves("digits", {("digits", c.method): [c] for c in cells}, root, str(tmp_path / "d.png"))
    # both methods on the EBM-chain panel, the generator panel only for dual
    assert sorted(drawn) == [("frechet_ebm", "dual"), ("frechet_ebm", "shortrun"), ("frechet_generator", "dual")]
    assert os.path.exists(tmp_path / "d.png")


def test_a_toy_run_stopped_at_the_old_first_budget_resumes_to_the_new_one(tmp_path):
    # runs finished under an earlier, shorter first budget are not final: the sweep extends them,
    # evaluating at the same spacing as before (200 iterations on the toys).
    root = str(tmp_path)
    cell = R.Cell("8gaussians", "dual", 2)
    _write_metrics(root, cell, [{"iteration": 200 * (i + 1), "grid_kl": 0.6} for i in range(10)])  # flat at 2000
    assert R.status(cell, root) == ("run", cell.first_budget) and cell.first_budget > 2000
    argv = cell.argv(root, cell.first_budget)
    assert argv[argv.index("--eval-every") + 1] == "200"
    assert cell.first_budget < cell.largest_budget
