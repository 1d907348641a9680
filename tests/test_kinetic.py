"""The kinetic (underdamped) Langevin op and KineticChain: the fused call sequence against a
textbook BAOAB written here, the noise-stream contract, opcheck/autograd/compile, the chain's
options, and statistical validation (stationary bias, ESS per gradient against ULA)."""
import math

import numpy as np
import pytest
import torch

import langevin_kernels as lk
from backends import Backend, per_device, runs_dtype
from langevin_kernels import dispatch, reference
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


def test_opcheck_both_ops(backend):
    x, v, g, xi = (torch.randn(5, 3, device=backend.device) for _ in range(4))
    args = (H, GAMMA, H, 4, 8)
    with lk.use_backend(backend.name):
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


# --- the backends (cpp, cuda, triton, eager; dispatch.py) -------------------------------------

KINETIC_SHAPES = [(7, 9), (1,), (0, 3), (4097,)]
KINETIC_DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# Max error relative to the largest output, against the reference fed the same noise: float32 is the
# contract's 1e-6; bfloat16 allows one rounding flip (a CUDA FMA can move a float32 value across a
# bfloat16 rounding boundary); float64 a few double roundings.
KINETIC_TOL = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 8e-3}
# A seed and an offset with both 32-bit halves in use (the key and counter words).
SEED, OFFSET = 0x1234_5678_9ABC, (1 << 33) + 5
_CASES = per_device([(s, d) for s in KINETIC_SHAPES for d in KINETIC_DTYPES],
                    [(s, d) for s in KINETIC_SHAPES for d in KINETIC_DTYPES],
                    keep=lambda backend, case: runs_dtype(backend, case[1]))


def _states(shape, dtype, device, count=4):
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
            for _ in range(count)]


def _native_call(backend, x, v, g, noise=None, rng_state=None, seed=SEED, offset=OFFSET):
    """The backend's kernel on outputs poisoned with NaN, so that an element it does not write shows."""
    x_out, v_out = torch.full_like(x, math.nan), torch.full_like(v, math.nan)
    if x.numel():
        dispatch.run_kinetic(backend.name, x, v, g, noise, x_out, v_out, H, GAMMA, 0.7 * H, seed, offset,
                             rng_state)
    return x_out, v_out


def _assert_close(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert not a.isnan().any(), "unwritten (NaN-poisoned) elements"
        if b.numel():
            rel = ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
            assert rel < KINETIC_TOL[b.dtype], f"max relative error {rel:.3g} for {b.dtype}"


def _reference(x, v, g, noise):
    return reference.kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=0.7 * H, noise=noise)


@pytest.mark.parametrize("backend,case", _CASES, indirect=["backend"])
def test_backend_equals_reference_with_explicit_noise(backend, case):
    shape, dtype = case
    x, v, g, xi = _states(shape, dtype, backend.device)
    want = _reference(x, v, g, xi)
    _assert_close(_native_call(backend, x, v, g, noise=xi), want)
    with lk.use_backend(backend.name):   # the public ops route there too
        _assert_close(kinetic_step(x, v, g, step_size=H, friction=GAMMA, kick=0.7 * H, noise=xi), want)
        kinetic_step_(x, v, g, step_size=H, friction=GAMMA, kick=0.7 * H, noise=xi)
    _assert_close((x, v), want)


@pytest.mark.parametrize("backend,case", _CASES, indirect=["backend"])
def test_backend_draws_the_philox_normal_stream(backend, case):
    # The noise drawn in the kernel is lk.philox_normal's at (seed, offset) on the same backend, bit for bit:
    # the update then equals the reference fed that noise (exactly where the arithmetic is the same).
    shape, dtype = case
    x, v, g = _states(shape, dtype, backend.device, count=3)
    with lk.use_backend(backend.name):
        xi = lk.philox_normal(x.numel(), seed=SEED, offset=OFFSET, device=backend.device).reshape(shape)
    drawn = _native_call(backend, x, v, g)
    _assert_close(drawn, _reference(x, v, g, xi))
    if dtype != torch.bfloat16:   # explicit noise of the same values (bfloat16 would round it)
        given = _native_call(backend, x, v, g, noise=xi.to(dtype))
        assert all(torch.equal(a, b) for a, b in zip(drawn, given))
    # rng_state = (seed, base offset) read on the device, plus the offset argument
    state = torch.tensor([SEED, OFFSET - 3], dtype=torch.int64, device=backend.device)
    from_state = _native_call(backend, x, v, g, rng_state=state, seed=999, offset=3)
    assert all(torch.equal(a, b) for a, b in zip(drawn, from_state))


@pytest.mark.parametrize("backend,layout", per_device(["transposed", "overlapping"], ["transposed", "overlapping"]),
                         indirect=["backend"])
def test_backend_in_place_on_other_layouts(backend, layout):
    # Non-contiguous x, v (and grad overlapping v) go through contiguous buffers that are copied back.
    x, v, g, xi = _states((6, 8), torch.float32, backend.device)
    if layout == "transposed":
        x, v, g = (t.t().contiguous().t() for t in (x, v, g))
    else:
        buf = torch.randn(49, device=backend.device)
        v, g = buf[1:].view(6, 8), buf[:-1].view(6, 8)
    want = _reference(x.clone(), v.clone(), g.clone(), xi)
    with lk.use_backend(backend.name):
        kinetic_step_(x, v, g, step_size=H, friction=GAMMA, kick=0.7 * H, noise=xi)
    _assert_close((x, v), want)


def test_cpp_is_independent_of_the_thread_count():
    if dispatch.unavailable_reason("cpp", "cpu"):
        pytest.skip("extension not built")
    x, v, g = _states((3, 70001), torch.float32, "cpu", count=3)   # several parallel tasks
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_native_call(Backend("cpp", "cpu"), x, v, g))
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_the_public_ops_run_the_selected_backend(monkeypatch):
    if dispatch.unavailable_reason("cpp", "cpu"):
        pytest.skip("extension not built")
    seen = []
    real = dispatch.run_kinetic
    monkeypatch.setattr(dispatch, "run_kinetic", lambda name, *args: (seen.append(name), real(name, *args)))
    x = torch.randn(5)
    kinetic_step(x, x, x, step_size=H, friction=GAMMA, kick=H, seed=0)
    with lk.use_backend("eager"):
        kinetic_step(x, x, x, step_size=H, friction=GAMMA, kick=H, seed=0)
    kinetic_step(x, x, x.double(), step_size=H, friction=GAMMA, kick=H, seed=0)   # mixed dtypes: the reference
    # The cpp call runs _ext_kinetic_step from the C++ kernel (csrc/kinetic_op.cpp), never reaching
    # Python; the others come back through _routed_kinetic_step.
    assert seen == ["eager", "eager"]


# Calls of the public ops that bypass the Python wrapper: the C++ kernels (csrc/kinetic_op.cpp) check
# every argument themselves, with the wrapper's messages, and never read past a buffer.
_BAD_OP_CALLS = {
    "short v": (dict(v=torch.zeros(3)), ValueError, r"v has shape \(3,\) but x has shape \(4, 2\)"),
    "v dtype": (dict(v=torch.zeros(4, 2, dtype=torch.float64)), TypeError,
                "v has dtype torch.float64 but x has dtype torch.float32; they must match"),
    "short grad": (dict(grad=torch.zeros(8)), ValueError, r"grad has shape \(8,\) but x has shape"),
    "short noise": (dict(noise=torch.zeros(4, 1)), ValueError, r"noise has shape \(4, 1\) but x has shape"),
    "int x": (dict(x=torch.zeros(4, 2, dtype=torch.int32), v=torch.zeros(4, 2, dtype=torch.int32)), TypeError,
              "x has dtype torch.int32; allowed: float16, bfloat16, float32, float64"),
    "friction 0": (dict(friction=0.0), ValueError, "friction=0.0 is not allowed"),
    "negative kick": (dict(kick=-0.5), ValueError, r"kick=-0.5 is not allowed"),
    "inf step": (dict(step_size=float("inf")), ValueError, "step_size=inf is not allowed"),
    "3-element rng_state": (dict(rng_state=torch.zeros(3, dtype=torch.int64)), ValueError,
                            r"rng_state must be an int64 tensor of shape \[2\] on (cpu|meta) \(seed, base offset\); "
                            r"got torch.int64 shape \(3,\) on (cpu|meta)"),
}


@pytest.mark.parametrize("op", ["kinetic_step", "kinetic_step_"])
@pytest.mark.parametrize("bad", list(_BAD_OP_CALLS), ids=list(_BAD_OP_CALLS))
def test_public_ops_called_directly_refuse_mismatched_arguments(op, bad):
    change, error, match = _BAD_OP_CALLS[bad]
    args = dict(x=torch.zeros(4, 2), v=torch.zeros(4, 2), grad=torch.zeros(4, 2), step_size=H, friction=GAMMA,
                kick=H, seed=0, offset=0, noise=None, rng_state=None) | change
    before = args["v"].clone()
    with pytest.raises(error, match=match):
        getattr(torch.ops.langevin_kernels, op)(*args.values())
    assert torch.equal(args["v"], before)   # nothing written
    with pytest.raises(error, match=match):   # the fake kernel (torch.compile's) words it alike
        getattr(torch.ops.langevin_kernels, op)(*(t.to("meta") if isinstance(t, torch.Tensor) else t
                                                  for t in args.values()))


def _ext_args(n=8, dtype=torch.float32, device="cpu"):
    x = torch.zeros(n, dtype=dtype, device=device)
    return dict(x=x, v=x.clone(), grad=x.clone(), noise=None, x_out=x.clone(), v_out=x.clone(), step_size=H,
                friction=GAMMA, kick=H, seed=0, offset=0, rng_state=None)


_BAD_EXT_CALLS = {
    "short v": (dict(v=torch.zeros(7)), ValueError, "v has 7 elements"),
    "short grad": (dict(grad=torch.zeros(7)), ValueError, "grad has 7 elements"),
    "short noise": (dict(noise=torch.zeros(7)), ValueError, "noise has 7 elements"),
    "short x_out": (dict(x_out=torch.zeros(7)), ValueError, "x_out has 7 elements"),
    "short v_out": (dict(v_out=torch.zeros(7)), ValueError, "v_out has 7 elements"),
    "grad dtype": (dict(grad=torch.zeros(8, dtype=torch.float64)), TypeError, "grad has dtype"),
    "v_out dtype": (dict(v_out=torch.zeros(8, dtype=torch.bfloat16)), TypeError, "v_out has dtype"),
    "int x": (dict(x=torch.zeros(8, dtype=torch.int32)), TypeError, "x has dtype"),
    "strided grad": (dict(grad=torch.zeros(16)[::2]), ValueError, "grad must be contiguous"),
    "1-element rng_state": (dict(rng_state=torch.zeros(1, dtype=torch.int64)), ValueError, "rng_state must be"),
    "int32 rng_state": (dict(rng_state=torch.zeros(2, dtype=torch.int32)), ValueError, "rng_state must be"),
}


@pytest.mark.parametrize("bad", list(_BAD_EXT_CALLS), ids=list(_BAD_EXT_CALLS))
def test_ext_kinetic_step_checks_what_it_indexes(bad):
    if dispatch.unavailable_reason("cpp", "cpu"):
        pytest.skip("extension not built")
    change, error, match = _BAD_EXT_CALLS[bad]
    with pytest.raises(error, match=match):
        torch.ops.langevin_kernels._ext_kinetic_step(**(_ext_args() | change))


@pytest.mark.gpu
@pytest.mark.parametrize("where", ["v", "rng_state"])
def test_ext_kinetic_step_cuda_refuses_other_devices(where):
    if dispatch.unavailable_reason("cuda", "cuda"):
        pytest.fail(f"the cuda backend must run on a GPU machine: {dispatch.unavailable_reason('cuda', 'cuda')}")
    args = _ext_args(device="cuda")
    args[where] = torch.zeros(8 if where == "v" else 2, dtype=torch.float32 if where == "v" else torch.int64)
    with pytest.raises(ValueError, match=f"{where} is on cpu"):
        torch.ops.langevin_kernels._ext_kinetic_step(**args)


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
    with pytest.raises(NotImplementedError, match="differentiable"):
        lk.KineticChain(_energy_2d, n_steps=3, step_size=H, friction=1.0, differentiable=True)
    with pytest.raises(ValueError, match="capture_graph=True needs CUDA tensors"):
        lk.KineticChain(_energy_2d, n_steps=3, step_size=H, friction=1.0, capture_graph=True).run(torch.zeros(4, 2))
    chain = lk.KineticChain(_energy_2d, n_steps=3, step_size=H, friction=1.0)
    with pytest.raises(AttributeError, match="friction is fixed at construction"):
        chain.friction = 2.0


def _double_well(x):
    return 2 * ((x * x - 1) ** 2).flatten(1).sum(1)


@pytest.mark.parametrize("options", [dict(clamp=(-1.2, 1.2)), dict(step_size=lk.Linear(0.08, 0.02)),
                                     dict(track_stats=False, grad_clip=4.0), dict(resample_velocity=True)])
def test_compiled_chain_equals_uncompiled(options, one_thread):
    common = dict(n_steps=12, step_size=0.05, friction=2.0, seed=7, offset=5)
    common.update(options)
    x0 = torch.randn(16, 3)
    plain = lk.KineticChain(_double_well, **common)
    compiled = lk.KineticChain(_double_well, compile={"backend": "aot_eager"}, compile_block=5, **common)
    for _ in range(3):   # persistent velocities and the owed half-kick carry across runs alike
        want, got = plain.run(x0), compiled.run(x0)
        # The same noise and formula; a compiler may reorder float32 arithmetic (a few ulps per step).
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled.velocity, plain.velocity, rtol=1e-5, atol=1e-5)
        assert compiled.offset == plain.offset
    assert compiled.compile_failed is None and compiled.compile_seconds > 0
    if plain.track_stats:
        torch.testing.assert_close(torch.tensor(compiled.stats.to_dict()["energy_mean"]),
                                   torch.tensor(plain.stats.to_dict()["energy_mean"]), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [dict(), dict(clamp=(-1.2, 1.2), step_size=lk.Linear(0.08, 0.02)),
                                     dict(resample_velocity=True), dict(compile=True)],
                         ids=["plain", "clamp-schedule", "resample", "compiled"])
def test_captured_chain_equals_uncompiled(options):
    """Replays continue BAOAB exactly as eager runs do: persistent velocities, the owed half-kick
    (fresh for the first replay, h/2 after), a velocity reset between replays."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    common = dict(n_steps=12, step_size=0.05, friction=2.0, seed=7, offset=5)
    common.update(options)
    compile_ = common.pop("compile", False)
    x0 = torch.randn(16, 3, device="cuda")
    plain = lk.KineticChain(_double_well, **common)
    captured = lk.KineticChain(_double_well, capture_graph=True, compile=compile_, **common)
    for run in range(4):
        if run == 2:
            plain.reset_velocity()
            captured.reset_velocity()
        want, got = plain.run(x0), captured.run(x0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(captured.velocity, plain.velocity, rtol=1e-5, atol=1e-5)
        assert captured.offset == plain.offset
    assert captured._graph is not None   # the runs above were replays, not eager fallbacks
    # and with compile=True they replayed compiled blocks (torch 2.11 once fell back here, warned only)
    assert captured.compile_failed is None


def test_compiled_chain_compiles_once_across_runs_and_parameter_updates(one_thread):
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    scale = torch.nn.Parameter(torch.tensor(1.0))
    chain = lk.KineticChain(lambda x: scale * _double_well(x), n_steps=8, step_size=0.05, friction=1.0,
                            compile={"backend": counting_backend}, compile_block=4)
    x0 = torch.randn(32, 2)
    for _ in range(3):
        chain.run(x0)
        with torch.no_grad():
            scale.mul_(1.1)              # an optimizer step: new value, same tensor
    assert len(graphs) == 1              # 8 steps = 2 blocks of 4: one graph, fresh and owed first kicks alike
    chain.run(torch.randn(8, 2))         # a new state shape compiles once more
    assert len(graphs) == 2


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
