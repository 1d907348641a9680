"""Training configurations: unknown keys and bad values are refused before training, naming the
field, the value and what is allowed (in Python, in config.json and on the command line)."""
import json

import pytest
import torch

from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.config import TrainConfig, preset
from langevin_kernels.train.trainer import Trainer


def _tiny(**over):
    base = dict(method="dual", iters=2, batch_size=16, eval_every=1000, ckpt_every=1000, n_eval=64)
    base.update(over)
    return preset("toy2d", **base)


def test_unknown_config_keys():
    with pytest.raises(ValueError, match=r"unknown config keys \['step_size'\]"):
        TrainConfig.from_dict({**_tiny().to_dict(), "step_size": 0.1})
    with pytest.raises(ValueError, match=r"unknown config keys \['itres'\]"):
        preset("toy2d", itres=10)
    cfg = _tiny(x_clamp=(-3.0, 3.0))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # config.json round trip


@pytest.mark.parametrize("key, value, allowed", [
    ("iters", 0, ">= 1"), ("iters", -5, ">= 1"), ("batch_size", 0, ">= 1"), ("eval_every", 0, ">= 1"),
    ("ckpt_every", -1, ">= 1"), ("n_eval", 1, ">= 2"), ("x_steps", 0, ">= 1"), ("x_step", 0.0, "> 0"),
    ("x_step", -0.1, "> 0"), ("x_noise", -0.1, "> 0"), ("x_noise", float("nan"), "> 0"), ("z_step", 0.0, "> 0"),
    ("z_noise", -1.0, "> 0"), ("sr_step", 0.0, "> 0"), ("sr_noise", 0.0, "> 0"), ("lr_energy", -1e-3, "> 0"),
    ("lr_generator", float("inf"), "> 0"), ("sigma", 0.0, "> 0"), ("seed", -1, "0 <= seed"),
    ("lr_decay", 1.5, "0 < lr_decay <= 1"), ("reinit_prob", 2.0, "0 <= reinit_prob <= 1"),
    ("teach_weight", -1.0, ">= 0"), ("data_noise", -0.1, ">= 0"), ("max_energy_gap", -1.0, ">= 0"),
    ("betas", (1.0, 0.9), "two numbers in"), ("x_clamp", (1.0, -1.0), "low < high"),
    ("init_low", 5.0, "init_low < init_high"), ("iters", 2.5, "an integer"), ("iters", "10", "an integer"),
    ("x_step", "0.1", "a number"), ("dataset", "moons", "'8gaussians'"), ("device", "gpu", "'cuda:N'"),
    ("image_size", 32, "0"), ("eval_x_steps", -1, ">= 0"), ("width_mult", 0.0, "> 0")])
def test_invalid_values_name_field_value_and_range(key, value, allowed):
    with pytest.raises(ValueError) as info:
        preset("toy2d", **{key: value})
    msg = str(info.value)
    assert msg.startswith(f"{key}={value!r}") or msg.startswith(f"init_low={value!r}"), msg
    assert "allowed" in msg and allowed in msg
    with pytest.raises(ValueError, match=key):  # the same check guards config.json / from_dict
        TrainConfig.from_dict({**_tiny().to_dict(), key: value})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="buffer_size=8 is smaller than batch_size=16"):
        preset("toy2d", method="persistent", batch_size=16, buffer_size=8)
    preset("toy2d", method="dual", batch_size=16, buffer_size=8)  # only the persistent method uses the buffer
    with pytest.raises(ValueError, match="eval_x_step=0.0 is out of range"):
        preset("toy2d", eval_x_steps=10)  # an evaluation chain of its own needs its step and noise
    with pytest.raises(ValueError, match=r"image_size=48 is not allowed with config='cifar10'; allowed: 32, 64"):
        preset("cifar10", image_size=48)
    assert preset("celeba64", image_size=32, x_step=0.2).x_step == 0.2  # positional preset values overridable
    with pytest.raises(ValueError, match="config='imagenet' is unknown"):
        preset("imagenet")


def test_capture_graph_needs_cuda_and_captures_the_training_chains_only(tmp_path, capsys):
    with pytest.raises(ValueError, match="capture_graph=True needs a CUDA device.*device='cpu'"):
        preset("toy2d", capture_graph=True)
    assert cli_main(["--config", "toy2d", "--out", str(tmp_path / "run"), "--no-progress", "--capture-graph"]) == 2
    assert "capture_graph=True needs a CUDA device" in capsys.readouterr().err
    from langevin_kernels.train.methods import build_chain
    cfg = preset("toy2d", device="cuda", capture_graph=True)   # a config only: nothing runs on the device
    energy = torch.nn.Linear(2, 1)
    chain = lambda training: build_chain(cfg, "data", energy, n_steps=3, s=0.1, n=0.1, seed=0, training=training)
    assert chain(True).capture_graph and not chain(False).capture_graph   # evaluation chains run once
    assert not build_chain(preset("toy2d"), "data", energy, n_steps=3, s=0.1, n=0.1, seed=0,
                           training=True).capture_graph


def test_every_preset_and_method_validates():
    from langevin_kernels.train.config import METHODS, PRESETS
    for name in PRESETS:
        for method in METHODS:
            assert preset(name, method=method).validate().method == method


@pytest.mark.parametrize("flag, value, message", [
    ("--iters", "0", "iters=0 is out of range; allowed: an integer >= 1"),
    ("--batch-size", "-4", "batch_size=-4 is out of range"), ("--eval-every", "0", "eval_every=0"),
    ("--ckpt-every", "0", "ckpt_every=0"), ("--n-eval", "1", "n_eval=1"), ("--seed", "-2", "seed=-2"),
    ("--device", "tpu", "device='tpu' is not a device")])
def test_cli_rejects_bad_numbers_before_training(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    assert cli_main(["--config", "toy2d", "--out", str(out), "--no-progress", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"langevin-train: error: {message}" in err and "Traceback" not in err
    assert not out.exists()  # rejected before the trainer made anything


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_device_without_cuda(tmp_path):
    with pytest.raises(ValueError, match=r"device='cuda' but torch.cuda.is_available\(\) is False"):
        Trainer(_tiny(device="cuda"), str(tmp_path), progress=False)
