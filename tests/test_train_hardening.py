"""Hardening of the training layer: kill safety of checkpoints, unusable checkpoints, bad
configurations and data rejected before training, bit-identical determinism.

Subprocesses run with one thread (the CPU is shared); the kill moments come from the test hook
LANGEVIN_TEST_KILL_SAVE="N:STAGE" of train/trainer.py, which SIGKILLs the N-th checkpoint write at
STAGE, so each moment is reproducible.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import langevin_kernels as lk
from langevin_kernels.dispatch import unavailable_reason
from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.config import TrainConfig, preset
from langevin_kernels.train.data import DataRootError, ImageDataError, ImageFolderDataset
from langevin_kernels.train.trainer import (CHECKPOINT, KILL_HOOK_ENV, CheckpointError, Trainer, atomic_save,
                                            load_checkpoint, remove_stale_temps)

BACKEND = "cpp" if unavailable_reason("cpp", "cpu") is None else "eager"


pytestmark = pytest.mark.usefixtures("one_thread")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != KILL_HOOK_ENV}
    env.update(OMP_NUM_THREADS="1", LANGEVIN_BACKEND=BACKEND, **extra)
    return env


def _temps(folder):
    return sorted(p for p in os.listdir(folder) if ".tmp" in p)


def _params(state):
    return {f"{m}.{k}": v for m, sd in state["method"]["models"].items() for k, v in sd.items()}


def _metrics(folder):
    history = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in entry.items() if k != "eval_seconds"} for entry in history]


# ----------------------------------------------------------------------------- 1. kill safety

KILL_ITERS, KILL_CKPT = 16, 2  # 8 checkpoint writes; evaluations at 10 and 16
KILL_ARGS = ["--config", "toy2d", "--method", "dual", "--iters", str(KILL_ITERS), "--ckpt-every", str(KILL_CKPT),
             "--eval-every", "10", "--n-eval", "64", "--batch-size", "32", "--seed", "3", "--threads", "1",
             "--no-progress"]
KILL_STAGES = ("partial", "written", "replaced")


@pytest.mark.slow
def test_kill_during_checkpoint_write_then_resume(tmp_path):
    """SIGKILL inside a seeded random checkpoint write, at each stage of the write: the checkpoint on
    disk is the previous or the new complete one; --resume removes the stale temp file and finishes
    with exactly the uninterrupted run's parameters, chain offsets and metrics."""
    n_saves = KILL_ITERS // KILL_CKPT
    rng = random.Random(20240601)
    kills = {stage: rng.randint(1, n_saves - 1) for stage in KILL_STAGES}  # not the last: work is left
    procs = {}
    for stage, nth in kills.items():  # the killed runs in parallel subprocesses ...
        cmd = [sys.executable, "-m", "langevin_kernels.train", *KILL_ARGS, "--out", str(tmp_path / stage)]
        procs[stage] = subprocess.Popen(cmd, env=_env(**{KILL_HOOK_ENV: f"{nth}:{stage}"}),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ref = tmp_path / "uninterrupted"  # ... while this process runs the reference
    with lk.use_backend(BACKEND):
        assert cli_main(KILL_ARGS + ["--out", str(ref)]) == 0
    ref_state = load_checkpoint(str(ref / CHECKPOINT))
    assert ref_state["iteration"] == KILL_ITERS and [e["iteration"] for e in _metrics(ref)] == [10, KILL_ITERS]

    for stage, proc in procs.items():
        nth, out = kills[stage], tmp_path / stage
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (stage, stderr[-2000:])
        # What the kill left: the checkpoint is the previous or the new complete one, never torn.
        temps = _temps(out)
        expect_iteration = nth * KILL_CKPT if stage == "replaced" else (nth - 1) * KILL_CKPT
        if expect_iteration:
            assert load_checkpoint(str(out / CHECKPOINT))["iteration"] == expect_iteration, stage
        else:
            assert not (out / CHECKPOINT).exists()
        if stage == "replaced":
            assert temps == []
        else:
            assert temps == [f"{CHECKPOINT}.tmp{proc.pid}"]
            if stage == "partial":  # the torn temp file is garbage to torch.load ...
                with pytest.raises(CheckpointError, match="unreadable"):
                    load_checkpoint(str(out / temps[0]))
            else:
                assert load_checkpoint(str(out / temps[0]))["iteration"] == nth * KILL_CKPT

        # ... and never read: resume (in this process) removes it and finishes the run.
        with lk.use_backend(BACKEND):
            assert cli_main(KILL_ARGS + ["--out", str(out), "--resume"]) == 0
        assert _temps(out) == []
        final = load_checkpoint(str(out / CHECKPOINT))
        assert final["iteration"] == KILL_ITERS
        a, b = _params(final), _params(ref_state)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
        assert final["method"]["chains"] == ref_state["method"]["chains"]  # noise offsets
        assert _metrics(out) == _metrics(ref), stage
        assert json.loads((out / "config.json").read_text())["iters"] == KILL_ITERS


def test_failed_write_keeps_old_checkpoint_and_no_temp(tmp_path):
    path = str(tmp_path / CHECKPOINT)
    atomic_save({"iteration": 1}, path)
    with pytest.raises(Exception):
        atomic_save({"iteration": 2, "bad": lambda: None}, path)  # lambdas do not pickle: fails mid-write
    assert torch.load(path, weights_only=False) == {"iteration": 1}
    assert _temps(tmp_path) == []


def test_stale_temps_removed_unless_writer_alive(tmp_path):
    path = tmp_path / CHECKPOINT
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"{CHECKPOINT}.tmp{dead.pid}").write_bytes(b"torn")
    (tmp_path / f"{CHECKPOINT}.tmp{os.getppid()}").write_bytes(b"someone else's live write")
    (tmp_path / "metrics.json.tmp1").write_bytes(b"other file")
    assert remove_stale_temps(str(path)) == [f"{CHECKPOINT}.tmp{dead.pid}"]
    assert _temps(tmp_path) == sorted([f"{CHECKPOINT}.tmp{os.getppid()}", "metrics.json.tmp1"])


# ----------------------------------------------------------------------------- 2. unusable checkpoints

def _tiny(**over):
    base = dict(method="dual", iters=2, batch_size=16, eval_every=1000, ckpt_every=1000, n_eval=64)
    base.update(over)
    return preset("toy2d", **base)


TINY_ARGS = ["--config", "toy2d", "--iters", "2", "--batch-size", "16", "--n-eval", "64", "--no-progress",
             "--resume"]


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 40)


def _truncated(path):
    torch.save({"iteration": 0, "weights": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_dict(path):
    torch.save({"weights": torch.zeros(3)}, path)


def _not_a_dict(path):
    torch.save(torch.zeros(3), path)


def _wrong_state(path):
    good = Trainer(_tiny(), str(path.parent), progress=False).state_dict()
    good["method"] = {"models": {}}
    torch.save(good, path)


@pytest.mark.parametrize("corrupt, detail", [
    (_garbage, "unreadable"), (_truncated, "unreadable"), (_wrong_dict, r"missing \['iteration', 'config'"),
    (_not_a_dict, "holds a Tensor"), (_wrong_state, "does not fit this run's models")])
def test_corrupt_checkpoint_clear_error(tmp_path, capsys, corrupt, detail):
    out = tmp_path / "run"
    out.mkdir()
    corrupt(out / CHECKPOINT)
    before = (out / CHECKPOINT).read_bytes()
    assert cli_main(TINY_ARGS + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("langevin-train: error: checkpoint ") and str(out / CHECKPOINT) in err
    assert re.search(detail, err), err
    assert "rm " in err and "without --resume" in err and "Traceback" not in err
    assert (out / CHECKPOINT).read_bytes() == before  # left for the user to inspect
    assert not (out / "metrics.json").exists()  # nothing trained


def test_resume_with_a_different_config_names_the_keys(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(_tiny(), str(out), progress=False).save()
    assert cli_main(TINY_ARGS + ["--out", str(out), "--method", "coop", "--dataset", "rings"]) == 2
    err = capsys.readouterr().err
    assert str(out / CHECKPOINT) in err
    assert "dataset: checkpoint '8gaussians', requested 'rings'" in err
    assert "method: checkpoint 'dual', requested 'coop'" in err
    assert "seed" not in err.split("(", 1)[1].split(")")[0]  # only differing keys are listed
    # Run length, device and evaluation settings may change on resume.
    assert cli_main(TINY_ARGS + ["--out", str(out), "--n-eval", "32", "--eval-every", "7"]) == 0
    assert load_checkpoint(str(out / CHECKPOINT))["iteration"] == 2
    # A checkpoint beyond the requested length is not silently "finished".
    assert cli_main([a if a != "2" else "1" for a in TINY_ARGS] + ["--out", str(out)]) == 2
    assert "at iteration 2, beyond iters=1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 3. configuration

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
    ("image_size", 32, "0"), ("eval_x_steps", -1, ">= 0")])
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


# ----------------------------------------------------------------------------- 3. data

def _png(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _cli_image(tmp_path, root, *extra):
    return cli_main(["--config", "cifar10", "--dataset", "imagefolder", "--data-root", str(root),
                     "--out", str(tmp_path / "run"), "--no-progress", *extra])


def test_missing_data_root_cli(tmp_path, capsys):
    assert _cli_image(tmp_path, tmp_path / "absent") == 2
    err = capsys.readouterr().err
    assert "no data found under --data-root=" in err and "absent" in err and "<class>" in err


def test_image_folder_without_class_subfolders(tmp_path, capsys):
    _png(tmp_path / "flat" / "a.png", 32, 32)
    assert _cli_image(tmp_path, tmp_path / "flat") == 2
    err = capsys.readouterr().err
    assert "has no class subfolders" in err and os.path.join(str(tmp_path / "flat"), "all", "a.png") in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_image_folder_without_images(tmp_path, capsys):
    (tmp_path / "root" / "cats").mkdir(parents=True)
    (tmp_path / "root" / "cats" / "notes.txt").write_text("no images here")
    assert _cli_image(tmp_path, tmp_path / "root") == 2
    assert "no data found" in capsys.readouterr().err
    with pytest.raises(ImageDataError, match=r"class subfolders \(cats\) but no .png/.jpg/.jpeg images"):
        ImageFolderDataset(str(tmp_path / "root"), 32)
    _png(tmp_path / "root" / "dogs" / "d.png", 32, 32)
    with pytest.raises(ImageDataError, match=r"class subfolders without .png/.jpg/.jpeg images: cats;"):
        ImageFolderDataset(str(tmp_path / "root"), 32)
    with pytest.raises(DataRootError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "nowhere"), 32)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_file_named(tmp_path, capsys, damage):
    root = tmp_path / "root"
    _png(root / "a" / "good.png", 32, 32)
    _png(root / "a" / "bad.png", 32, 32, seed=1)
    bad = root / "a" / "bad.png"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"\x89PNG not really" * 20, "truncated": data[: len(data) // 2],
                     "empty": b""}[damage])
    assert _cli_image(tmp_path, root) == 2
    err = capsys.readouterr().err
    assert "1 unreadable or corrupt image files" in err and str(bad) in err and "good.png" not in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_image_size_rule(tmp_path, capsys):
    """Shorter side resized to image_size then centre-cropped: mixed sizes load; smaller images are refused."""
    root = tmp_path / "root"
    exact = _png(root / "a" / "exact.png", 32, 32)
    _png(root / "a" / "tall.png", 48, 40, seed=1)
    _png(root / "b" / "wide.png", 32, 64, seed=2)
    ds = ImageFolderDataset(str(root), 32)
    assert len(ds) == 3 and ds.classes == ["a", "b"]
    items = [ds[i] for i in range(3)]
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.float32 for x, _ in items)
    assert all(x.min() >= -1 and x.max() <= 1 for x, _ in items)
    assert [label for _, label in items] == [0, 0, 1]
    x_exact = items[0][0]  # a.exact.png sorts first: no resize, exact pixel values
    assert torch.equal(x_exact, (torch.from_numpy(exact).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
    wide = np.asarray(Image.open(root / "b" / "wide.png"))
    assert torch.equal(items[2][0], (torch.from_numpy(wide[:, 16:48].copy()).permute(2, 0, 1).float() / 255
                                     - 0.5) / 0.5)  # 32x64: centre crop only
    _png(root / "b" / "small.png", 16, 40, seed=3)
    with pytest.raises(ImageDataError, match=r"1 images are smaller than image_size=32.*small.png \(40x16\)"):
        ImageFolderDataset(str(root), 32)
    assert _cli_image(tmp_path, root) == 2
    assert "never upsampled" in capsys.readouterr().err


def test_torchvision_datasets_without_torchvision(tmp_path, capsys):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert cli_main(["--config", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "dataset='cifar10' needs torchvision" in err and "Traceback" not in err


@pytest.mark.slow
def test_valid_image_folder_trains(tmp_path):
    root = tmp_path / "root"
    for i in range(4):
        _png(root / "a" / f"{i}.png", 36, 32 + 4 * i, seed=i)
    cfg = preset("cifar10", dataset="imagefolder", iters=1, batch_size=4, x_steps=1, z_steps=1, eval_every=10,
                 ckpt_every=10, n_eval=4)
    trainer = Trainer(cfg, str(tmp_path / "run"), data_root=str(root), progress=False)
    assert trainer.source.shape == (3, 32, 32)
    trainer.train()
    assert trainer.iteration == 1 and all(np.isfinite(v) for v in trainer.last_losses.values())


# ----------------------------------------------------------------------------- 4. determinism

def _small(config, method, **over):
    base = dict(method=method, iters=20, batch_size=32, eval_every=1000, ckpt_every=1000, n_eval=64,
                x_steps=5, z_steps=3, sr_steps=5, pcd_steps=5, buffer_size=64, seed=7)
    base.update(over)
    return preset(config, **base)


def _losses(cfg, out_dir, n=20):
    trainer = Trainer(cfg, out_dir, progress=False)
    return [trainer.step() for _ in range(n)]


@pytest.mark.parametrize("config, method, over", [
    ("toy2d", "dual", {}),
    pytest.param("digits", "dual", dict(batch_size=16, x_steps=3, z_steps=2), marks=pytest.mark.slow)])
def test_same_seed_bit_identical_losses_in_process(tmp_path, config, method, over):
    cfg = _small(config, method, **over)
    with lk.use_backend(BACKEND):
        first = _losses(cfg, str(tmp_path / "a"))
        torch.manual_seed(999), random.seed(999), np.random.seed(999)  # global state must not matter
        second = _losses(cfg, str(tmp_path / "b"))
        other = _losses(_small(config, method, **over, seed=8), str(tmp_path / "c"), n=1)
    assert len(first) == 20 and all(np.isfinite(v) for d in first for v in d.values())
    assert first == second  # exact float equality, every loss of every iteration
    assert other[0] != first[0]  # and the seed matters


_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from langevin_kernels.train.config import TrainConfig
from langevin_kernels.train.trainer import Trainer
t = Trainer(TrainConfig.from_dict(json.loads(sys.argv[2])), sys.argv[1], progress=False)
print(json.dumps([t.step() for _ in range(20)]))
"""


@pytest.mark.slow
def test_same_seed_bit_identical_losses_across_processes(tmp_path):
    cfg = json.dumps(_small("toy2d", "dual").to_dict())
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / f"p{i}"), cfg], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    runs = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]  # json round-trips floats exactly
    assert len(runs[0]) == 20 and runs[0] == runs[1]
    with lk.use_backend(BACKEND):  # and this process agrees with both
        assert _losses(_small("toy2d", "dual"), str(tmp_path / "here")) == runs[0]
