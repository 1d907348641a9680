"""The op contract (docs/op.md): values, layouts, dtypes, in-place form,
autograd, opcheck, torch.compile, and one test per input error."""
import math

import pytest
import torch

import langevin_kernels as lk

torch.manual_seed(0)

SHAPES = [(1,), (3,), (4,), (5,), (7, 9), (2, 3, 17), (4097,), (64, 1000)]
# Worst-case error of each dtype relative to the size of the terms of the update:
# inputs are exact in their dtype, the math is float32, so the error is the final
# rounding to the dtype (2^-8 bf16, 2^-11 fp16) plus a few float32 roundings;
# float32 itself gets the contract's 1e-6; float64 a few double roundings.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1.2e-3, torch.bfloat16: 8e-3, torch.float64: 1e-13}


def make_inputs(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3)]


def expected_update(x, g, noise, a, s, lam=0.0, clamp=None):
    """The formula in float64 from the (already rounded) inputs, and the size of its terms."""
    x64, g64, n64 = x.double(), g.double(), noise.double()
    y = x64 - a * (g64 + lam * x64) + s * n64
    scale = x64.abs() + a * (g64.abs() + abs(lam) * x64.abs()) + s * n64.abs() + 1e-30
    if clamp is not None:
        y = y.clamp(*clamp)
    return y, scale


def assert_update_close(y, x, g, noise, a, s, lam=0.0, clamp=None):
    want, scale = expected_update(x, g, noise, a, s, lam, clamp)
    rel = ((y.double() - want).abs() / scale).max().item()
    assert rel <= TOLERANCE[x.dtype], f"max relative error {rel:.3g} for {x.dtype}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("clamp", [None, (-1.0, 1.0)])
def test_update_with_explicit_noise(cpu_backend, shape, lam, clamp):
    x, g, noise = make_inputs(shape)
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, step_size=0.05, noise_scale=0.3, prior_weight=lam, clamp=clamp, noise=noise)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_update_close(y, x, g, noise, 0.05, 0.3, lam, clamp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_update_each_dtype(cpu_backend, dtype):
    if cpu_backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend runs 16/32-bit floats (checked in test_triton_refuses_float64)")
    x, g, noise = make_inputs((33, 31), dtype)
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, prior_weight=0.5, clamp=(-2, 2), noise=noise)
    assert y.dtype == dtype
    assert_update_close(y, x, g, noise, 0.1, 0.2, 0.5, (-2, 2))


def test_internal_noise_is_the_published_stream(cpu_backend):
    x, g, _ = make_inputs((37, 5))
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.5, seed=11, offset=2**32 - 7)
    noise = lk.philox_normal(x.numel(), seed=11, offset=2**32 - 7).reshape(x.shape)
    # The stream itself is checked to 1e-5 elsewhere; times noise_scale 0.5.
    want, _ = expected_update(x, g, noise, 0.1, 0.5)
    assert (y.double() - want).abs().max().item() < 1e-5


def test_backends_agree_with_internal_noise(cpu_backend):
    x, g, _ = make_inputs((1000, 3))
    kwargs = dict(step_size=0.01, noise_scale=1.0, seed=5, offset=123, prior_weight=1.0, clamp=(-3, 3))
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, **kwargs)
    with lk.use_backend("eager"):
        ref = lk.langevin_step(x, g, **kwargs)
    assert (y - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
def test_non_contiguous_inputs(cpu_backend, layout):
    base = make_inputs((6, 8, 10, 12))
    if layout == "transposed":
        x, g, noise = (t[0, 0].t() for t in base)
    elif layout == "sliced":
        x, g, noise = (t[:, ::2, 1:, ::3] for t in base)
    else:
        x, g, noise = (t.contiguous(memory_format=torch.channels_last) for t in base)
    assert not x.is_contiguous()
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, noise=noise)
        y_internal = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, seed=1, offset=0)
        y_contig = lk.langevin_step(x.contiguous(), g.contiguous(), step_size=0.1, noise_scale=0.2, seed=1, offset=0)
    assert_update_close(y, x, g, noise, 0.1, 0.2)
    # Noise follows the logical row-major index, whatever the memory layout.
    assert torch.equal(y_internal, y_contig)


def test_inplace_mutates_and_returns_x(cpu_backend):
    x, g, noise = make_inputs((129,))
    before = x.clone()
    with lk.use_backend(cpu_backend):
        out = lk.langevin_step_(x, g, step_size=0.1, noise_scale=0.2, noise=noise, clamp=(-1, 1))
    assert out is x
    assert_update_close(x, before, g, noise, 0.1, 0.2, clamp=(-1, 1))


def test_inplace_equals_out_of_place(cpu_backend):
    x, g, _ = make_inputs((10, 11))
    kwargs = dict(step_size=0.2, noise_scale=0.7, seed=9, offset=2**40, prior_weight=1.0)
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, **kwargs)
        lk.langevin_step_(x, g, **kwargs)
    assert torch.equal(x, y)


def test_inplace_on_non_contiguous_view_updates_the_view_only(cpu_backend):
    x, g, _ = make_inputs((8, 8))
    view, gv = x.t()[::2], g.t()[::2]
    untouched = x.t()[1::2].clone()
    expected = lk.langevin_step(view, gv, step_size=0.1, noise_scale=0.3, seed=4, offset=0)
    with lk.use_backend(cpu_backend):
        lk.langevin_step_(view, gv, step_size=0.1, noise_scale=0.3, seed=4, offset=0)
    assert torch.allclose(view, expected, atol=1e-6)
    assert torch.equal(x.t()[1::2], untouched)


@pytest.mark.parametrize("numel", [1, 5, 4096 * 4 + 3, 70001])
@pytest.mark.parametrize("explicit_noise", [False, True])
def test_every_output_element_written(cpu_backend, numel, explicit_noise):
    # Call the kernel entry point with a NaN-poisoned output buffer: any element the
    # kernel skips (tails, block edges, thread chunks) stays NaN.
    from langevin_kernels import dispatch
    x, g, noise = make_inputs((numel,))
    out = torch.full_like(x, float("nan"))
    dispatch.run_step(cpu_backend, x, g, noise if explicit_noise else None, out,
                      0.1, 0.2, 0.0, -math.inf, math.inf, 1, 2, None)
    assert not out.isnan().any()


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_nan_and_inf_propagate_as_the_formula_says(cpu_backend, lam):
    # IEEE arithmetic of the formula as written, lam * x included (0 * inf = NaN).
    x = torch.tensor([float("nan"), 1.0, float("inf"), 2.0, -float("inf"), 0.5, 0.0])
    g = torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0, float("inf"), -float("inf")])
    noise = torch.zeros(7)
    for clamp in (None, (-1.0, 1.0)):
        with lk.use_backend(cpu_backend):
            y = lk.langevin_step(x, g, step_size=0.1, noise_scale=1.0, prior_weight=lam, noise=noise, clamp=clamp)
        want, _ = expected_update(x, g, noise, 0.1, 1.0, lam, clamp)  # torch.clamp keeps NaN
        torch.testing.assert_close(y.double(), want, equal_nan=True, rtol=1e-6, atol=0)
    assert y[5] == -1 and y[6] == 1  # infinities are bounded by the clamp


def test_empty_tensors(cpu_backend):
    x = torch.empty(0, 3)
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, x.clone(), step_size=0.1, noise_scale=0.1, seed=0, offset=0)
        out = lk.langevin_step_(x, x.clone(), step_size=0.1, noise_scale=0.1, seed=0, offset=0)
    assert y.shape == (0, 3) and out is x


def test_triton_refuses_float64():
    pytest.importorskip("triton")
    from langevin_kernels import triton_kernels
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        triton_kernels.step(x, x, None, x, 0.1, 0.1, 0.0, -math.inf, math.inf, 0, 0, None)


# ----------------------------------------------------------------------------- autograd


def _gradcheck_inputs(clamp_binds):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y = x - 0.1 * (g + 0.5 * x) + 0.3 * noise
    if clamp_binds:
        # bounds between the sorted values, and no value within 1e-3 of a bound, so that
        # finite differences never cross a bound
        vals = y.flatten().sort().values
        lo, hi = (vals[5] + vals[6]).item() / 2, (vals[-6] + vals[-7]).item() / 2
        keep = ((y - lo).abs() > 1e-3) & ((y - hi).abs() > 1e-3)
        assert keep.all(), "regenerate: a value lies at a bound"
        clamp = (lo, hi)
    else:
        clamp = None
    return [t.requires_grad_() for t in (x, g, noise)], clamp


@pytest.mark.parametrize("clamp_binds", [False, True])
def test_gradcheck_through_x_grad_and_noise(cpu_backend, clamp_binds):
    if cpu_backend == "triton":
        pytest.skip("float64 gradcheck runs on the float64 backends")
    (x, g, noise), clamp = _gradcheck_inputs(clamp_binds)

    def f(x, g, noise):
        return lk.langevin_step(x, g, step_size=0.1, noise_scale=0.3, prior_weight=0.5, clamp=clamp, noise=noise)

    with lk.use_backend(cpu_backend):
        assert torch.autograd.gradcheck(f, (x, g, noise))
        assert torch.autograd.gradgradcheck(f, (x, g, noise))


def test_gradient_formula_where_clamp_binds():
    x = torch.tensor([0.0, 0.9, -0.9], requires_grad=True)
    g = torch.tensor([0.0, -10.0, 10.0], requires_grad=True)
    y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.0, prior_weight=1.0, clamp=(-1, 1))
    y.sum().backward()
    # element 0 is free: dy/dx = 1 - a*lam = 0.9, dy/dgrad = -a; elements 1, 2 are clamped
    assert torch.allclose(x.grad, torch.tensor([0.9, 0.0, 0.0]))
    assert torch.allclose(g.grad, torch.tensor([-0.1, 0.0, 0.0]))


def _op_samples(requires_grad):
    x, g, noise = (t.requires_grad_(requires_grad) for t in make_inputs((6, 5)))
    common = dict(step_size=0.1, noise_scale=0.2, seed=3, offset=7, prior_weight=0.5)
    return [
        (x, g, 0.1, 0.2, 3, 7, 0.5, None, None, None, None),
        (x, g, 0.1, 0.2, 3, 7, 0.5, -1.0, 1.0, None, None),
        (x, g, 0.1, 0.2, 3, 7, 0.0, None, 0.5, noise, None),
        (x, g, 0.1, 0.2, 0, 7, 0.5, None, None, None, torch.tensor([3, 100])),
    ], common


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_out_of_place(requires_grad):
    samples, _ = _op_samples(requires_grad)
    for args in samples:
        torch.library.opcheck(torch.ops.langevin_kernels.langevin_step.default, args)


def test_opcheck_in_place():
    samples, _ = _op_samples(False)
    for args in samples:
        args = (args[0].clone(),) + args[1:]
        torch.library.opcheck(torch.ops.langevin_kernels.langevin_step_.default, args)


def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()

    def chain_step(x, g, offset_noise):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, seed=1, offset=5, clamp=(-1, 1))
        return y * 2 + offset_noise

    compiled = torch.compile(chain_step, fullgraph=True)
    x, g, n = make_inputs((16, 8))
    assert torch.allclose(compiled(x, g, n), chain_step(x, g, n), atol=1e-6)

    def inplace_step(x, g):
        lk.langevin_step_(x, g, step_size=0.1, noise_scale=0.2, seed=2, offset=9)
        return x.sum()

    x1, x2 = x.clone(), x.clone()
    compiled_inplace = torch.compile(inplace_step, fullgraph=True)
    assert torch.allclose(compiled_inplace(x1, g), inplace_step(x2, g), atol=1e-4)
    assert torch.allclose(x1, x2, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def _call(**overrides):
    x, g, _ = make_inputs((4, 3))
    kwargs = dict(step_size=0.1, noise_scale=0.1)
    args = dict(x=x, grad=g)
    for k, v in overrides.items():
        (args if k in ("x", "grad") else kwargs)[k] = v
    return lk.langevin_step(args["x"], args["grad"], **kwargs)


@pytest.mark.parametrize("overrides,error,pattern", [
    (dict(grad=torch.zeros(4, 4)), ValueError, "grad has shape"),
    (dict(grad=torch.zeros(4, 3, dtype=torch.float64)), TypeError, "grad has dtype"),
    (dict(grad=torch.zeros(4, 3, device="meta")), ValueError, "grad is on meta"),
    (dict(x=torch.zeros(4, 3, dtype=torch.int32)), TypeError, "x has dtype torch.int32"),
    (dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (dict(step_size=-0.1), ValueError, "step_size=-0.1 must be >= 0"),
    (dict(step_size=float("nan")), ValueError, "step_size=nan must be finite"),
    (dict(step_size="0.1"), TypeError, "step_size must be a real number"),
    (dict(noise_scale=-1), ValueError, "noise_scale=-1.0 must be >= 0"),
    (dict(clamp=(1.0, -1.0)), ValueError, "lo > hi"),
    (dict(clamp=(0.0,)), TypeError, "clamp must be None or a pair"),
    (dict(clamp=(float("nan"), 1.0)), ValueError, "must be finite"),
    (dict(noise=torch.zeros(3, 4)), ValueError, "noise has shape"),
    (dict(noise=torch.zeros(4, 3, dtype=torch.float16)), TypeError, "noise has dtype"),
    (dict(seed=-3), ValueError, "seed=-3 is out of range"),
    (dict(offset=2**64), ValueError, "offset=18446744073709551616 is out of range"),
    (dict(offset=2**64 - 2), ValueError, "passes 2\\*\\*64"),
    (dict(rng_state=torch.zeros(3, dtype=torch.int64)), ValueError, "rng_state must be an int64 tensor"),
    (dict(rng_state=torch.zeros(2)), ValueError, "rng_state must be an int64 tensor"),
])
def test_bad_input_names_the_argument(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        _call(**overrides)


def test_inplace_on_leaf_requiring_grad_is_refused():
    x = torch.zeros(5, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        lk.langevin_step_(x, torch.zeros(5), step_size=0.1, noise_scale=0.1, seed=0, offset=0)
    with torch.no_grad():  # the optimizer-style update is allowed, as for torch's own in-place ops
        lk.langevin_step_(x, torch.zeros(5), step_size=0.1, noise_scale=0.1, seed=0, offset=0)
    assert x.abs().sum() > 0


def test_inplace_on_expanded_view_is_refused():
    x = torch.zeros(1, 4).expand(3, 4)
    with pytest.raises(ValueError, match="expanded view"):
        lk.langevin_step_(x, torch.zeros(3, 4), step_size=0.1, noise_scale=0.1)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="allowed: triton, cuda, cpp, eager"):
        lk.set_backend("numba")


def test_forced_backend_that_cannot_run_the_device_is_an_error():
    from langevin_kernels.dispatch import unavailable_reason
    assert unavailable_reason("cuda", "cpu") is not None
    x = torch.zeros(4)
    with lk.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was selected"):
        lk.langevin_step(x, x, step_size=0.1, noise_scale=0.1, seed=0, offset=0)


def test_backends_report():
    report = lk.backends()
    assert set(report) == {"triton", "cuda", "cpp", "eager"}
    assert report["eager"] == "available" and report["cpp"] == "available"
    if not torch.cuda.is_available():
        assert report["cuda"] != "available"
