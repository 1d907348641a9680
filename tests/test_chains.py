"""DataChain / LatentChain / ReplayBuffer / schedules: exactness, options, errors (fast tests).

The statistical sampler tests (moments against closed forms) are in test_chains_stats.py.
"""
import math

import pytest
import torch

import langevin_kernels as lk
from langevin_kernels.chains import ACCEPT_SEED_XOR, DataChain, LatentChain
from langevin_kernels.replay import ReplayBuffer
from langevin_kernels.schedules import Constant, CosineDecay, ExponentialDecay, Linear, resolve_schedule

HAS_CUDA = torch.cuda.is_available()


def small_mlp(dim=4, hidden=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.SiLU(),
                               torch.nn.Linear(hidden, 1)).to(dtype)


def mlp_energy(net):
    return lambda x: net(x).squeeze(-1)


def quadratic_energy(x):
    return 0.5 * x.pow(2).sum(1)


def eager_grad(energy, x):
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(xr).sum(), xr)
    return g


# ----------------------------------------------------------------------------- exactness

def test_fused_chain_equals_eager_loop_with_same_noise():
    net = small_mlp()
    energy = mlp_energy(net)
    n_steps, start = 5, 123
    steps, noises = Linear(0.02, 0.005), [0.1, 0.2, 0.05, 0.1, 0.3]
    chain = DataChain(energy, n_steps=n_steps, step_size=steps, noise_scale=noises, clamp=(-1.5, 1.5),
                      seed=7, offset=start)
    x0 = torch.randn(64, 4)
    got = chain.run(x0)

    x, advance = x0.clone(), lk.noise_offset_advance(x0.numel())
    for k, a in enumerate(steps.values(n_steps)):
        xi = lk.philox_normal(x.numel(), seed=7, offset=start + k * advance).reshape(x.shape)
        x = (x - a * eager_grad(energy, x) + noises[k] * xi).clamp(-1.5, 1.5)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
    assert chain.offset == start + n_steps * advance


def test_same_seed_same_chain_and_runs_never_reuse_noise():
    energy = mlp_energy(small_mlp())
    x0 = torch.randn(32, 4)
    make = lambda seed: DataChain(energy, n_steps=3, step_size=0.01, noise_scale=0.1, seed=seed)
    a, b = make(5), make(5)
    first = a.run(x0)
    torch.testing.assert_close(first, b.run(x0), rtol=0, atol=0)
    assert not torch.equal(first, a.run(x0)), "a second run must draw new noise"
    assert not torch.equal(first, make(6).run(x0)), "another seed must give another chain"
    c = make(5)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.run(x0), a.run(x0), rtol=0, atol=0)


def test_x0_is_not_modified():
    x0 = torch.randn(8, 4)
    copy = x0.clone()
    DataChain(quadratic_energy, n_steps=2, step_size=0.1, noise_scale=0.1).run(x0)
    assert torch.equal(x0, copy)


def test_mala_equals_hand_written_metropolis_loop():
    # Target N(0, diag(1, 4)) with a rough step: many rejections, so the mask matters.
    var = torch.tensor([1.0, 4.0], dtype=torch.float64)
    energy = lambda x: 0.5 * (x.pow(2) / var).sum(1)
    a, s, seed, n_steps = 0.6, math.sqrt(1.2), 3, 6
    chain = DataChain(energy, n_steps=n_steps, step_size=a, noise_scale=s, mala=True, seed=seed)
    x0 = torch.randn(256, 2, dtype=torch.float64)
    got = chain.run(x0)

    x, advance = x0.clone(), lk.noise_offset_advance(x0.numel())
    log_q = lambda to, frm: -((to - frm + a * frm / var) ** 2).sum(1) / (2 * s * s)
    accepted = []
    for k in range(n_steps):
        xi = lk.philox_normal(x.numel(), seed=seed, offset=k * advance, dtype=torch.float64).reshape(x.shape)
        y = x - a * x / var + s * xi
        log_alpha = energy(x) - energy(y) + log_q(x, y) - log_q(y, x)
        u = torch.special.ndtr(lk.philox_normal(x.shape[0], seed=seed ^ ACCEPT_SEED_XOR, offset=k * advance,
                                                dtype=torch.float64))
        accept = torch.log(u) < log_alpha
        accepted.append(accept.double().mean())
        x = torch.where(accept[:, None], y, x)
    torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)
    acceptance = torch.tensor(chain.stats.to_dict()["acceptance"], dtype=torch.float64)
    torch.testing.assert_close(acceptance, torch.stack(accepted), rtol=0, atol=1e-6)
    assert 0.0 < chain.stats.to_dict()["acceptance_rate"] < 1.0


def test_trajectory_holds_thinned_states():
    chain = DataChain(quadratic_energy, n_steps=6, step_size=0.1, noise_scale=0.2, seed=1)
    x0 = torch.randn(10, 3)
    x, traj = chain.run(x0, return_trajectory=True, thin=2)
    assert traj.shape == (4, 10, 3)                     # x0, then after steps 2, 4, 6
    assert torch.equal(traj[0], x0) and torch.equal(traj[-1], x)
    chain.offset = 0
    torch.testing.assert_close(DataChain(quadratic_energy, n_steps=2, step_size=0.1, noise_scale=0.2,
                                         seed=1).run(x0), traj[1], rtol=0, atol=0)


# ----------------------------------------------------------------------------- options

def test_clamp_is_respected_by_ula_and_mala():
    energy = lambda x: -3.0 * x.sum(1)                  # pushes every coordinate up, out of the box
    x0 = torch.zeros(200, 3)
    ula = DataChain(energy, n_steps=20, step_size=0.1, noise_scale=0.5, clamp=(-1.0, 1.0)).run(x0)
    assert ula.min() >= -1.0 and ula.max() <= 1.0 and (ula == 1.0).any()
    mala = DataChain(energy, n_steps=20, step_size=0.1, noise_scale=0.5, clamp=(-1.0, 1.0), mala=True).run(x0)
    assert mala.min() >= -1.0 and mala.max() <= 1.0


def test_grad_clip_caps_each_chains_step():
    # Gradient of chain i is scale_i * ones(4): norm 2 * scale_i. With noise 0 the step is a * clipped grad.
    scale = torch.tensor([0.1, 1.0, 10.0, 100.0])
    energy = lambda x: (x * scale[:, None]).sum(1)
    a, clip = 0.1, 1.0
    x0 = torch.zeros(4, 4)
    x1 = DataChain(energy, n_steps=1, step_size=a, noise_scale=0.0, grad_clip=clip).run(x0)
    step_norms = (x1 - x0).norm(dim=1)
    expected = a * torch.clamp(2 * scale, max=clip)     # chains under the cap move a*|g|, others a*clip
    torch.testing.assert_close(step_norms, expected, rtol=1e-6, atol=1e-7)


def test_step_size_and_noise_schedules_apply_per_step():
    # E = |x|^2 / 2 and no noise: x_K = x0 * prod_k (1 - a_k).
    sched = ExponentialDecay(0.2, 0.5)
    x0 = torch.randn(5, 2)
    x = DataChain(quadratic_energy, n_steps=4, step_size=sched, noise_scale=0.0).run(x0)
    factor = math.prod(1 - a for a in sched.values(4))
    torch.testing.assert_close(x, x0 * factor, rtol=1e-6, atol=1e-7)
    # E = 0: x_K = x0 + sum_k s_k xi_k with the chain's noise stream.
    flat = lambda x: torch.zeros(x.shape[0], dtype=x.dtype) + 0.0 * x.sum(1)
    noise = CosineDecay(1.0, 0.1)
    x = DataChain(flat, n_steps=3, step_size=0.0, noise_scale=noise, seed=4).run(x0)
    adv = lk.noise_offset_advance(x0.numel())
    want = x0 + sum(s * lk.philox_normal(10, seed=4, offset=k * adv).reshape(5, 2)
                    for k, s in enumerate(noise.values(3)))
    torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-6)


def test_schedule_values_and_errors():
    assert Constant(0.3).values(3) == (0.3, 0.3, 0.3)
    assert Linear(1.0, 0.0).values(5) == (1.0, 0.75, 0.5, 0.25, 0.0)
    assert CosineDecay(1.0, 0.0).values(3) == pytest.approx((1.0, 0.5, 0.0))
    assert ExponentialDecay(1.0, 0.5).values(3) == (1.0, 0.5, 0.25)
    assert Linear(2.0, 1.0).values(1) == (2.0,)
    with pytest.raises(ValueError, match="n_steps=3"):
        resolve_schedule("step_size", [0.1, 0.2], 3)
    with pytest.raises(ValueError, match="noise_scale at step 2"):
        resolve_schedule("noise_scale", Linear(1.0, -1.0), 3)
    with pytest.raises(TypeError, match="step_size must be"):
        resolve_schedule("step_size", "0.1", 3)


def test_stats_stay_on_device_and_count_nonfinite_chains():
    def energy(x):                                      # NaN (and NaN gradient) where x[:, 0] < -5
        return 0.5 * x.pow(2).sum(1) + torch.sqrt(x[:, 0] + 5)

    chain = DataChain(energy, n_steps=3, step_size=0.1, noise_scale=0.1, on_nonfinite="ignore")
    x0 = torch.ones(4, 2)
    x0[0, 0] = -10.0                                    # chain 0 is broken (and stays NaN)
    chain.run(x0)
    assert isinstance(chain.stats.energy_mean, torch.Tensor) and chain.stats.energy_mean.shape == (3,)
    assert chain.stats.acceptance is None and chain.stats.acceptance_rate is None
    stats = chain.stats.to_dict()
    assert stats["nonfinite_chains"] == [1, 1, 1]
    clean = DataChain(quadratic_energy, n_steps=1, step_size=0.1, noise_scale=0.0)
    clean.run(torch.ones(4, 2))
    assert clean.stats.to_dict()["energy_mean"] == [pytest.approx(1.0)]          # 0.5 * |(1, 1)|^2
    assert clean.stats.to_dict()["grad_norm_mean"] == [pytest.approx(math.sqrt(2))]
    assert DataChain(quadratic_energy, n_steps=1, step_size=0.1, noise_scale=0.0,
                     track_stats=False).run(torch.ones(4, 2)) is not None


def test_mala_rejects_nonfinite_proposals():
    # Energy is NaN beyond |x| > 2: proposals there must be rejected, states stay finite.
    energy = lambda x: torch.where(x.abs().amax(1) > 2, torch.full_like(x[:, 0], float("nan")),
                                   0.5 * x.pow(2).sum(1))
    chain = DataChain(energy, n_steps=20, step_size=0.5, noise_scale=1.0, mala=True, seed=2)
    x = chain.run(torch.zeros(500, 2))
    assert torch.isfinite(x).all() and x.abs().max() <= 2
    assert sum(chain.stats.to_dict()["nonfinite_chains"]) > 0


# ----------------------------------------------------------------------------- autograd / compile

def test_differentiable_chain_matches_finite_differences():
    # float64, three steps; the noise is a deterministic function of (seed, offset), so resetting
    # the offset before each evaluation makes the chain a smooth function of (x0, theta).
    def chain_output(x0, theta):
        energy = lambda x: (0.5 * theta * x.pow(2) + 0.1 * x.pow(4)).sum(1)
        chain = DataChain(energy, n_steps=3, step_size=0.05, noise_scale=0.3, seed=11, differentiable=True)
        return chain.run(x0)

    x0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chain_output, (x0, theta), eps=1e-6, atol=1e-7)


def test_non_differentiable_chain_keeps_no_graph():
    net = small_mlp()
    x0 = torch.randn(8, 4, requires_grad=True)
    x = DataChain(mlp_energy(net), n_steps=2, step_size=0.01, noise_scale=0.1).run(x0)
    assert not x.requires_grad and all(p.grad is None for p in net.parameters())


def test_step_compiles_fullgraph_with_mlp_energy():
    torch._dynamo.reset()
    net = small_mlp()
    chain = DataChain(mlp_energy(net), n_steps=4, step_size=0.01, noise_scale=0.1, clamp=(-2, 2), grad_clip=5.0,
                      seed=9)
    x = torch.randn(16, 4)
    # aot_eager: dynamo must capture energy + autograd.grad + op in one graph (fullgraph) and AOT
    # autograd must trace the op's fake kernel; inductor code generation is tested in the slow file.
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(chain.step, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x, 2), chain.step(x, 2), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- LatentChain

def test_latent_chain_equals_eager_loop_with_fused_prior():
    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
    sigma, a, s = 0.3, 0.01, 0.1
    z0, x_obs = torch.randn(16, 3), torch.randn(16, 5)
    z = LatentChain(gen, sigma=sigma, n_steps=4, step_size=a, noise_scale=s, seed=2).run(z0, x_obs)

    def likelihood(zz):
        return (x_obs - gen(zz)).pow(2).sum(1) / (2 * sigma ** 2)

    want, advance = z0.clone(), lk.noise_offset_advance(z0.numel())
    for k in range(4):
        xi = lk.philox_normal(want.numel(), seed=2, offset=k * advance).reshape(want.shape)
        want = want - a * (eager_grad(likelihood, want) + want) + s * xi
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors

def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_steps"):
        DataChain(quadratic_energy, n_steps=0, step_size=0.1, noise_scale=0.1)
    with pytest.raises(ValueError, match="grad_clip"):
        DataChain(quadratic_energy, n_steps=1, step_size=0.1, noise_scale=0.1, grad_clip=-1)
    with pytest.raises(ValueError, match="mala=True needs noise_scale > 0"):
        DataChain(quadratic_energy, n_steps=2, step_size=0.1, noise_scale=[0.1, 0.0], mala=True)
    with pytest.raises(ValueError, match="capture_graph=True cannot be combined"):
        DataChain(quadratic_energy, n_steps=1, step_size=0.1, noise_scale=0.1, capture_graph=True,
                  differentiable=True)
    with pytest.raises(ValueError, match="one value per chain"):
        DataChain(lambda x: x.sum(), n_steps=1, step_size=0.1, noise_scale=0.1).run(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="clamp"):
        DataChain(quadratic_energy, n_steps=1, step_size=0.1, noise_scale=0.1, clamp=(1, 0))
    with pytest.raises(ValueError, match="sigma"):
        LatentChain(lambda z: z, sigma=0.0, n_steps=1, step_size=0.1, noise_scale=0.1)
    with pytest.raises(ValueError, match="one observation per chain"):
        LatentChain(lambda z: z, sigma=1.0, n_steps=1, step_size=0.1, noise_scale=0.1).run(torch.zeros(3, 2),
                                                                                          torch.zeros(4, 2))


def test_capture_graph_on_cpu_raises_clear_error():
    chain = DataChain(quadratic_energy, n_steps=2, step_size=0.1, noise_scale=0.1, capture_graph=True)
    with pytest.raises(ValueError, match="capture_graph=True needs CUDA tensors"):
        chain.run(torch.zeros(4, 2))


# ----------------------------------------------------------------------------- ReplayBuffer

def test_replay_buffer_sample_update_and_reinit_fraction():
    init = lambda n: torch.full((n, 2), -1.0)
    buf = ReplayBuffer(1000, (2,), reinit_prob=0.25, init_fn=init, seed=0)
    buf.storage.fill_(5.0)                               # mark stored rows apart from fresh ones
    x, idx = buf.sample(800)
    assert x.shape == (800, 2) and idx.unique().numel() == 800   # no index twice in a batch
    fresh = (x[:, 0] == -1.0).double().mean().item()
    # Binomial(800, 0.25): sd = sqrt(0.25 * 0.75 / 800) = 0.0153; 5 sd = 0.077.
    assert abs(fresh - 0.25) < 0.077
    buf.update(idx, x + 1.0)
    torch.testing.assert_close(buf.storage[idx], x + 1.0)
    untouched = torch.ones(1000, dtype=torch.bool)
    untouched[idx] = False
    assert (buf.storage[untouched] == 5.0).all()


def test_replay_buffer_is_reproducible_and_checks_shapes():
    init = lambda n: torch.randn(n, 3)
    torch.manual_seed(0)
    a = ReplayBuffer(50, (3,), reinit_prob=0.0, init_fn=init, seed=3)
    b = ReplayBuffer(50, (3,), reinit_prob=0.0, init_fn=init, seed=3)
    b.load_state_dict(a.state_dict())
    xa, ia = a.sample(10)
    xb, ib = b.sample(10)
    assert torch.equal(ia, ib) and torch.equal(xa, xb)
    with pytest.raises(ValueError, match="init_fn"):
        ReplayBuffer(10, (2,), reinit_prob=0.1, init_fn=lambda n: torch.zeros(n, 3))
    with pytest.raises(ValueError, match="batch"):
        a.sample(51)
    with pytest.raises(ValueError, match="reinit_prob"):
        ReplayBuffer(10, (3,), reinit_prob=1.5, init_fn=init)


# ----------------------------------------------------------------------------- CUDA graphs

@pytest.mark.parametrize("mala", [False, True])
def test_device_rng_state_path_equals_integer_offsets(mala):
    # What a captured graph runs, without the graph: seeds and base offsets read from an int64
    # tensor (the op's rng_state), step k passing the constant k * advance. Checkable on CPU.
    energy = mlp_energy(small_mlp())
    chain = DataChain(energy, n_steps=4, step_size=0.02, noise_scale=0.2, mala=mala, seed=3, offset=40)
    x0 = torch.randn(32, 4)
    rng_state = torch.tensor([[3, 40], [(3 ^ ACCEPT_SEED_XOR) - (1 << 64), 40]], dtype=torch.int64)
    from_state, _, stats = chain._loop(x0.clone(), 0, rng_state, False, 1)
    torch.testing.assert_close(from_state, chain.run(x0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.table, chain.stats.table, rtol=1e-6, atol=1e-6, equal_nan=True)


def _cuda_chain(mala, capture, seed=1):
    torch.manual_seed(0)
    net = small_mlp().cuda()
    return DataChain(mlp_energy(net), n_steps=5, step_size=0.02, noise_scale=0.2, clamp=(-2, 2), mala=mala,
                     seed=seed, offset=17, capture_graph=capture)


@pytest.mark.gpu
@pytest.mark.parametrize("mala", [False, True])
def test_captured_chain_equals_uncaptured_and_replays_draw_fresh_noise(mala):
    x0 = torch.randn(256, 4, device="cuda")
    captured, plain = _cuda_chain(mala, True), _cuda_chain(mala, False)
    first, second = captured.run(x0), captured.run(x0)
    torch.testing.assert_close(first, plain.run(x0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, plain.run(x0), rtol=1e-5, atol=1e-5)
    assert not torch.equal(first, second), "each replay must draw fresh noise"
    assert captured.offset == plain.offset
    torch.testing.assert_close(captured.stats.table, plain.stats.table, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.gpu
def test_captured_chain_follows_offset_changes_and_latent_chain_captures():
    x0 = torch.randn(64, 4, device="cuda")
    captured, plain = _cuda_chain(False, True), _cuda_chain(False, False)
    captured.run(x0)
    captured.offset = plain.offset = 1000
    torch.testing.assert_close(captured.run(x0), plain.run(x0), rtol=1e-5, atol=1e-5)

    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5)).cuda()
    make = lambda capture: LatentChain(gen, sigma=0.3, n_steps=4, step_size=0.01, noise_scale=0.1, seed=2,
                                       capture_graph=capture)
    lat_c, lat_p = make(True), make(False)
    z0 = torch.randn(16, 3, device="cuda")
    for _ in range(2):                                   # new observations each replay
        x_obs = torch.randn(16, 5, device="cuda")
        torch.testing.assert_close(lat_c.run(z0, x_obs), lat_p.run(z0, x_obs), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_replay_buffer_stays_on_device():
    buf = ReplayBuffer(100, (2,), reinit_prob=0.5, init_fn=lambda n: torch.zeros(n, 2, device="cuda"),
                       device="cuda")
    x, idx = buf.sample(10)
    assert x.is_cuda and idx.is_cuda
    buf.update(idx, x + 1)
