"""The chain divergence guard (on_nonfinite, reinit_fn, NonFiniteChainError) and property tests
of DataChain / LatentChain against an eager loop of the op.

The property tests (hypothesis, derandomized profile "chain-guard") draw batches of 1..5
chains with states of shape (B,), (B, d) or (B, c, h, w), dtypes float32 / float64 / bfloat16 /
float16 (every dtype the op supports), n_steps 0..5 (0 is refused by the constructor), seeds
including 0, 2**63 and 2**64 - 1, start offsets including the last one before the 2**64 wrap,
and every CPU backend that is available here (cpp, eager; triton only under TRITON_INTERPRET=1).
Each example is a few tensors of <= 90 elements, so the file stays well under a minute on two
loaded cores. ``pytest --hypothesis-show-statistics`` prints the number of cases per property.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import langevin_kernels as lk
from langevin_kernels.chains import REINIT_SEED_XOR, DataChain, LatentChain, NonFiniteChainError
from langevin_kernels.dispatch import unavailable_reason

settings.register_profile("chain-guard", derandomize=True, deadline=None, max_examples=60, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile("chain-guard")
U64 = 1 << 64

CPU_BACKENDS = [b for b in ("cpp", "eager", "triton") if unavailable_reason(b, "cpu") is None]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPU; single-threaded reductions are also run-to-run identical
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- strategies

@st.composite
def chain_cases(draw, min_steps=0, dtypes=DTYPES, min_noise=0.0):
    batch = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["vector", "matrix", "image"]))
    if kind == "vector":
        shape = (batch,)
    elif kind == "matrix":
        shape = (batch, draw(st.integers(1, 6)))
    else:
        shape = (batch, draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    n_steps = draw(st.integers(min_steps, 5))
    numel = math.prod(shape)
    advance = lk.noise_offset_advance(numel)
    where = draw(st.sampled_from(["zero", "small", "high", "last"]))
    if where == "zero":
        offset = 0
    elif where == "small":
        offset = draw(st.integers(0, 10_000))
    elif where == "high":
        offset = draw(st.integers(1 << 63, U64 - 1 - 6 * advance))
    else:                                    # the run ends exactly at the 2**64 wrap
        offset = (U64 - n_steps * advance) % U64
    return dict(
        shape=shape, n_steps=n_steps, offset=offset,
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.one_of(st.sampled_from([0, 1, 1 << 63, U64 - 1]), st.integers(0, U64 - 1))),
        step_size=draw(st.floats(1e-3, 0.2)),
        noise_scale=draw(st.floats(min_noise, 1.0)),
        backend=draw(st.sampled_from(CPU_BACKENDS)),
        x_seed=draw(st.integers(0, 2**31 - 1)),
    )


def _randn(case, seed_shift=0):
    gen = torch.Generator().manual_seed(case["x_seed"] + seed_shift)
    return torch.randn(case["shape"], generator=gen, dtype=torch.float64).to(case["dtype"])


def energy_fn(weights=None):
    """A smooth per-chain energy, 0.5 x^2 + 0.1 sin(3x) summed over each chain, times a row weight."""
    def energy(x):
        per_element = 0.5 * x * x + 0.1 * torch.sin(3.0 * x)
        e = per_element.reshape(x.shape[0], -1).sum(1)
        return e if weights is None else e * weights.to(e.dtype)
    return energy


def generator_fn(z):
    """An elementwise generator g(z) = tanh(z) + 0.5 z (any state shape)."""
    return torch.tanh(z) + 0.5 * z


def latent_energy(x_obs, sigma):
    """The LatentChain's likelihood term, written with the chain's own op sequence (same bits)."""
    def energy(z):
        residual = (x_obs - generator_fn(z)).reshape(z.shape[0], -1)
        return residual.pow(2).sum(1) / (2.0 * sigma ** 2)
    return energy


def eager_loop(energy, x0, *, n_steps, step_size, noise_scale, seed, offset, prior_weight=0.0, clamp=None):
    """The chain written out: autograd gradient, lk.philox_normal noise at the chain's offsets,
    the update in float32 (float64 for float64 states), rounded to the state's dtype each step."""
    math_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    advance = lk.noise_offset_advance(x0.numel())
    x = x0.clone()
    for k in range(n_steps):
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(leaf).sum(), leaf)
        xi = lk.philox_normal(x.numel(), seed=seed, offset=(offset + k * advance) % U64).reshape(x.shape)
        xm = x.to(math_dtype)
        y = xm - step_size * (grad.to(math_dtype) + prior_weight * xm) + noise_scale * xi.to(math_dtype)
        if clamp is not None:
            y = y.clamp(*clamp)
        x = y.to(x0.dtype)
    return x


def tolerance(dtype, n_steps):
    """Per-step 1-ulp slack, carried forward by the following steps.

    Both sides compute the update in the same math dtype from bit-identical x, gradient (same
    autograd ops) and noise (the same Philox stream); the kernel may contract ``x - a*(g + lam*x)
    + s*xi`` into FMAs and order the terms differently, and its Box-Muller log/sqrt/cos may round
    differently from philox_normal's in the last float32 bit. That is <= a few ulps of the math
    dtype per step; for float16/bfloat16 such a difference can flip the rounding to the storage
    dtype (one storage ulp), which the next steps carry on (the update's Jacobian is <= 1.3 here).
    The noise is float32 even for float64 states, so float64 differences are float32-noise sized.
    """
    eps = {torch.float64: 2.0 ** -23, torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8,
           torch.float16: 2.0 ** -11}[dtype]
    slack = 4.0 * eps * max(n_steps, 1) * 1.3 ** n_steps
    return dict(rtol=slack, atol=slack)


def _assert_n_steps_zero_is_refused(make):
    with pytest.raises(ValueError, match="n_steps"):
        make()


# ----------------------------------------------------------------------------- equality with an eager loop

@PROFILE
@given(case=chain_cases(), clamp=st.sampled_from([None, (-1.5, 1.5), (None, 0.8)]))
def test_data_chain_equals_eager_loop(case, clamp):
    common = dict(n_steps=case["n_steps"], step_size=case["step_size"], noise_scale=case["noise_scale"],
                  seed=case["seed"], offset=case["offset"])
    make = lambda: DataChain(energy_fn(), clamp=clamp, **common)
    if case["n_steps"] == 0:
        return _assert_n_steps_zero_is_refused(make)
    x0 = _randn(case)
    with lk.use_backend(case["backend"]):
        chain = make()
        got = chain.run(x0)
    lo, hi = (None, None) if clamp is None else clamp
    want = eager_loop(energy_fn(), x0, clamp=None if clamp is None else (lo, hi), **common)
    assert got.dtype == x0.dtype and got.shape == x0.shape
    torch.testing.assert_close(got, want, **tolerance(x0.dtype, case["n_steps"]))
    advance = lk.noise_offset_advance(x0.numel())
    assert chain.offset == (case["offset"] + case["n_steps"] * advance) % U64
    assert chain.last_nonfinite is not None and chain.last_nonfinite.numel() == 0


@PROFILE
@given(case=chain_cases(), sigma=st.floats(0.3, 2.0))
def test_latent_chain_equals_eager_loop_with_fused_prior(case, sigma):
    common = dict(n_steps=case["n_steps"], step_size=case["step_size"], noise_scale=case["noise_scale"],
                  seed=case["seed"], offset=case["offset"])
    make = lambda: LatentChain(generator_fn, sigma=sigma, **common)
    if case["n_steps"] == 0:
        return _assert_n_steps_zero_is_refused(make)
    z0, x_obs = _randn(case), _randn(case, seed_shift=1)
    with lk.use_backend(case["backend"]):
        got = make().run(z0, x_obs)
    want = eager_loop(latent_energy(x_obs, sigma), z0, prior_weight=1.0, **common)
    torch.testing.assert_close(got, want, **tolerance(z0.dtype, case["n_steps"]))


# ----------------------------------------------------------------------------- NaN handling

def _check_guard(mode, make, run_args, flagged, n_bad_per_step, first_step, reinit_rows, reinit_error):
    """Shared assertions of the NaN properties.

    flagged: indices of chains whose final state must be non-finite; n_bad_per_step: the exact
    nonfinite_chains count at every step; first_step: the step after which the flagged chains
    were first non-finite (0: the initial state); reinit_rows(chain, idx) -> the expected fresh
    rows; reinit_error: the replacement is non-finite too, so "reinit" must raise."""
    baseline_chain = make("ignore")
    baseline = baseline_chain.run(*run_args)
    bad_rows = ~torch.isfinite(baseline.reshape(baseline.shape[0], -1)).all(1)
    assert bad_rows.nonzero().flatten().tolist() == flagged
    chain = make(mode)
    if mode == "ignore":
        out = chain.run(*run_args)
        assert torch.equal(out.isnan(), baseline.isnan()) and torch.equal(out.nan_to_num(), baseline.nan_to_num())
        assert chain.last_nonfinite is None
    elif mode == "raise" and flagged:
        with pytest.raises(NonFiniteChainError, match=rf"{len(flagged)} of {baseline.shape[0]} chains") as info:
            chain.run(*run_args)
        err = info.value
        assert err.chains.tolist() == flagged and err.n_chains == baseline.shape[0]
        assert torch.equal(err.state.nan_to_num(), baseline.nan_to_num())
        assert err.first_step.tolist() == [first_step] * len(flagged)
        assert f"first non-finite after step [{first_step}" in str(err)
    elif mode == "reinit" and flagged and reinit_error:
        with pytest.raises(NonFiniteChainError, match="could not repair"):
            chain.run(*run_args)
    else:
        out = chain.run(*run_args)
        assert torch.isfinite(out).all()
        keep = ~bad_rows
        assert torch.equal(out[keep], baseline[keep])      # untouched chains: exactly the plain run
        if flagged:
            idx = torch.tensor(flagged)
            assert torch.equal(out[idx], reinit_rows(chain, idx).to(out.dtype))
        assert chain.stats.reinitialized == (len(flagged) if mode == "reinit" else 0)
        assert chain.last_nonfinite.tolist() == flagged
    # the guard never changes the per-step counts or the noise bookkeeping
    assert chain.stats.to_dict()["nonfinite_chains"] == [n_bad_per_step] * chain.n_steps
    assert chain.offset == baseline_chain.offset
    return chain


@PROFILE
@given(case=chain_cases(min_steps=1), data=st.data(),
       inject=st.sampled_from(["x0 nan", "x0 inf", "energy nan"]),
       mode=st.sampled_from(["raise", "reinit", "ignore"]), mala=st.booleans(), use_reinit_fn=st.booleans(),
       clamp=st.sampled_from([None, (-2.0, 2.0)]))
def test_data_chain_nonfinite_counted_and_handled(case, data, inject, mode, mala, use_reinit_fn, clamp):
    batch = case["shape"][0]
    bad = sorted(data.draw(st.sets(st.integers(0, batch - 1), max_size=batch), label="bad chains"))
    x0 = _randn(case)
    weights = None
    if inject == "energy nan":
        weights = torch.ones(batch)
        weights[bad] = float("nan")
    else:
        x0.reshape(batch, -1)[bad, -1] = float("nan") if inject == "x0 nan" else -float("inf")
    fresh = lambda n: torch.full((n, *case["shape"][1:]), 0.25, dtype=case["dtype"])
    noise_scale = max(case["noise_scale"], 0.05) if mala else case["noise_scale"]

    def make(on_nonfinite):
        return DataChain(energy_fn(weights), n_steps=case["n_steps"], step_size=case["step_size"],
                         noise_scale=noise_scale, seed=case["seed"], offset=case["offset"], mala=mala,
                         clamp=clamp, on_nonfinite=on_nonfinite,
                         reinit_fn=fresh if (use_reinit_fn and on_nonfinite == "reinit") else None)

    # ULA: a NaN energy/gradient poisons the state; MALA rejects such proposals, so only
    # chains that start non-finite end non-finite. Every step counts all bad chains either way.
    flagged = bad if (inject != "energy nan" or not mala) else []
    with lk.use_backend(case["backend"]):
        _check_guard(mode, make, (x0,), flagged, len(bad), 1 if inject == "energy nan" else 0,
                     reinit_rows=lambda c, idx: fresh(len(idx)) if use_reinit_fn else x0[idx],
                     reinit_error=(not use_reinit_fn and inject != "energy nan"))


@PROFILE
@given(case=chain_cases(min_steps=1), data=st.data(), inject=st.sampled_from(["z0", "observation"]),
       mode=st.sampled_from(["raise", "reinit", "ignore"]), mala=st.booleans())
def test_latent_chain_nonfinite_counted_and_handled(case, data, inject, mode, mala):
    batch = case["shape"][0]
    bad = sorted(data.draw(st.sets(st.integers(0, batch - 1), max_size=batch), label="bad chains"))
    z0, x_obs = _randn(case), _randn(case, seed_shift=1)
    (z0 if inject == "z0" else x_obs).reshape(batch, -1)[bad, 0] = float("nan")
    noise_scale = max(case["noise_scale"], 0.05) if mala else case["noise_scale"]

    def make(on_nonfinite):
        return LatentChain(generator_fn, sigma=0.5, n_steps=case["n_steps"], step_size=case["step_size"],
                           noise_scale=noise_scale, seed=case["seed"], offset=case["offset"], mala=mala,
                           on_nonfinite=on_nonfinite)

    def prior_rows(chain, idx):     # N(0, I) draws of the chain's reinit stream at the run's start offset
        draw = lk.philox_normal(z0.numel(), seed=case["seed"] ^ REINIT_SEED_XOR, offset=case["offset"])
        return draw.reshape(z0.shape)[idx]

    flagged = bad if (inject == "z0" or not mala) else []
    with lk.use_backend(case["backend"]):
        _check_guard(mode, make, (z0, x_obs), flagged, len(bad), 0 if inject == "z0" else 1, reinit_rows=prior_rows,
                     reinit_error=False)


@PROFILE
@given(case=chain_cases(min_steps=1, dtypes=[torch.float32, torch.float64]), data=st.data(),
       start_bad=st.booleans())
def test_raise_reports_the_first_nonfinite_step(case, data, start_bad):
    # A NaN row weight makes the chain's energy and gradient NaN: its state is NaN after step 1.
    # Chains that start non-finite report step 0 (the initial state).
    batch = case["shape"][0]
    bad = sorted(data.draw(st.sets(st.integers(0, batch - 1), min_size=1, max_size=batch), label="bad"))
    x0 = _randn(case).clamp(-1, 1)
    weights = torch.ones(batch)
    weights[bad] = float("nan")
    if start_bad:
        x0.reshape(batch, -1)[bad, 0] = float("nan")
    chain = DataChain(energy_fn(weights), n_steps=case["n_steps"], step_size=case["step_size"],
                      noise_scale=case["noise_scale"], seed=case["seed"], offset=case["offset"])
    with lk.use_backend(case["backend"]), pytest.raises(NonFiniteChainError) as info:
        chain.run(x0)
    err = info.value
    assert err.chains.tolist() == bad
    assert err.first_step.tolist() == [0 if start_bad else 1] * len(bad)
    assert "first non-finite after step" in str(err)
    silent = DataChain(energy_fn(weights), n_steps=case["n_steps"], step_size=case["step_size"],
                       noise_scale=case["noise_scale"], seed=case["seed"], offset=case["offset"],
                       track_stats=False)
    with lk.use_backend(case["backend"]), pytest.raises(NonFiniteChainError) as info:
        silent.run(x0)
    assert info.value.first_step is None and info.value.chains.tolist() == bad


# ----------------------------------------------------------------------------- reproducibility

@PROFILE
@given(case=chain_cases(min_steps=1), mala=st.booleans(), latent=st.booleans())
def test_same_seed_same_backend_is_bit_identical(case, mala, latent):
    noise_scale = max(case["noise_scale"], 0.05) if mala else case["noise_scale"]
    common = dict(n_steps=case["n_steps"], step_size=case["step_size"], noise_scale=noise_scale,
                  seed=case["seed"], offset=case["offset"], mala=mala)
    x0, x_obs = _randn(case), _randn(case, seed_shift=1)
    results = []
    with lk.use_backend(case["backend"]):
        for _ in range(2):
            if latent:
                chain = LatentChain(generator_fn, sigma=0.5, **common)
                results.append((chain.run(x0, x_obs), chain.stats.table, chain.offset))
            else:
                chain = DataChain(energy_fn(), **common)
                results.append((chain.run(x0), chain.stats.table, chain.offset))
    (a, ta, oa), (b, tb, ob) = results
    assert torch.equal(a, b) and oa == ob
    assert torch.equal(ta.nan_to_num(), tb.nan_to_num()) and torch.equal(ta.isnan(), tb.isnan())


@PROFILE
@given(case=chain_cases(min_steps=1, dtypes=[torch.float32, torch.float64], min_noise=0.05),
       other=st.integers(0, U64 - 1), latent=st.booleans())
def test_distinct_seeds_draw_different_noise(case, other, latent):
    # float32/float64 only: in 8- or 11-bit dtypes two different noise draws on a single element
    # can legitimately round to the same state, which would make this property flaky, not wrong.
    seed = case["seed"]
    if other == seed:
        other = (seed + 1) % U64
    x0, x_obs = _randn(case), _randn(case, seed_shift=1)
    common = dict(n_steps=case["n_steps"], step_size=case["step_size"], noise_scale=case["noise_scale"],
                  offset=case["offset"])
    with lk.use_backend(case["backend"]):
        if latent:
            a = LatentChain(generator_fn, sigma=0.5, seed=seed, **common).run(x0, x_obs)
            b = LatentChain(generator_fn, sigma=0.5, seed=other, **common).run(x0, x_obs)
        else:
            a = DataChain(energy_fn(), seed=seed, **common).run(x0)
            b = DataChain(energy_fn(), seed=other, **common).run(x0)
    # the noise itself differs at every step (no shared stream), hence so do the states
    advance = lk.noise_offset_advance(x0.numel())
    for k in range(case["n_steps"]):
        at = (case["offset"] + k * advance) % U64
        assert not torch.equal(lk.philox_normal(x0.numel(), seed=seed, offset=at),
                               lk.philox_normal(x0.numel(), seed=other, offset=at))
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------- option errors and details

@pytest.mark.parametrize("cls", ["data", "latent"])
@pytest.mark.parametrize("value", ["warn", "RAISE", None, 0, True])
def test_bad_on_nonfinite_names_argument_value_and_choices(cls, value):
    kwargs = dict(n_steps=2, step_size=0.1, noise_scale=0.1, on_nonfinite=value)
    with pytest.raises(ValueError) as info:
        if cls == "data":
            DataChain(energy_fn(), **kwargs)
        else:
            LatentChain(generator_fn, sigma=0.5, **kwargs)
    msg = str(info.value)
    assert "on_nonfinite" in msg and repr(value) in msg
    assert all(repr(v) in msg for v in ("raise", "reinit", "ignore"))


def test_default_is_raise_and_error_is_exported():
    assert DataChain(energy_fn(), n_steps=1, step_size=0.1, noise_scale=0.1).on_nonfinite == "raise"
    assert LatentChain(generator_fn, sigma=1.0, n_steps=1, step_size=0.1, noise_scale=0.1).on_nonfinite == "raise"
    assert lk.NonFiniteChainError is NonFiniteChainError and issubclass(NonFiniteChainError, RuntimeError)
    assert "NonFiniteChainError" in lk.__all__


def test_reinit_fn_checks():
    with pytest.raises(TypeError, match="reinit_fn"):
        DataChain(energy_fn(), n_steps=1, step_size=0.1, noise_scale=0.1, on_nonfinite="reinit", reinit_fn=3)
    with pytest.raises(ValueError, match="reinit_fn is used only with on_nonfinite='reinit'"):
        DataChain(energy_fn(), n_steps=1, step_size=0.1, noise_scale=0.1, reinit_fn=lambda n: torch.zeros(n, 2))
    chain = DataChain(energy_fn(), n_steps=1, step_size=0.1, noise_scale=0.1, on_nonfinite="reinit",
                      reinit_fn=lambda n: torch.zeros(n, 3))
    x0 = torch.zeros(4, 2)
    x0[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"reinit_fn\(1\) must return a tensor of shape \(1, 2\)"):
        chain.run(x0)


def test_error_message_truncates_long_chain_lists():
    x0 = torch.zeros(40, 2)
    x0[5:30, 1] = float("nan")
    chain = DataChain(energy_fn(), n_steps=2, step_size=0.1, noise_scale=0.1)
    with pytest.raises(NonFiniteChainError, match=r"25 of 40 chains.*\[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, "
                                                  r"\.\.\. and 15 more\]") as info:
        chain.run(x0)
    assert info.value.chains.tolist() == list(range(5, 30))
    assert chain.stats.to_dict()["nonfinite_chains"] == [25, 25]


def test_trajectory_travels_with_the_error_and_reinit_keeps_it():
    x0 = torch.zeros(3, 2)
    x0[2, 0] = float("nan")
    chain = DataChain(energy_fn(), n_steps=4, step_size=0.1, noise_scale=0.1)
    with pytest.raises(NonFiniteChainError) as info:
        chain.run(x0, return_trajectory=True, thin=2)
    assert info.value.trajectory.shape == (3, 3, 2)
    reinit = DataChain(energy_fn(), n_steps=4, step_size=0.1, noise_scale=0.1, on_nonfinite="reinit",
                       reinit_fn=lambda n: torch.ones(n, 2))
    x, traj = reinit.run(x0, return_trajectory=True, thin=2)
    assert torch.equal(x[2], torch.ones(2)) and traj[-1, 2].isnan().any()   # the record is not rewritten


def test_reinit_keeps_a_differentiable_chain_differentiable():
    # Row 1's energy is NaN: its state goes NaN and restarts from its x0 row. The other rows'
    # gradients stay exact; row 1's is NaN (the zero cotangent of its discarded steps meets the
    # NaN second derivative of its energy: 0 * NaN), as documented for differentiable=True.
    weights = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    x0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    chain = DataChain(energy_fn(weights), n_steps=2, step_size=0.1, noise_scale=0.1, clamp=(-3, 3),
                      differentiable=True, on_nonfinite="reinit")
    x = chain.run(x0)
    assert x.requires_grad and torch.isfinite(x).all() and torch.equal(x[1], x0[1].detach())
    x.sum().backward()                        # index_put is out of place: the saved clamp output is intact
    assert torch.isfinite(x0.grad[[0, 2, 3]]).all()
    # a non-finite x0 row cannot be restored from x0: the error says so and names the chain
    start = x0.detach().clone()
    start[1, 0] = float("nan")
    with pytest.raises(NonFiniteChainError, match=r"could not repair 1 of 4 chains \[1\].*pass reinit_fn"):
        DataChain(energy_fn(), n_steps=2, step_size=0.1, noise_scale=0.1, on_nonfinite="reinit").run(start)
    fixed = DataChain(energy_fn(), n_steps=2, step_size=0.1, noise_scale=0.1, on_nonfinite="reinit",
                      reinit_fn=lambda n: torch.zeros(n, 2, dtype=torch.float64)).run(start)
    assert torch.equal(fixed[1], torch.zeros(2, dtype=torch.float64)) and not fixed.requires_grad


def test_no_host_sync_for_ignore_and_one_check_per_run(monkeypatch):
    calls = []
    import langevin_kernels.chains.guard as guard_mod
    real = guard_mod._nonfinite_rows
    monkeypatch.setattr(guard_mod, "_nonfinite_rows", lambda x: calls.append(1) or real(x))
    x0 = torch.randn(8, 3)
    DataChain(energy_fn(), n_steps=5, step_size=0.1, noise_scale=0.1, on_nonfinite="ignore").run(x0)
    assert calls == []
    DataChain(energy_fn(), n_steps=5, step_size=0.1, noise_scale=0.1).run(x0)
    assert calls == [1]                       # one end-of-run check, not one per step


# ----------------------------------------------------------------------------- CUDA graphs

@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["raise", "reinit"])
def test_captured_chain_guard_equals_uncaptured(mode):
    # The check runs after the replay, outside the graph; the per-step finiteness record is
    # captured with the loop, so a replay reports the same chains and first steps.
    weights = torch.ones(64, device="cuda")
    weights[[3, 40]] = float("nan")
    x0 = torch.randn(64, 4, device="cuda")
    x0[7, 1] = float("nan")
    fresh = (lambda n: torch.zeros(n, 4, device="cuda")) if mode == "reinit" else None
    make = lambda capture: DataChain(energy_fn(weights), n_steps=5, step_size=0.02, noise_scale=0.2, seed=1,
                                     offset=17, capture_graph=capture, on_nonfinite=mode, reinit_fn=fresh)
    captured, plain = make(True), make(False)
    for _ in range(2):                                   # the capture, then a replay
        if mode == "raise":
            with pytest.raises(NonFiniteChainError) as a:
                captured.run(x0)
            with pytest.raises(NonFiniteChainError) as b:
                plain.run(x0)
            assert a.value.chains.tolist() == b.value.chains.tolist() == [3, 7, 40]
            assert a.value.first_step.tolist() == b.value.first_step.tolist() == [1, 0, 1]
            assert a.value.state.is_cuda
        else:
            torch.testing.assert_close(captured.run(x0), plain.run(x0), rtol=1e-5, atol=1e-5)
            assert captured.stats.reinitialized == plain.stats.reinitialized == 3
        assert captured.stats.to_dict()["nonfinite_chains"] == [3] * 5
        assert captured.offset == plain.offset
    z0 = torch.randn(32, 3, device="cuda")
    z0[5] = float("nan")
    gen = lambda z: torch.tanh(z)
    lat = [LatentChain(gen, sigma=0.5, n_steps=3, step_size=0.01, noise_scale=0.1, seed=4, capture_graph=c,
                       on_nonfinite="reinit") for c in (True, False)]
    x_obs = torch.randn(32, 3, device="cuda")
    for _ in range(2):
        torch.testing.assert_close(lat[0].run(z0, x_obs), lat[1].run(z0, x_obs), rtol=1e-5, atol=1e-5)
