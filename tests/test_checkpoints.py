"""Checkpoints a user can rely on: SIGINT / SIGTERM save the last completed iteration and say how to
continue, a SIGKILL at any moment of a checkpoint write leaves a usable checkpoint (and resume
finishes the run exactly), unusable checkpoints are refused with the file and the fix named,
checkpoints never run code when loaded, and the divergence message says what is on disk.

Subprocesses run with one thread (the CPU is shared); the kill moments are set by
tests/kill_during_save.py, which SIGKILLs the N-th checkpoint write at a chosen stage, so each
moment is reproducible."""
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import langevin_kernels as lk
from langevin_kernels.dispatch import unavailable_reason
from langevin_kernels.train.checkpoints import (CHECKPOINT, CheckpointError, atomic_save, load_checkpoint,
                                                remove_stale_temps)
from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.config import DUAL_ONLY_KEYS, preset
from langevin_kernels.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

BACKEND = "cpp" if unavailable_reason("cpp", "cpu") is None else "eager"
ARGS = ["--config", "toy2d", "--method", "dual", "--batch-size", "16", "--n-eval", "64", "--seed", "4",
        "--threads", "1", "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "LANGEVIN_BACKEND": BACKEND}


def _temps(folder):
    return sorted(p for p in os.listdir(folder) if ".tmp" in p)


def _metrics(folder):
    history = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in entry.items() if k != "eval_seconds"} for entry in history]


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


# ----------------------------------------------------------------------------- a kill during a write

KILL_ITERS, KILL_CKPT = 16, 2  # 8 checkpoint writes; evaluations at 10 and 16
KILL_ARGS = ["--config", "toy2d", "--method", "dual", "--iters", str(KILL_ITERS), "--ckpt-every", str(KILL_CKPT),
             "--eval-every", "10", "--n-eval", "64", "--batch-size", "32", "--seed", "3", "--threads", "1",
             "--no-progress"]
KILL_STAGES = ("partial", "written", "replaced")
KILL_CHILD = os.path.join(os.path.dirname(__file__), "kill_during_save.py")


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
        cmd = [sys.executable, KILL_CHILD, str(nth), stage, *KILL_ARGS, "--out", str(tmp_path / stage)]
        procs[stage] = subprocess.Popen(cmd, env=_env(),
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
    # A lambda does not pickle: PicklingError at module level, AttributeError (local object) in a function.
    with pytest.raises((pickle.PicklingError, AttributeError)):
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


# ----------------------------------------------------------------------------- unusable checkpoints

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


# ----------------------------------------------------------------------------- settings a method never reads

DUAL_ONLY_CHANGED = dict(latent_sigma=0.05, z_steps=3, z_step=0.3, z_noise=0.2, teach_weight=7.0,
                         infer_teach_weight=0.7)


@pytest.mark.parametrize("method", ["coop", "vaebm-teach", "shortrun", "persistent"])
def test_dual_only_settings_change_nothing_in_the_other_methods(tmp_path, method):
    # The premise of resuming across DUAL_ONLY_KEYS: two iterations with them changed train
    # bit-identical parameters. Fails as soon as another method starts reading one of them.
    assert set(DUAL_ONLY_CHANGED) == DUAL_ONLY_KEYS
    states = []
    for i, over in enumerate(({}, DUAL_ONLY_CHANGED)):
        trainer = Trainer(_tiny(method=method, **over), str(tmp_path / str(i)), progress=False)
        trainer.train()
        states.append(_params(trainer.state_dict()))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_checkpoint_resumes_across_settings_its_method_never_reads(tmp_path, capsys):
    coop = tmp_path / "coop"
    Trainer(_tiny(method="coop", iters=1, teach_weight=10.0, latent_sigma=0.1), str(coop), progress=False).save()
    assert cli_main(TINY_ARGS + ["--out", str(coop), "--method", "coop"]) == 0   # the preset's 1.0 and 0.3
    assert load_checkpoint(str(coop / CHECKPOINT))["iteration"] == 2
    dual = tmp_path / "dual"   # dual reads them: refused, both named
    Trainer(_tiny(iters=1, teach_weight=10.0, latent_sigma=0.1), str(dual), progress=False).save()
    assert cli_main(TINY_ARGS + ["--out", str(dual)]) == 2
    err = capsys.readouterr().err
    assert "teach_weight: checkpoint 10.0, requested 1.0" in err and "latent_sigma: checkpoint 0.1" in err
