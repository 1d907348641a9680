"""Trainer end to end: every method runs, dual learns on a toy, resume equals an uninterrupted run,
divergence stops cleanly, the CLI reports missing data."""
import json
import os

import pytest
import torch

from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.config import METHODS, preset
from langevin_kernels.train.checkpoints import CHECKPOINT
from langevin_kernels.train.trainer import Trainer, TrainingDiverged


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(config, method, **over):
    base = dict(method=method, iters=2, batch_size=32, eval_every=1000, ckpt_every=1000, n_eval=200,
                grid_n=40, buffer_size=200, x_steps=5, z_steps=3, sr_steps=5, pcd_steps=5)
    base.update(over)
    return preset(config, **base)


@pytest.mark.parametrize("config", ["toy2d", "digits"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_with_finite_losses(tmp_path, config, method):
    trainer = Trainer(_small(config, method), str(tmp_path), progress=False)
    history = trainer.train()
    assert trainer.last_losses and all(torch.isfinite(torch.tensor(v)) for v in trainer.last_losses.values())
    assert history[-1]["iteration"] == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved[-1]["iteration"] == 2
    assert (tmp_path / "config.json").exists() and (tmp_path / CHECKPOINT).exists()
    assert any(p.endswith(".png") for p in os.listdir(tmp_path))


def _params(trainer):
    return {f"{m}.{k}": v for m, model in trainer.method.models.items() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["dual", "persistent"])
def test_resume_equals_uninterrupted(tmp_path, method):
    full = Trainer(_small("toy2d", method, iters=6, ckpt_every=3), str(tmp_path / "full"), progress=False)
    full.train()
    first = Trainer(_small("toy2d", method, iters=3, ckpt_every=3), str(tmp_path / "split"), progress=False)
    first.train()
    second = Trainer(_small("toy2d", method, iters=6, ckpt_every=3), str(tmp_path / "split"), progress=False)
    assert second.resume() and second.iteration == 3
    second.train()
    a, b = _params(full), _params(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert {k: c.offset for k, c in full.method.chains.items()} == \
        {k: c.offset for k, c in second.method.chains.items()}
    assert full.last_losses == second.last_losses


def test_divergence_stops_and_keeps_last_checkpoint(tmp_path):
    Trainer(_small("toy2d", "dual", iters=2, ckpt_every=1), str(tmp_path), progress=False).train()
    before = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    # A threshold no energy gap can stay under forces the divergence path at the next iteration.
    trainer = Trainer(_small("toy2d", "dual", iters=4, ckpt_every=1, max_energy_gap=0.0), str(tmp_path),
                      progress=False)
    trainer.resume()
    with pytest.raises(TrainingDiverged, match=r"iteration 3: energy loss L_E=.*data chain.*kept"):
        trainer.train()
    after = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert after["iteration"] == before["iteration"] == 2


def test_nonfinite_chain_is_named(tmp_path):
    trainer = Trainer(_small("toy2d", "shortrun"), str(tmp_path), progress=False)
    with torch.no_grad():
        trainer.method.models["energy"].net[0].weight.fill_(float("nan"))  # NaN gradients
    with pytest.raises(TrainingDiverged, match="iteration 1: the data chain produced non-finite"):
        trainer.train()


def test_dual_learns_8gaussians(tmp_path):
    """A short dual-MCMC run moves every metric far from its value at initialisation.

    At init the energy is nearly flat on [-4.5, 4.5]^2: grid KL(p || q) ~ log(81) - h(p) ~ 1.6 and
    MMD^2 of the chain samples ~ 0.25 (the generator's output is a blob near the origin). A model
    that has merely put its mass on the ring of modes has KL < 1 and MMD^2 < 0.02; we require
    KL below 0.7 x its init value and MMD^2 below 0.1 x, which the 150-iteration run passes with
    margin (measured: see the report), and which no untrained model can.
    """
    cfg = preset("toy2d", method="dual", iters=150, batch_size=128, eval_every=1000, ckpt_every=1000,
                 n_eval=1000, grid_n=60, seed=0)
    trainer = Trainer(cfg, str(tmp_path), progress=False)
    init = trainer.evaluate()
    final = trainer.train()[-1]
    assert final["grid_kl"] < 0.7 * init["grid_kl"]
    assert final["mmd2_ebm"] < 0.1 * init["mmd2_ebm"]
    assert final["realistic_ratio_ebm"] > init["realistic_ratio_ebm"] + 0.3
    assert final["modes_covered_ebm"] == 8


def test_cli_missing_data_root(tmp_path, capsys):
    code = cli_main(["--config", "cifar10", "--out", str(tmp_path / "run"), "--data-root", str(tmp_path)])
    assert code == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err


def test_cli_toy_run_and_bad_dataset(tmp_path, capsys):
    assert cli_main(["--config", "toy2d", "--dataset", "moons", "--out", str(tmp_path / "bad")]) == 2
    assert "moons" in capsys.readouterr().err
    code = cli_main(["--config", "toy2d", "--dataset", "rings", "--method", "coop", "--iters", "2",
                     "--batch-size", "16", "--n-eval", "100", "--out", str(tmp_path / "ok"), "--no-progress"])
    assert code == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())[-1]["iteration"] == 2


def test_ddp_two_processes_gloo(tmp_path):
    """torchrun with 2 CPU processes (gloo): ranks finish with identical parameters, distinct chain noise."""
    import subprocess
    import sys

    import socket

    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port, so parallel test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           "-m", "langevin_kernels.train", "--config", "toy2d", "--method", "dual", "--iters", "3",
           "--batch-size", "16", "--n-eval", "100", "--threads", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(out / CHECKPOINT, weights_only=False)
    rank1 = torch.load(out / "checkpoint_rank1.pt", weights_only=False)
    for model in rank0["method"]["models"]:
        for k, v in rank0["method"]["models"][model].items():
            assert torch.equal(v, rank1["method"]["models"][model][k]), f"{model}.{k}"
    seeds = {r["method"]["chains"]["data chain"]["seed"] for r in (rank0, rank1)}
    assert len(seeds) == 2  # each rank its own noise stream


@pytest.mark.parametrize("parity", [True, False])
def test_bn_parity_decides_batchnorm_mode_inside_chains(parity):
    """bn_parity=True (reference): BatchNorm in the generator sees batch statistics inside the
    latent chain, so its running averages move; False: eval mode there, running averages untouched,
    and the models are back in train mode for the losses."""
    from langevin_kernels.train.config import preset
    from langevin_kernels.train.methods import build_method

    cfg = preset("cifar10", bn_parity=parity, z_steps=2, x_steps=2)
    method = build_method(cfg, "cpu", (3, 32, 32))
    bns = [m for m in method.models["generator"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns, "the image generator should carry BatchNorm for this test to mean anything"
    before = [bn.running_mean.clone() for bn in bns]
    torch.manual_seed(0)
    method.posterior(torch.rand(4, 3, 32, 32) * 2 - 1)
    moved = any(not torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    assert moved == parity
    assert all(m.training for m in method.models.values())


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dual", "persistent"])
def test_captured_training_chains_equal_uncaptured_on_cuda(method):
    """capture_graph=True replays the training chains' graphs after each optimizer step: the
    models must train exactly as with eager chains (replays read the updated parameters in place)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    from langevin_kernels.train.methods import build_method
    batches = [torch.randn(64, 2, generator=torch.Generator().manual_seed(i)).cuda() for i in range(4)]
    trained = []
    for capture in (False, True):
        cfg = preset("toy2d", method=method, device="cuda", capture_graph=capture, batch_size=64, buffer_size=256)
        torch.manual_seed(0)
        m = build_method(cfg, torch.device("cuda"), (2,))
        for x in batches:
            m.train_step(x)
        if capture:
            assert all(c._graph is not None for c in m.chains.values())   # replays, not eager runs
        trained.append({k: torch.cat([p.detach().flatten() for p in mod.parameters()]) for k, mod in m.models.items()})
    for name in trained[0]:
        torch.testing.assert_close(trained[1][name], trained[0][name], rtol=1e-4, atol=1e-5)
