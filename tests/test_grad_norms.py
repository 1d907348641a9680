"""langevin_step_(..., grad_norm_out=...): the per-chain grad norms the samplers record,
computed by the update op itself (docs/op.md)."""
import pytest
import torch

import langevin_kernels as lk

KW = dict(step_size=0.1, noise_scale=0.5, seed=3, offset=11)


def _reference_norms(grad: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(grad.double().reshape(grad.shape[0], -1), dim=1)


@pytest.mark.parametrize("backend", ["cpp", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 2), (7, 3, 5), (5, 300), (3, 2, 16, 16), (4, 0), (1, 1)])
def test_norms_match_vector_norm_and_the_update_is_unchanged(backend, dtype, shape):
    if lk.backends()[backend] != "available":
        pytest.skip(lk.backends()[backend])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype)
    g = (3 * torch.randn(shape, generator=gen)).to(dtype)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    norms = torch.full((shape[0],), float("nan"), dtype=wide)   # poisoned: every row must be written
    with lk.use_backend(backend):
        plain = lk.langevin_step(x, g, **KW)
        y = x.clone()
        lk.langevin_step_(y, g, grad_norm_out=norms, **KW)
    assert torch.equal(y, plain)
    # float32 sums of up to 768 squares: relative error a few float32 ulps (eps 1.2e-7) times
    # log2(length) for a pairwise sum, well under 1e-5; float64 sums are exact to 1e-12.
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(norms.double(), _reference_norms(g), rtol=rtol, atol=0)


def test_norms_are_of_grad_before_the_update_when_grad_is_x():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    want = _reference_norms(x).float()
    norms = torch.empty(16)
    lk.langevin_step_(x, x, grad_norm_out=norms, **KW)
    torch.testing.assert_close(norms, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad, error, pattern", [
    (torch.empty(5), ValueError, r"grad_norm_out has shape \(5,\) but must be \(6,\)"),
    (torch.empty(6, 1), ValueError, r"grad_norm_out has shape \(6, 1\) but must be \(6,\)"),
    (torch.empty(6, dtype=torch.float64), TypeError, "grad_norm_out has dtype torch.float64 but must be torch.float32"),
    (torch.empty(6, device="meta"), ValueError, "grad_norm_out is on meta but x is on cpu"),
    (torch.empty(12)[::2], ValueError, "grad_norm_out must be contiguous"),
])
def test_bad_grad_norm_out_is_refused_before_anything_is_written(bad, error, pattern):
    x = torch.zeros(6, 4)
    with pytest.raises(error, match=pattern):
        lk.langevin_step_(x, torch.ones(6, 4), grad_norm_out=bad, **KW)
    assert torch.equal(x, torch.zeros(6, 4))


def test_scalar_state_has_no_chains():
    with pytest.raises(ValueError, match="needs x with a chain dimension"):
        lk.langevin_step_(torch.zeros(()), torch.zeros(()), grad_norm_out=torch.empty(1), **KW)


def test_opcheck_with_grad_norm_out():
    x, g = torch.randn(6, 4), torch.randn(6, 4)
    torch.library.opcheck(torch.ops.langevin_kernels.langevin_step_.default,
                          (x, g, 0.1, 0.5, 3, 11, 0.0, -2.0, 2.0, None, None, torch.empty(6)))


def test_compiled_call_matches_eager():
    x, g = torch.randn(6, 4), torch.randn(6, 4)

    def step(x, g, norms):
        lk.langevin_step_(x, g, grad_norm_out=norms, **KW)
        return x, norms

    want = step(x.clone(), g, torch.empty(6))
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x.clone(), g, torch.empty(6))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_chain_stats_use_the_op_norms():
    # A plain ULA chain with stats records the op's norms; a grad-clipped chain (large clip,
    # same dynamics) computes them itself: both must agree.
    def energy(x):
        return 0.5 * (x * x).sum(1)

    x0 = torch.randn(32, 5, generator=torch.Generator().manual_seed(2))
    fused = lk.DataChain(energy, n_steps=20, step_size=0.05, noise_scale=0.3, seed=1)
    separate = lk.DataChain(energy, n_steps=20, step_size=0.05, noise_scale=0.3, seed=1, grad_clip=1e6)
    assert torch.equal(fused.run(x0), separate.run(x0))
    torch.testing.assert_close(fused.stats.grad_norm_mean, separate.stats.grad_norm_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(fused.stats.energy_mean, separate.stats.energy_mean, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_norms_on_cuda(backend, dtype):
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("triton takes no float64 states")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=gen, device="cuda").to(dtype)
    g = torch.randn(64, 3, 8, 8, generator=gen, device="cuda").to(dtype)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    norms = torch.full((64,), float("nan"), dtype=wide, device="cuda")
    with lk.use_backend(backend):
        plain = lk.langevin_step(x, g, **KW)
        lk.langevin_step_(x, g, grad_norm_out=norms, **KW)
    assert torch.equal(x, plain)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5   # as on the CPU (float32 sums of 192 squares)
    torch.testing.assert_close(norms.double(), _reference_norms(g), rtol=rtol, atol=0)
