"""Mistakes a user makes with the op and the chains: each must raise, naming what to change,
instead of sampling the wrong thing (issue 17 items 2, 3, 7, 8) or reading past a buffer
(the extension's internal ops are reachable as torch.ops.langevin_kernels._ext_*)."""
import pytest
import torch

import langevin_kernels as lk
from langevin_kernels.dispatch import unavailable_reason


@pytest.mark.parametrize("op", [lk.langevin_step, lk.langevin_step_])
@pytest.mark.parametrize("given", [{}, {"seed": 0}, {"offset": 0}])
def test_drawing_noise_needs_seed_and_offset(op, given):
    x = torch.zeros(64)
    with pytest.raises(TypeError, match="not given: the step draws noise .*noise_offset_advance"):
        op(x, torch.zeros(64), step_size=0.01, noise_scale=0.1, **given)


def test_a_loop_that_forgot_the_offset_can_no_longer_collapse_the_variance():
    # The failure mode the requirement exists for: the same noise every step makes a 500-step
    # N(0, 1) chain's variance grow far past 1. With offsets advanced it stays near 1: ULA at
    # a = 0.05 has stationary variance 1 / (1 - a / 2) = 1.026; 4096 chains give a standard
    # error of about 1.026 * sqrt(2 / 4096) = 0.023, so 0.15 is > 6 standard errors.
    x = torch.zeros(4096)
    advance = lk.noise_offset_advance(x.numel())
    for k in range(500):
        lk.langevin_step_(x, x.clone(), step_size=0.05, noise_scale=0.1 ** 0.5, seed=1, offset=k * advance)
    assert abs(x.var().item() - 1 / (1 - 0.025)) < 0.15


def test_no_noise_needs_no_position():
    x = torch.ones(8)
    y = lk.langevin_step(x, x, step_size=0.5, noise_scale=0.0)
    assert torch.equal(y, torch.full((8,), 0.5))
    y = lk.langevin_step(x, x, step_size=0.5, noise_scale=1.0, noise=torch.ones(8))
    assert torch.equal(y, torch.full((8,), 1.5))


def test_noise_offset_advance_refuses_negative_counts():
    with pytest.raises(ValueError, match=r"numel=-4 must be an int >= 0"):
        lk.noise_offset_advance(-4)
    assert lk.noise_offset_advance(5) == 2


# ----------------------------------------------------------------------------- internal ops

needs_ext = pytest.mark.skipif(unavailable_reason("cpp", "cpu") is not None, reason="extension not built")


@needs_ext
@pytest.mark.parametrize("bad", ["out", "grad", "noise"])
def test_internal_step_refuses_a_short_buffer(bad):
    x = torch.zeros(1024)
    args = {"grad": torch.zeros(1024), "noise": torch.zeros(1024), "out": torch.zeros(1024)}
    args[bad] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=f"_ext_step: {bad} has 3 elements but x has 1024"):
        torch.ops.langevin_kernels._ext_step(x, args["grad"], args["noise"], args["out"], 0.1, 0.1, 0.0,
                                             -1.0, 1.0, 0, 0, None)


@needs_ext
def test_internal_step_refuses_mismatched_dtypes_and_rng_state_forms():
    x = torch.zeros(16)
    with pytest.raises(RuntimeError, match="grad has dtype Double but x has dtype Float"):
        torch.ops.langevin_kernels._ext_step(x, x.double(), None, x, 0.1, 0.1, 0.0, -1.0, 1.0, 0, 0, None)
    for state in (torch.zeros(1, dtype=torch.int64), torch.zeros(2, dtype=torch.int32)):
        with pytest.raises(RuntimeError, match="rng_state must be a contiguous int64 tensor of 2 elements"):
            torch.ops.langevin_kernels._ext_step(x, x, None, x, 0.1, 0.1, 0.0, -1.0, 1.0, 0, 0, state)
        with pytest.raises(RuntimeError, match="rng_state must be a contiguous int64 tensor of 2 elements"):
            torch.ops.langevin_kernels._ext_normal(x, 0, 0, state)


# ----------------------------------------------------------------------------- chains

def quadratic(x):
    return 0.5 * x.pow(2).sum(1)


@pytest.mark.parametrize("name,value", [("n_steps", 50), ("step_size", 0.5), ("noise_scale", 0.1),
                                        ("clamp", (-1, 1)), ("mala", True), ("seed", 3)])
def test_chain_settings_are_fixed_after_construction(name, value):
    chain = lk.DataChain(quadratic, n_steps=5, step_size=0.01, noise_scale=0.1)
    with pytest.raises(AttributeError, match=f"DataChain.{name} is fixed at construction.*new chain"):
        setattr(chain, name, value)
    chain.offset = 12   # the noise position stays settable (checkpoints)
    assert chain.offset == 12


@pytest.mark.parametrize("out_shape", [(8, 1), (8, 6, 1)])
def test_latent_chain_refuses_a_generator_output_of_another_shape(out_shape):
    generator = lambda z: z.sum(1).reshape(8, *[1] * (len(out_shape) - 1)).expand(out_shape) * 1.0
    chain = lk.LatentChain(generator, sigma=0.3, n_steps=2, step_size=1e-3, noise_scale=0.04)
    with pytest.raises(ValueError, match=rf"generator\(z\) returned shape \({out_shape[0]}, .*x have shape \(8, 6\)"):
        chain.run(torch.zeros(8, 3), torch.zeros(8, 6))


@pytest.mark.parametrize("energy,error,pattern", [
    (lambda x: None, TypeError, "must return a tensor of per-chain energies.*got NoneType"),
    (lambda x: 3, TypeError, "got int"),
    (lambda x: quadratic(x).detach(), ValueError, "differentiable function of x"),
    (lambda x: torch.zeros(x.shape[0]), ValueError, "differentiable function of x"),
    (lambda x: torch.from_numpy(quadratic(x).detach().numpy()), ValueError, "detached, computed in numpy"),
])
def test_energy_mistakes_are_named(energy, error, pattern):
    chain = lk.DataChain(energy, n_steps=2, step_size=0.01, noise_scale=0.1)
    with pytest.raises(error, match=pattern):
        chain.run(torch.zeros(4, 2))


def test_chains_refuse_inference_mode_with_a_message():
    chain = lk.DataChain(quadratic, n_steps=2, step_size=0.01, noise_scale=0.1)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="cannot run under torch.inference_mode"):
        chain.run(torch.zeros(4, 2))


def test_one_call_sample_is_reproducible_and_samples_the_target():
    # N(0, I) target from U(-1, 1) starts: 200 ULA steps at a = 0.05 mix (contraction
    # (1 - a)^200 ~ 4e-5); stationary variance 1 / (1 - a/2) = 1.026, and 2000 x 2 draws give a
    # standard error of ~0.023 on it, so 0.12 is > 5 standard errors.
    kwargs = dict(n_steps=200, step_size=0.05, noise_scale=0.1 ** 0.5, init="uniform", seed=4)
    x = lk.sample(quadratic, 2000, 2, **kwargs)
    assert x.shape == (2000, 2)
    assert torch.equal(x, lk.sample(quadratic, 2000, 2, **kwargs))
    assert abs(x.var().item() - 1 / (1 - 0.025)) < 0.12
    with pytest.raises(ValueError, match="init='gauss' is not allowed"):
        lk.sample(quadratic, 4, 2, n_steps=1, step_size=0.1, noise_scale=0.1, init="gauss")
