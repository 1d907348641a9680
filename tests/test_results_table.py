"""train/results.py: the RESULTS.md sweep aggregates exactly the runs that finished."""
import json
import os

from langevin_kernels.train import results as R


def _write_metrics(root, cell, history):
    os.makedirs(os.path.join(root, cell.name), exist_ok=True)
    with open(os.path.join(root, cell.name, "metrics.json"), "w") as f:
        json.dump(history, f)


def test_cells_cover_the_grid_and_name_uniquely():
    cells = R.cells(10, 5, (0, 1, 2))
    assert len(cells) == (len(R.TOY_DATASETS) + 1) * len(R.METHODS) * 3
    assert len({c.name for c in cells}) == len(cells)
    toy = next(c for c in cells if c.config == "toy2d" and c.dataset == "rings")
    argv = toy.argv("out")
    assert argv[argv.index("--dataset") + 1] == "rings" and argv[argv.index("--iters") + 1] == "10"
    digits = next(c for c in cells if c.config == "digits")
    assert "--dataset" not in digits.argv("out")


def test_unfinished_runs_are_not_counted(tmp_path):
    root = str(tmp_path)
    done, partial = R.Cell("toy2d", "8gaussians", "dual", 0, 10), R.Cell("toy2d", "8gaussians", "dual", 1, 10)
    _write_metrics(root, done, [{"iteration": 5, "grid_kl": 9.0}, {"iteration": 10, "grid_kl": 1.0}])
    _write_metrics(root, partial, [{"iteration": 5, "grid_kl": 7.0}])
    assert R.final_metrics(done, root)["grid_kl"] == 1.0
    assert R.final_metrics(partial, root) is None
    # a finished cell is skipped without starting a process
    assert R.run_cell(done, root) == (done, 0.0, 0)


def test_table_reports_mean_and_sample_std(tmp_path):
    root = str(tmp_path)
    group = [R.Cell("toy2d", "rings", "coop", s, 4) for s in range(3)]
    for cell, kl in zip(group, (1.0, 2.0, 4.0)):
        _write_metrics(root, cell, [{"iteration": 4, "grid_kl": kl, "mmd2_ebm": 0.5, "modes_covered_ebm": 5}])
    lines = R.table([("rings", "coop", group)], R.TOY_COLUMNS, root)
    row = lines[-1].split(" | ")
    # mean 7/3; sample std sqrt(((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2) = sqrt(7/3) = 1.528
    assert row[2] == "3" and row[3] == "2.333 ± 1.528"
    assert row[6].rstrip(" |") == "5.0 ± 0.0"
    assert row[5] == "n/a"  # no generator for this fake run: reported as missing, never as zero


def test_report_lists_a_command_per_row(tmp_path):
    cells = R.cells(10, 5, (0, 1))
    path = str(tmp_path / "RESULTS.md")
    R.write_report(cells, str(tmp_path), path, {})
    text = open(path).read()
    commands = [l for l in text.splitlines() if l.startswith("langevin-train ")]
    assert len(commands) == (len(R.TOY_DATASETS) + 1) * len(R.METHODS)
    assert all("--seed {seed}" in c for c in commands)


def test_regeneration_keeps_the_hand_written_reading(tmp_path):
    cells = R.cells(10, 5, (0,))
    path = str(tmp_path / "RESULTS.md")
    R.write_report(cells, str(tmp_path), path, {})
    with open(path, "a") as f:
        f.write("\n## Reading\n\nwritten by a person\n")
    R.write_report(cells, str(tmp_path), path, {"toy2d-rings-dual-s0": 12.0})
    text = open(path).read()
    assert text.count("## Reading") == 1 and text.endswith("written by a person\n")
    assert "slowest toy2d-rings-dual-s0: 12 s" in text
