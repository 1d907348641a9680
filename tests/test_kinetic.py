"""The kinetic (underdamped) Langevin op and KineticChain: the fused call sequence against a
textbook BAOAB written here, the noise-stream contract, opcheck/autograd/compile, the chain's
options, and statistical validation (stationary bias, ESS per gradient against ULA)."""
import math

import numpy as np
import pytest
import torch

import langevin_kernels as lk
from langevin_kernels.kinetic_ops import kinetic_step, kinetic_step_

H, GAMMA = 0.1, 1.5


def _textbook_baoab(x, v, grad_fn, h, gamma, noises):
    """Plain BAOAB (Leimkuhler & Matthews 2013), one gradient per half-kick, unit mass."""
    c1 = math.exp(-gamma * h)
    c2 = math.sqrt(1.0 - c1 * c1)
    for xi in noises:
        v = v - 0.5 * h * grad_fn(x)          # B
        x = x + 0.5 * h * v                   # A
        v = c1 * v + c2 * xi                  # O (exact OU)
        x = x + 0.5 * h * v                   # A
        v = v - 0.5 * h * grad_fn(x)          # B
    return x, v


def _quadratic_grad(x):
    return x * torch.linspace(0.5, 4.0, x.shape[-1], dtype=x.dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_fused_calls_are_textbook_baoab(dtype, tol):
    # kick h/2 first, then h (two half-kicks merged); a last half-kick synchronises v.
    gen = torch.Generator().manual_seed(0)
    x0, v0 = (torch.randn(16, 5, generator=gen, dtype=dtype) for _ in range(2))
    noises = [torch.randn(16, 5, generator=gen, dtype=dtype) for _ in range(20)]
    x_ref, v_ref = _textbook_baoab(x0, v0, _quadratic_grad, H, GAMMA, noises)
    x, v = x0.clone(), v0.clone()
    for k, xi in enumerate(noises):
        kinetic_step_(x, v, _quadratic_grad(x), step_size=H, friction=GAMMA, kick=H / 2 if k == 0 else H, noise=xi)
    v_sync = v - 0.5 * H * _quadratic_grad(x)
    assert ((x - x_ref).abs().max() / x_ref.abs().max()).item() < tol
    assert ((v_sync - v_ref).abs().max() / v_ref.abs().max()).item() < tol


def test_noise_is_the_stream_at_seed_and_offset():
    x, v, g = (torch.randn(7, 9) for _ in range(3))
    offset = 5 * lk.noise_offset_advance(x.numel())
    xi = lk.philox_normal(x.numel(), seed=3, offset=offset).reshape(x.shape)
    drawn = kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=H, seed=3, offset=offset)
    given = kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=H, noise=xi)
    state = torch.tensor([3, offset - 2], dtype=torch.int64)
    device_side = kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=H, offset=2, rng_state=state)
    for a, b, c in zip(drawn, given, device_side):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_in_place_equals_out_of_place_and_writes_every_element():
    x, v, g = (torch.randn(33, 3) for _ in range(3))
    want = kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=H, seed=1, offset=0)
    xp, vp = x.clone(), v.clone()
    kinetic_step_(xp, vp, g, step_size=H, friction=GAMMA, kick=H, seed=1, offset=0)
    assert torch.equal(xp, want[0]) and torch.equal(vp, want[1])
    assert torch.isfinite(want[0]).all() and torch.isfinite(want[1]).all()


def test_non_contiguous_and_empty_inputs():
    x, v, g = (torch.randn(6, 8) for _ in range(3))
    want = kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=H, seed=2, offset=0)
    xt, vt, gt = (t.t().contiguous().t() for t in (x, v, g))    # same values, column-major strides
    assert not xt.is_contiguous()
    kinetic_step_(xt, vt, gt, step_size=H, friction=GAMMA, kick=H, seed=2, offset=0)
    assert torch.equal(xt, want[0]) and torch.equal(vt, want[1])
    empty = torch.empty(0, 3)
    out = kinetic_step(empty, empty, empty, step_size=H, friction=GAMMA, kick=H, seed=0, offset=0)
    assert out[0].shape == (0, 3) and out[1].shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_states_compute_in_float32(dtype):
    x, v, g = (torch.randn(64, 4) for _ in range(3))
    want = kinetic_step(*(t.to(dtype).float() for t in (x, v, g)), step_size=H, friction=GAMMA, kick=H, seed=0,
                        offset=0)
    got = kinetic_step(*(t.to(dtype) for t in (x, v, g)), step_size=H, friction=GAMMA, kick=H, seed=0, offset=0)
    for a, b in zip(got, want):
        assert a.dtype == dtype and torch.equal(a, b.to(dtype))


@pytest.mark.parametrize("kwargs,match", [
    (dict(friction=0.0), r"friction=0.0 is not allowed"),
    (dict(friction=-1.0), r"friction=-1.0"),
    (dict(step_size=0.0), r"step_size=0.0 is not allowed"),
    (dict(kick=float("nan")), r"kick=nan"),
])
def test_bad_coefficients_name_the_argument(kwargs, match):
    x = torch.zeros(4)
    args = dict(step_size=H, friction=GAMMA, kick=H, seed=0, offset=0) | kwargs
    with pytest.raises(ValueError, match=match):
        kinetic_step(x, x, x, **args)


def test_bad_tensors_name_the_argument():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match=r"v has shape \(3,\) but x has shape \(4,\)"):
        kinetic_step(x, torch.zeros(3), x, step_size=H, friction=GAMMA, kick=H, seed=0)
    with pytest.raises(TypeError, match="v has dtype torch.float64"):
        kinetic_step(x, x.double(), x, step_size=H, friction=GAMMA, kick=H, seed=0)
    with pytest.raises(ValueError, match="seed is required"):
        kinetic_step(x, x, x, step_size=H, friction=GAMMA, kick=H)


def test_opcheck_both_ops():
    x, v, g, xi = (torch.randn(5, 3) for _ in range(4))
    args = (H, GAMMA, H, 4, 8)
    torch.library.opcheck(torch.ops.langevin_kernels.kinetic_step.default, (x, v, g, *args, None, None))
    torch.library.opcheck(torch.ops.langevin_kernels.kinetic_step.default, (x, v, g, *args, xi, None))
    torch.library.opcheck(torch.ops.langevin_kernels.kinetic_step_.default,
                          (x.clone(), v.clone(), g, *args, None, None))


def test_gradcheck_in_x_v_grad_and_noise():
    x, v, g, xi = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(
        lambda *t: kinetic_step(*t[:3], step_size=H, friction=GAMMA, kick=0.7 * H, noise=t[3]), (x, v, g, xi))


def test_compiles_fullgraph():
    x, v, g = (torch.randn(8, 2) for _ in range(3))

    def step(x, v, g):
        return kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=H, seed=0, offset=4)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(x, v, g), step(x, v, g)):
        assert torch.equal(a, b)


# --- the chain -------------------------------------------------------------------------

LAMBDAS_2D = torch.tensor([1.0, 25.0])


def _energy_2d(x):
    return 0.5 * (LAMBDAS_2D * x * x).sum(1)


def test_chain_is_the_fused_op_sequence_and_velocities_persist():
    # Two runs of K steps continue the same BAOAB chain as one run of 2K (velocities and the
    # owed half-kick persist, the offset advances), with the noise of docs/noise.md.
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    one = lk.KineticChain(_energy_2d, n_steps=20, step_size=H, friction=GAMMA, seed=5)
    two = lk.KineticChain(_energy_2d, n_steps=10, step_size=H, friction=GAMMA, seed=5)
    want = one.run(x0)
    got = two.run(two.run(x0))
    assert torch.equal(got, want) and torch.equal(two.velocity, one.velocity) and two.offset == one.offset
    # by hand: fresh velocities from the velocity stream, then one op call per gradient
    x = x0.clone()
    v = lk.philox_normal(x.numel(), seed=5 ^ lk.chains.VELOCITY_SEED_XOR, offset=0).reshape(x.shape)
    advance = lk.noise_offset_advance(x.numel())
    for k in range(20):
        kinetic_step_(x, v, LAMBDAS_2D * x, step_size=H, friction=GAMMA, kick=H / 2 if k == 0 else H, seed=5,
                      offset=k * advance)
    assert torch.allclose(x, want, rtol=1e-6, atol=1e-6)


def test_resample_velocity_and_reset():
    x0 = torch.zeros(4, 2)
    chain = lk.KineticChain(_energy_2d, n_steps=3, step_size=H, friction=GAMMA, resample_velocity=True)
    chain.run(x0)
    first = chain.velocity.clone()
    chain.run(x0)   # a new offset: a different fresh draw, not the persisted velocity
    assert not torch.equal(first, chain.velocity)


def test_chain_options_schedule_clamp_stats():
    chain = lk.KineticChain(_energy_2d, n_steps=30, step_size=lk.Linear(0.2, 0.05), friction=1.0, clamp=(-0.3, 0.3))
    x = chain.run(torch.full((16, 2), 0.25))
    assert x.abs().max() <= 0.3
    table = chain.stats.to_dict()
    assert len(table["energy_mean"]) == 30 and all(math.isfinite(e) for e in table["grad_norm_mean"])


def test_chain_errors():
    with pytest.raises(ValueError, match="friction=0.0 is not allowed"):
        lk.KineticChain(_energy_2d, n_steps=3, step_size=H, friction=0.0)
    with pytest.raises(ValueError, match="step 2: step_size=0.0 is not allowed"):
        lk.KineticChain(_energy_2d, n_steps=3, step_size=[0.1, 0.1, 0.0], friction=1.0)
    for option in ("compile", "capture_graph", "differentiable"):
        with pytest.raises(NotImplementedError, match=option):
            lk.KineticChain(_energy_2d, n_steps=3, step_size=H, friction=1.0, **{option: True})


def test_chain_nonfinite_guard():
    def exploding(x):
        return 0.5 * (x * x).sum(1) * torch.where(torch.arange(x.shape[0]) == 2, -1e30, 1.0)
    chain = lk.KineticChain(exploding, n_steps=40, step_size=0.5, friction=1.0)
    with pytest.raises(lk.NonFiniteChainError) as info:
        chain.run(torch.ones(4, 2))
    assert info.value.chains.tolist() == [2]
    x = lk.KineticChain(exploding, n_steps=40, step_size=0.5, friction=1.0, on_nonfinite="reinit").run(
        torch.ones(4, 2))
    assert torch.equal(x[2], torch.ones(2))


# --- validation ----------------------------------------------------------------------

def _stationary_covariance(lam, h, gamma, kick_factor=1.0):
    """Exact stationary covariance of (x, pre-kick v) under the fused call with kick = h on the
    1-D Gaussian E = lam x^2 / 2: the chain is linear, z' = M z + n xi, so Sigma = M Sigma M^T + n n^T."""
    c1 = math.exp(-gamma * h)
    c2 = math.sqrt(1 - c1 * c1)
    kick = np.array([[1.0, 0.0], [-h * lam, 1.0]])
    drift = np.array([[1.0, h / 2], [0.0, 1.0]])
    ou = np.array([[1.0, 0.0], [0.0, c1]])
    m = drift @ ou @ drift @ kick
    n = drift @ np.array([0.0, c2])
    sigma = np.linalg.solve(np.eye(4) - np.kron(m, m), np.outer(n, n).reshape(-1)).reshape(2, 2)
    return sigma


def _synchronised_velocity_variance(lam, h, gamma):
    """Variance of BAOAB's velocity after its closing half-kick, v - h/2 lam x, from the exact law."""
    sigma = _stationary_covariance(lam, h, gamma)
    return sigma[1, 1] - h * lam * sigma[0, 1] + (0.5 * h * lam) ** 2 * sigma[0, 0]


def test_baoab_stationary_bias_orders():
    # Derived (Lyapunov solution of the linear fused map): on a Gaussian BAOAB's configurational
    # variance is exact for every stable h (Leimkuhler & Matthews), and so is the stored pre-kick
    # velocity's; the synchronised velocity (after the closing half-kick) has an O(h^2) bias, so
    # bias(h) / bias(h/2) -> 4 as h -> 0 (3.5..4.5 at h = 0.1, h sqrt(lam) = 0.5).
    lam = 25.0
    for h in (0.2, 0.1, 0.05):
        sigma = _stationary_covariance(lam, h, 2.0)
        assert abs(sigma[0, 0] * lam - 1) < 1e-9 and abs(sigma[1, 1] - 1) < 1e-9
    bias = [_synchronised_velocity_variance(lam, h, 2.0) - 1 for h in (0.1, 0.05)]
    assert bias[0] < 0 and 3.5 < bias[0] / bias[1] < 4.5   # it is 1 - h^2 lam / 4: ratio 4


@pytest.mark.slow
def test_sampler_variances_match_the_integrators_stationary_law():
    # Empirical variances of the chain at h and h/2 against the exact law above: x variance 1/lam
    # (no bias) and the synchronised stiff-mode velocity's bias 1 - h^2 lam/4 - 1 (-25 % at h = 0.2, -6 % at 0.1).
    # 64 chains x 40 runs of 100 steps (>> the ~10-step correlation time) give ~2560 nearly
    # independent draws per h: variance estimates within ~3 % (1 sigma); tolerance 12 %.
    measured_bias = []
    for h in (0.2, 0.1):
        chain = lk.KineticChain(_energy_2d, n_steps=100, step_size=h, friction=2.0, seed=11, track_stats=False,
                                on_nonfinite="ignore")
        x = chain.run(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) / LAMBDAS_2D.sqrt())
        xs, vs = [], []
        for _ in range(40):
            x = chain.run(x)
            xs.append(x)
            vs.append(chain.velocity - 0.5 * h * LAMBDAS_2D * x)
        x_var = torch.cat(xs).var(0) * LAMBDAS_2D
        v_var = torch.cat(vs).var(0)[1].item()
        predicted = _synchronised_velocity_variance(25.0, h, 2.0)
        assert (x_var - 1).abs().max() < 0.12, (h, x_var)
        assert abs(v_var / predicted - 1) < 0.12, (h, v_var, predicted)
        measured_bias.append(v_var - 1)
    print(f"synchronised velocity variance bias: h=0.2 {measured_bias[0]:.3f}, h=0.1 {measured_bias[1]:.3f}, "
          f"ratio {measured_bias[0] / measured_bias[1]:.2f}")
    assert measured_bias[0] < 2 * measured_bias[1] < 0   # O(h^2): halving h shrinks it ~4x


def _ess_per_gradient(traj, coordinate):
    ess = lk.effective_sample_size(traj[:, :, coordinate:coordinate + 1], method="mean")
    return ess.item() / (traj.shape[0] * traj.shape[1])


@pytest.mark.slow
def test_kinetic_ess_per_gradient_beats_ula_on_ill_conditioned_gaussian():
    # 10-D Gaussian, curvatures 1..100 (condition number 100); slowest coordinate: curvature 1.
    # ULA's drift step a must stay below 2/100 (stable) and its variance bias on curvature lam
    # is a*lam/2 relative (1/(1 - a lam/2)); BAOAB's configurational variance is exact on a
    # Gaussian (test above), so the kinetic chain has the smaller bias at any stable h. ULA's
    # slowest mode decorrelates at rate a*1 per gradient; BAOAB with critical friction gamma = 2
    # at rate about h per gradient: h = 0.15 vs a = 0.01 gives ~10x, so >= 3x holds with margin.
    torch.set_num_threads(1)
    lam = torch.logspace(0, 2, 10)

    def energy(x):
        return 0.5 * (lam * x * x).sum(1)

    x0 = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) / lam.sqrt()
    kinetic = lk.KineticChain(energy, n_steps=3000, step_size=0.15, friction=2.0, seed=1, track_stats=False,
                              on_nonfinite="ignore")
    _, traj_k = kinetic.run(x0, return_trajectory=True)
    a = 0.01
    ula = lk.DataChain(energy, n_steps=3000, step_size=a, noise_scale=math.sqrt(2 * a), seed=1, track_stats=False,
                       on_nonfinite="ignore")
    _, traj_u = ula.run(x0, return_trajectory=True)
    burn = 300
    ratio = _ess_per_gradient(traj_k[burn:], 0) / _ess_per_gradient(traj_u[burn:], 0)
    bias_k = (traj_k[burn:].var(dim=(0, 1)) * lam - 1).abs().max().item()
    bias_u = (traj_u[burn:].var(dim=(0, 1)) * lam - 1).abs().max().item()
    print(f"ESS/grad ratio kinetic/ULA on the slowest coordinate: {ratio:.1f}; max rel variance bias "
          f"kinetic {bias_k:.3f}, ULA {bias_u:.3f}")
    assert ratio >= 3.0
    assert bias_k <= bias_u
