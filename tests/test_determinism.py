"""Determinism: the same seed gives bit-identical losses, in one process and across processes."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import langevin_kernels as lk
from langevin_kernels.dispatch import unavailable_reason
from langevin_kernels.train.config import preset
from langevin_kernels.train.trainer import Trainer

BACKEND = "cpp" if unavailable_reason("cpp", "cpu") is None else "eager"

pytestmark = pytest.mark.usefixtures("one_thread")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "LANGEVIN_BACKEND": BACKEND}


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
