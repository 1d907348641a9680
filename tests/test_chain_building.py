"""Every chain the training methods run is built by methods.build_chain, which passes compile=True
to DataChain / LatentChain exactly when the config asks for it (--compile)."""
import pytest
import torch

from langevin_kernels.train import methods
from langevin_kernels.train.cli import build_parser, config_from_args
from langevin_kernels.train.config import METHODS, preset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def built(monkeypatch):
    """Records the keyword arguments of every DataChain / LatentChain construction in methods.py and
    builds the real chain without ``compile`` (so this holds whether or not the chains have it)."""
    records = []

    def spy(cls):
        def make(model, **kwargs):
            records.append((cls.__name__, dict(kwargs)))
            kwargs.pop("compile", None)
            return cls(model, **kwargs)
        return make

    monkeypatch.setattr(methods, "DataChain", spy(methods.DataChain))
    monkeypatch.setattr(methods, "LatentChain", spy(methods.LatentChain))
    return records


def _exercise(method):
    """Training step, evaluation samples and (where there is one) reconstruction: every chain."""
    x = torch.zeros(8, 2)
    method.train_step(x)
    method.sample(8, 0)
    if hasattr(method, "reconstruct"):
        method.reconstruct(x, 0)


@pytest.mark.parametrize("compile_", [False, True])
@pytest.mark.parametrize("name", METHODS)
def test_compile_reaches_every_chain_only_when_asked(built, name, compile_):
    cfg = preset("toy2d", method=name, batch_size=8, buffer_size=16, x_steps=2, z_steps=2, sr_steps=2, pcd_steps=2,
                 compile=compile_)
    _exercise(methods.build_method(cfg, "cpu", (2,)))
    kinds = {k for k, _ in built}
    assert "DataChain" in kinds and (name != "dual" or "LatentChain" in kinds)
    for _, kwargs in built:
        if compile_:
            assert kwargs["compile"] is True
        else:
            assert "compile" not in kwargs  # chains without the option keep working


def test_cli_flag():
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--out", "x"])).compile is False
    assert config_from_args(parser.parse_args(["--out", "x", "--compile"])).compile is True


def test_compiled_evaluations_reuse_their_graphs(monkeypatch):
    """Each evaluation builds fresh chains (new DataChain objects, fixed seed): with --compile they
    must reuse the graphs the first evaluation compiled, not compile again every evaluation."""
    from langevin_kernels.chains import core

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(core, "compile_options",
                        lambda value: {"backend": counting_backend, "fullgraph": True, "dynamic": False} if value else None)
    cfg = preset("toy2d", method="dual", batch_size=8, x_steps=2, z_steps=2, width_mult=0.125, compile=True)
    method = methods.build_method(cfg, "cpu", (2,))
    _exercise(method)
    first = len(graphs)
    assert first >= 3          # training data chain, latent chain, evaluation chains
    _exercise(method)           # a second iteration and evaluation: same shapes, same configurations
    assert len(graphs) == first
