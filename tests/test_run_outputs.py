"""What a run leaves behind: losses.csv per iteration, provenance in config.json, --help with defaults,
one line per evaluation under --no-progress, labelled digits panels, image sample grids and FID with
a locally supplied feature network."""
import csv
import json
import math
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import langevin_kernels as lk
from langevin_kernels.train.cli import build_parser, main as cli_main
from langevin_kernels.train.config import TrainConfig, preset
from langevin_kernels.train.evaluation import SAMPLE_TITLES
from langevin_kernels.train.outputs import LOSSES_CSV
from langevin_kernels.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--config", "toy2d", "--method", "dual", "--batch-size", "16", "--n-eval", "64", "--no-progress"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_losses_csv_one_row_per_iteration(tmp_path):
    out = tmp_path / "run"
    assert cli_main(RUN + ["--iters", "4", "--out", str(out)]) == 0
    rows = _rows(out / LOSSES_CSV)
    assert list(rows[0]) == ["iteration", "loss_E", "E_data", "E_neg", "loss_G", "loss_I", "lr_energy",
                             "lr_generator", "lr_encoder", "seconds"]
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    final = json.loads((out / "metrics.json").read_text())[-1]["losses"]
    assert {k: float(rows[-1][k]) for k in final} == final  # exact: the CSV holds repr(float)
    assert all(float(r["lr_energy"]) == 1e-3 for r in rows)
    assert all(0 < float(r["seconds"]) < 60 for r in rows)


def test_losses_csv_after_resume_has_each_iteration_once(tmp_path):
    """A run killed between checkpoints left rows the resumed run redoes: they are replaced, and the
    result equals the uninterrupted run's rows (seconds aside)."""
    cfg = dict(iters=6, batch_size=16, n_eval=64, x_steps=2, z_steps=2, eval_every=100, seed=1)
    with lk.use_backend("eager"):
        Trainer(preset("toy2d", **cfg), str(tmp_path / "full"), progress=False).train()
        Trainer(preset("toy2d", **{**cfg, "iters": 3}), str(tmp_path / "split"), progress=False).train()
        log = tmp_path / "split" / LOSSES_CSV
        with open(log, "a") as f:  # what a kill after iteration 5 (checkpoint at 3) leaves behind
            f.write("4,9,9,9,9,9,9,9,9,9\n5,9,9,9,9,9,9,9,9,9\n")
        resumed = Trainer(preset("toy2d", **cfg), str(tmp_path / "split"), progress=False)
        assert resumed.resume() and resumed.iteration == 3
        resumed.train()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(log)]
    full = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "full" / LOSSES_CSV)]
    assert [r["iteration"] for r in strip] == ["1", "2", "3", "4", "5", "6"]
    assert strip == full


def test_config_json_records_version_and_git_commit(tmp_path):
    out = tmp_path / "run"
    assert cli_main(RUN + ["--iters", "1", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    run = saved["run"]
    assert run["langevin_kernels_version"] == lk.__version__ and run["torch_version"] == torch.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(pytest.importorskip("pathlib").Path(
        lk.__file__).parents[1]), capture_output=True, text=True).stdout.strip()
    assert run["git_commit"] == (head or None) and isinstance(run["git_dirty"], (bool, type(None)))
    assert TrainConfig.from_dict(saved).iters == 1  # the provenance does not get in the way of reloading


def test_help_has_a_line_and_a_default_per_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        assert action.help, action.option_strings
        assert action.option_strings[0] in text
        if action.nargs != 0:  # options taking a value say what they default to (flags are off)
            assert "default" in action.help or action.required, action.option_strings
    assert "default by preset: toy2d 2000, digits 2000, cifar10 200000, celeba64 200000" in " ".join(text.split())


def test_no_progress_prints_one_line_per_evaluation(tmp_path, capsys):
    assert cli_main(RUN + ["--iters", "4", "--eval-every", "2", "--out", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iteration ")]
    assert [line.split(":")[0] for line in lines] == ["iteration 2/4", "iteration 4/4"]
    assert all("grid_kl" in line and "mmd2_ebm" in line and "loss_E" in line for line in lines)


def test_digits_panels_are_titled_and_labelled(tmp_path, monkeypatch):
    import matplotlib.figure

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    cfg = preset("digits", method="dual", iters=1, batch_size=16, n_eval=64, x_steps=2, z_steps=2)
    Trainer(cfg, str(tmp_path), progress=False).train()
    fig = next(f for f in figures if f._suptitle and "iteration" in f._suptitle.get_text())  # not the learning curve
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split("\n")[0] for t in titles] == [SAMPLE_TITLES[k] for k in ("generator", "ebm", "reconstruction")]
    assert "Frechet distance" in titles[0] and "MSE per pixel" in titles[2]
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["test digits", "reconstructed"]
    assert fig._suptitle.get_text() == "digits, method dual, iteration 1"


def test_learning_curve_keeps_negative_mmd_estimates(tmp_path, monkeypatch):
    """The unbiased MMD^2 is negative when samples agree within its noise; a log axis dropped those
    evaluations (the demo's EBM-chain curve ended at iteration 2500 of 6000)."""
    import matplotlib.figure

    from langevin_kernels.train.evaluation import plot_learning_curve

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    history = [{"iteration": 500 * (i + 1), "grid_kl": kl, "mmd2_ebm": mmd, "mmd2_generator": 1e-3}
               for i, (kl, mmd) in enumerate([(0.4, 2e-3), (0.2, -1.5e-4), (0.1, float("nan")), (0.09, 4e-5)])]
    assert plot_learning_curve(history, "toy2d", str(tmp_path / "curve.png"))
    kl_axes, mmd_axes = figures[0].axes
    assert kl_axes.get_yscale() == "log"   # grid KL is always positive
    assert mmd_axes.get_yscale() == "symlog"
    ebm_line = mmd_axes.get_lines()[0]
    assert list(ebm_line.get_xdata()) == [500, 1000, 2000]          # only the NaN evaluation is left out
    assert list(ebm_line.get_ydata()) == [2e-3, -1.5e-4, 4e-5]


# ----------------------------------------------------------------------------- image configs

def _image_root(tmp_path, n=6):
    root = tmp_path / "images"
    for i in range(n):
        (root / "a").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "a" / f"{i}.png")
    return root


class _Features(torch.nn.Module):
    """A stand-in feature network (what --fid-weights would hold is an Inception one): per-channel
    means and standard deviations on a 4 x 4 grid, 96 features."""

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        spread = torch.nn.functional.adaptive_avg_pool2d(x * x, 4).flatten(1)
        return torch.cat([pooled, spread], 1)


def _image_cfg(**over):
    base = dict(dataset="imagefolder", iters=2, batch_size=2, x_steps=1, z_steps=1, eval_every=1, ckpt_every=10,
                n_eval=6, eval_x_steps=1)
    base.update(over)
    return preset("cifar10", **base)


@pytest.mark.slow
def test_image_run_saves_a_sample_grid_each_evaluation_and_says_why_no_fid(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_image_cfg(), str(out), data_root=str(_image_root(tmp_path)), progress=False)
    history = trainer.train()
    assert (out / "samples_0000001.png").exists() and (out / "samples_0000002.png").exists()
    assert history[-1]["fid"] is None and "no --fid-weights" in history[-1]["fid_skipped"]


def _save_features(path, how):
    import warnings

    if how == "export":
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(_Features(), (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(_Features()), str(path))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["export", "torchscript"])
def test_fid_with_a_local_feature_network(tmp_path, how):
    weights = tmp_path / "features.pt2"
    _save_features(weights, how)
    root = _image_root(tmp_path)
    trainer = Trainer(_image_cfg(iters=1), str(tmp_path / "run"), data_root=str(root), progress=False,
                      fid_weights=str(weights))
    entry = trainer.train()[-1]
    assert entry["fid_n"] == 6
    assert math.isfinite(entry["fid_generator"]) and entry["fid_generator"] > 0
    assert math.isfinite(entry["fid_ebm"]) and "fid_skipped" not in entry
    # Real against real in the same features is 0 (up to the float64 matrix square root).
    real = trainer.evaluator._real()
    assert abs(trainer.evaluator.fid.fid(real, real)) < 1e-6


def test_unusable_fid_weights_exit_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)  # a state dict, not a network
    code = cli_main(["--config", "cifar10", "--dataset", "imagefolder", "--data-root", str(_image_root(tmp_path)),
                     "--fid-weights", str(bad), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"--fid-weights={str(bad)!r} cannot be loaded as an exported program or a TorchScript" in err
    assert "Traceback" not in err
    assert cli_main(RUN + ["--iters", "1", "--fid-weights", str(bad), "--out", str(tmp_path / "toy")]) == 2
    assert "--fid-weights is for image configs" in capsys.readouterr().err
