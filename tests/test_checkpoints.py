"""Checkpoints a user can rely on: SIGINT / SIGTERM save the last completed iteration and say how to
continue, checkpoints never run code when loaded, and the divergence message says what is on disk."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from langevin_kernels.dispatch import unavailable_reason
from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.trainer import CHECKPOINT, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

BACKEND = "cpp" if unavailable_reason("cpp", "cpu") is None else "eager"
ARGS = ["--config", "toy2d", "--method", "dual", "--batch-size", "16", "--n-eval", "64", "--seed", "4",
        "--threads", "1", "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "LANGEVIN_BACKEND": BACKEND}


def _params(state):
    return {f"{m}.{k}": v for m, sd in state["method"]["models"].items() for k, v in sd.items()}


def _interrupt(out, sig):
    """Start a long run in a subprocess, send `sig` once it is training, return (exit status, stderr)."""
    cmd = [sys.executable, "-m", "langevin_kernels.train", *ARGS, "--iters", "100000", "--ckpt-every", "100000",
           "--eval-every", "100000", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # config.json is written once the signal handlers are installed; then let a few iterations pass.
    while not (out / "config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_says_how_to_continue(tmp_path, sig, status):
    out = tmp_path / "run"
    code, err = _interrupt(out, sig)
    assert code == status, err[-3000:]
    assert "Traceback" not in err
    found = re.search(r"interrupted at iteration (\d+); continue with --resume", err)
    assert found, err[-3000:]
    n = int(found.group(1))
    assert n >= 1
    state = load_checkpoint(str(out / CHECKPOINT))
    assert state["iteration"] == n  # the iteration the message names is the one on disk
    assert not [p for p in os.listdir(out) if ".tmp" in p]  # the save was atomic and complete


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    import langevin_kernels as lk

    out = tmp_path / "run"
    code, err = _interrupt(out, signal.SIGINT)
    assert code == 130, err[-3000:]
    n = load_checkpoint(str(out / CHECKPOINT))["iteration"]
    more = ["--iters", str(n + 2), "--ckpt-every", "1000", "--eval-every", "1000"]
    with lk.use_backend(BACKEND):
        assert cli_main(ARGS + more + ["--out", str(out), "--resume"]) == 0
        assert cli_main(ARGS + more + ["--out", str(tmp_path / "ref")]) == 0
    resumed, ref = load_checkpoint(str(out / CHECKPOINT)), load_checkpoint(str(tmp_path / "ref" / CHECKPOINT))
    assert resumed["iteration"] == ref["iteration"] == n + 2
    a, b = _params(resumed), _params(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["method"]["chains"] == ref["method"]["chains"]  # noise offsets


# ----------------------------------------------------------------------------- loading never runs code

class _RunsCode:
    """Unpickling this runs a shell command: what a malicious "checkpoint" would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _booby_trapped(path, marker):
    from langevin_kernels.train.config import preset
    from langevin_kernels.train.trainer import Trainer

    state = Trainer(preset("toy2d", iters=2, batch_size=16, n_eval=64), str(path.parent), progress=False).state_dict()
    state["history"] = [{"iteration": 0, "note": _RunsCode(marker)}]
    torch.save(state, path)


def test_checkpoint_carrying_code_is_refused(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    _booby_trapped(out / CHECKPOINT, marker)
    code = cli_main(["--config", "toy2d", "--iters", "2", "--batch-size", "16", "--n-eval", "64", "--no-progress",
                     "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert code == 2 and "Traceback" not in err
    assert f"checkpoint {out / CHECKPOINT} refused" in err and "system" in err and "run code" in err
    assert not (out / "metrics.json").exists()


def test_trainer_checkpoints_load_weights_only(tmp_path):
    """What the trainer saves (every method, with an evaluation in the history) passes the
    weights-only unpickler with no extra allow-listed globals."""
    from langevin_kernels.train.config import METHODS, preset
    from langevin_kernels.train.trainer import Trainer

    for method in METHODS:
        cfg = preset("toy2d", method=method, iters=1, batch_size=16, n_eval=64, grid_n=20, buffer_size=32,
                     x_steps=2, z_steps=2, sr_steps=2, pcd_steps=2)
        Trainer(cfg, str(tmp_path / method), progress=False).train()
        state = torch.load(tmp_path / method / CHECKPOINT, weights_only=True)
        assert state["iteration"] == 1 and state["history"][-1]["iteration"] == 1, method


def test_save_refuses_what_load_would_refuse(tmp_path):
    import numpy as np

    from langevin_kernels.train.config import preset
    from langevin_kernels.train.trainer import Trainer

    trainer = Trainer(preset("toy2d", iters=2, batch_size=16, n_eval=64), str(tmp_path), progress=False)
    trainer.history.append({"iteration": 0, "grid_kl": np.float64(0.5)})
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\[0\]\['grid_kl'\] is a numpy.float64"):
        trainer.save()
    assert not (tmp_path / CHECKPOINT).exists()


# ----------------------------------------------------------------------------- divergence message

def _diverging(**over):
    from langevin_kernels.train.config import preset

    # A divergence threshold of 0 makes the first energy update "diverge" (test-only setting).
    return preset("toy2d", iters=4, batch_size=16, n_eval=64, x_steps=2, z_steps=2, max_energy_gap=0.0, **over)


def test_divergence_before_any_checkpoint_says_nothing_was_saved(tmp_path):
    from langevin_kernels.train.trainer import Trainer, TrainingDiverged

    trainer = Trainer(_diverging(ckpt_every=3), str(tmp_path), progress=False)
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    msg = str(info.value)
    assert "iteration 1" in msg and "No checkpoint of this run exists yet" in msg and "due at iteration 3" in msg
    assert "kept" not in msg
    assert not (tmp_path / CHECKPOINT).exists()


def test_divergence_after_a_checkpoint_names_its_iteration(tmp_path):
    from langevin_kernels.train.config import preset
    from langevin_kernels.train.trainer import Trainer, TrainingDiverged

    Trainer(preset("toy2d", iters=2, batch_size=16, n_eval=64, x_steps=2, z_steps=2, ckpt_every=1),
            str(tmp_path), progress=False).train()
    trainer = Trainer(_diverging(ckpt_every=1), str(tmp_path), progress=False)
    assert trainer.resume()
    with pytest.raises(TrainingDiverged, match=rf"iteration 3: .*checkpoint, of iteration 2 \({re.escape(str(tmp_path / CHECKPOINT))}\), was kept"):
        trainer.train()
    assert load_checkpoint(str(tmp_path / CHECKPOINT))["iteration"] == 2
