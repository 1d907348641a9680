"""Training pitfalls (issue 13): divergence judged in units that mean the same for every preset, DDP
ranks that stop together, unbiased evaluation samples from the replay buffer, sample shapes from the
data."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from langevin_kernels.train.config import METHODS, PRESETS, preset
from langevin_kernels.train.methods import Diverged, Persistent, ShortRun, build_method, data_shape

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- divergence units

def _energy_with_gap(model, gap):
    """The real model (so the loss has a graph to its parameters) shifted so that
    mean E(data) - mean E(samples) == gap exactly: data rows (first half) get +gap."""
    def energy(x):
        e = model(x) * 0.0
        shift = torch.zeros_like(e)
        shift[: len(x) // 2] = gap
        return e + shift
    return energy


@pytest.mark.parametrize("config", list(PRESETS))
def test_divergence_threshold_means_the_same_for_every_preset(config):
    """A raw energy gap of 0.05 is healthy and one of 2e4 is divergence, whatever the preset's
    temperature (cifar10: T = (0.001 / 0.5)^2 = 4e-6, so 0.05 / T = 12500 > 1e4)."""
    cfg = preset(config, method="shortrun")
    method = build_method(cfg, "cpu", data_shape(cfg))
    x = torch.zeros(2, *data_shape(cfg))
    method.wrapped["energy"] = _energy_with_gap(method.models["energy"], 0.05)
    losses = method.energy_update(x, x, "data chain")
    assert losses["E_data"] - losses["E_neg"] == pytest.approx(0.05)
    method.wrapped["energy"] = _energy_with_gap(method.models["energy"], 2e4)
    with pytest.raises(Diverged, match=r"energy gap .*=2e\+04, max_energy_gap=1e\+04"):
        method.energy_update(x, x, "data chain")


def test_old_threshold_name_still_accepted():
    with pytest.warns(DeprecationWarning, match="max_energy_gap"):
        assert preset("toy2d", max_energy_loss=float("inf")).max_energy_gap == float("inf")
    with pytest.raises(ValueError, match="both given"):
        preset("toy2d", max_energy_loss=1.0, max_energy_gap=2.0)


IMAGE = {"cifar10", "celeba64"}


@pytest.mark.parametrize("config, method", [
    pytest.param(c, m, marks=[pytest.mark.slow] if c in IMAGE else []) for c in PRESETS for m in METHODS])
def test_first_iterations_on_random_data_raise_no_false_alarm(config, method):
    """Every preset's chain step sizes, noise and temperature, on uniform random data of the data's
    shape: the first iterations finish with finite losses (fewer chain steps and a tiny batch keep
    the image presets affordable on a CPU; the temperature, which decided the false alarms, is the
    preset's)."""
    cfg = preset(config, method=method, batch_size=2, buffer_size=4, x_steps=2, z_steps=1, sr_steps=2,
                 pcd_steps=2)
    torch.manual_seed(0)
    m = build_method(cfg, "cpu", data_shape(cfg))
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.rand(2, *data_shape(cfg), generator=gen) * 2 - 1
        losses = m.train_step(x)  # Diverged here is the false alarm
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses


# ----------------------------------------------------------------------------- DDP: stop together

_POISONED_RANK = """
import os, sys, torch
from langevin_kernels.train import methods
if os.environ["RANK"] == "1":
    original = methods.Method.energy_update
    calls = [0]

    def poisoned(self, x_data, x_neg, chain):
        calls[0] += 1
        if calls[0] == 2:  # the second iteration's EBM update sees NaN samples, on this rank only
            x_neg = torch.full_like(x_neg, float("nan"))
        return original(self, x_data, x_neg, chain)

    methods.Method.energy_update = poisoned
from langevin_kernels.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_divergence_on_one_rank_stops_every_rank_with_status_3(tmp_path):
    """torchrun's environment for 2 gloo ranks, rank 1 alone diverging at iteration 2: both ranks
    exit 3 (no rank left waiting in the gradient all-reduce), within the timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    args = ["--config", "toy2d", "--method", "dual", "--iters", "5", "--batch-size", "16", "--n-eval", "64",
            "--threads", "1", "--no-progress", "--out", str(tmp_path / "ddp")]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, "-c", _POISONED_RANK, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=180))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail("a rank hung after rank 1 diverged")
    errs = [err for _, err in outs]
    assert [p.returncode for p in procs] == [3, 3], [e[-2000:] for e in errs]
    for err in errs:
        assert "training diverged at iteration 2" in err and "on rank 1: energy loss L_E=nan" in err, err[-2000:]
        assert "Traceback" not in err


# ----------------------------------------------------------------------------- evaluation samples

def _persistent(capacity):
    cfg = preset("toy2d", method="persistent", buffer_size=capacity, batch_size=min(capacity, 16))
    method = build_method(cfg, "cpu", (2,))
    rows = torch.arange(capacity, dtype=torch.float32)
    method.buffer.storage = torch.stack([rows, -rows], 1)  # row i holds (i, -i): sampled rows are readable
    return method


def test_persistent_sample_is_uniform_over_the_buffer():
    """n < capacity: n distinct rows, each row equally likely. Over 2000 seeds each row's count is
    Binomial(2000, 30/100): mean 600, sd 20.5; 5 sd (102) bounds all 100 rows with probability
    > 0.9999 (and the seeds are fixed). Returning the first n rows would give counts 2000 and 0."""
    method = _persistent(100)
    counts = torch.zeros(100)
    for seed in range(2000):
        x = method.sample(30, seed)["ebm"]
        rows = x[:, 0].long()
        assert len(rows.unique()) == 30 and torch.equal(x[:, 1], -x[:, 0])
        counts[rows] += 1
    assert (counts - 600).abs().max() < 102, counts


def test_persistent_sample_any_n():
    """n > capacity: n rows, each buffer row n // capacity or n // capacity + 1 times."""
    method = _persistent(100)
    x = method.sample(250, 0)["ebm"]
    assert x.shape == (250, 2)
    counts = torch.bincount(x[:, 0].long(), minlength=100)
    assert set(counts.tolist()) == {2, 3} and int((counts == 3).sum()) == 50
    before = method.buffer.storage.clone()
    method.sample(10, 1)
    assert torch.equal(method.buffer.storage, before)  # evaluation leaves training state alone


# ----------------------------------------------------------------------------- shapes from the data

@pytest.mark.parametrize("cls", [ShortRun, Persistent])
def test_methods_built_directly_sample_the_data_shape(cls):
    cfg = preset("digits", method="persistent" if cls is Persistent else "shortrun", sr_steps=2, buffer_size=200)
    method = cls(cfg, torch.device("cpu"))  # no shape given: the config's data shape, not (2,)
    assert method.sample(5, 0)["ebm"].shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match=r"sample_shape=\(2,\) does not fit config='digits'.*\(1, 8, 8\)"):
        cls(cfg, torch.device("cpu"), sample_shape=(2,))
