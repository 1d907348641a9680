"""train/demo.py (`make demo`): the run it writes, on a two-iteration budget."""
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
