"""train/demo.py (`make demo`): the run it writes (two iterations), and the whole demo against its targets."""
import json

import pytest

from langevin_kernels.train import demo


@pytest.mark.slow  # two evaluations at the demo's n_eval: about 40 s on the shared machine
@pytest.mark.usefixtures("one_thread")
def test_demo_writes_density_curve_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--iters", "2", "--threads", "1", "--no-progress"]) == 0
    for name in ("density.png", "learning_curve.png", "metrics.json", "losses.csv", "config.json", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "metrics.json").read_text())
    assert [e["iteration"] for e in history] == [1, 2]  # one learning-curve point per evaluation
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in demo.DEMO_SETTINGS} == demo.DEMO_SETTINGS
    printed = capsys.readouterr().out
    assert '"grid_kl"' in printed and '"wall_seconds"' in printed and "learning_curve.png" in printed


@pytest.mark.slow  # the whole demo, 5000 iterations: about 2 min on one thread
@pytest.mark.usefixtures("one_thread")
def test_demo_meets_what_the_readme_promises(tmp_path):
    """The README's demo targets, on the demo's own settings and seed: density close to the data
    (grid KL <= 0.30, where a ring-shaped density measures about 0.45), every mode reached by both
    kinds of sample, and at least 90 % of each kind within 3 std of a mode."""
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--threads", "1", "--no-progress"]) == 0
    final = json.loads((out / "metrics.json").read_text())[-1]
    assert final["iteration"] == demo.DEMO_ITERS
    assert final["grid_kl"] <= 0.30, final
    for kind in ("ebm", "generator"):
        assert final[f"modes_covered_{kind}"] == final[f"modes_total_{kind}"] == 8, (kind, final)
        assert final[f"realistic_ratio_{kind}"] >= 0.9, (kind, final)
