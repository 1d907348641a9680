"""The op contract (docs/op.md): values, layouts, dtypes, in-place form,
autograd, opcheck, torch.compile, and one test per input error."""
import math

import pytest
import torch

import langevin_kernels as lk
from backends import backend_params, per_device, runs_dtype
from langevin_kernels import dispatch
from update_reference import NOISE_TOL, assert_update_close, expected_update

torch.manual_seed(0)

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SHAPES = {"cpu": [(1,), (3,), (4,), (5,), (7, 9), (2, 3, 17), (4097,), (64, 1000)],
          "cuda": [(1,), (3,), (5,), (7, 9), (2, 3, 17), (4097,), (1000003,)]}
# (prior_weight, clamp): none, the prior alone, a two-sided and a one-sided clamp, both.
VARIANTS = [(0.0, None), (1.0, None), (0.0, (-1.0, 1.0)), (1.0, (-1.0, 1.0)), (0.5, (None, 0.5)),
            (0.5, (-2.0, 2.0))]


def make_inputs(shape, dtype=torch.float32, seed=0, device="cpu", count=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
            for _ in range(count)]




def exact_stream(n, seed, offset, device):
    """The eager backend's stream (float64 Box-Muller of the Philox words, rounded to float32)."""
    with lk.use_backend("eager"):
        return lk.philox_normal(n, seed=seed, offset=offset, device=device)


# Every shape in float32, and every dtype on one shape (CPU); every shape in every dtype (CUDA).
_SHAPE_DTYPES = per_device(
    cpu=[(shape, torch.float32) for shape in SHAPES["cpu"]] + [((33, 31), dtype) for dtype in DTYPES[1:]],
    cuda=[(shape, dtype) for shape in SHAPES["cuda"] for dtype in DTYPES],
    keep=lambda backend, case: runs_dtype(backend, case[1]))


@pytest.mark.parametrize("backend,shape_dtype", _SHAPE_DTYPES, indirect=["backend"])
@pytest.mark.parametrize("lam,clamp", VARIANTS)
def test_update_with_explicit_noise(backend, shape_dtype, lam, clamp):
    shape, dtype = shape_dtype
    x, g, noise = make_inputs(shape, dtype, device=backend.device)
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, step_size=0.05, noise_scale=0.3, prior_weight=lam, clamp=clamp, noise=noise)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert_update_close(y, x, g, noise, 0.05, 0.3, lam, clamp)


@pytest.mark.parametrize("backend,dtype", per_device(DTYPES, DTYPES, keep=runs_dtype), indirect=["backend"])
@pytest.mark.parametrize("lam,clamp", VARIANTS)
def test_internal_noise_is_the_published_stream(backend, dtype, lam, clamp):
    x, g = make_inputs((333, 77), dtype, device=backend.device, count=2)
    seed, offset = 2**63 + 11, 2**32 - 5000  # the high seed bit set; the counter's low word wraps
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.5, seed=seed, offset=offset,
                             prior_weight=lam, clamp=clamp)
    noise = exact_stream(x.numel(), seed, offset, backend.device).reshape(x.shape)
    assert_update_close(y, x, g, noise, 0.1, 0.5, lam, clamp, noise_err=NOISE_TOL)
    if dtype == torch.float32:
        # and against the public stream of the automatic backend: the stream itself is
        # checked to 1e-5 in test_noise.py; times noise_scale 0.5.
        public = lk.philox_normal(x.numel(), seed=seed, offset=offset, device=backend.device).reshape(x.shape)
        want, _ = expected_update(x, g, public, 0.1, 0.5, lam, clamp)
        assert (y.double() - want).abs().max().item() < 1e-5


def test_backends_agree_with_internal_noise(backend):
    x, g, _ = make_inputs((1000, 3), device=backend.device)
    kwargs = dict(step_size=0.01, noise_scale=1.0, seed=5, offset=123, prior_weight=1.0, clamp=(-3, 3))
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, **kwargs)
    with lk.use_backend("eager"):
        ref = lk.langevin_step(x, g, **kwargs)
    assert (y - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
def test_non_contiguous_inputs(backend, layout):
    base = make_inputs((6, 8, 10, 12), device=backend.device)
    if layout == "transposed":
        x, g, noise = (t[0, 0].t() for t in base)
    elif layout == "sliced":
        x, g, noise = (t[:, ::2, 1:, ::3] for t in base)
    else:
        x, g, noise = (t.contiguous(memory_format=torch.channels_last) for t in base)
    assert not x.is_contiguous()
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, noise=noise)
        y_internal = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, seed=1, offset=0)
        y_contig = lk.langevin_step(x.contiguous(), g.contiguous(), step_size=0.1, noise_scale=0.2, seed=1, offset=0)
        view = x.clone()  # clone keeps the layout
        lk.langevin_step_(view, g, step_size=0.1, noise_scale=0.2, seed=1, offset=0)
    assert_update_close(y, x, g, noise, 0.1, 0.2)
    # Noise follows the logical row-major index, whatever the memory layout.
    assert torch.equal(y_internal, y_contig)
    assert torch.equal(view, y_contig)


def test_inplace_mutates_and_returns_x(backend):
    x, g, noise = make_inputs((129,), device=backend.device)
    before = x.clone()
    with lk.use_backend(backend.name):
        out = lk.langevin_step_(x, g, step_size=0.1, noise_scale=0.2, noise=noise, clamp=(-1, 1))
    assert out is x
    assert_update_close(x, before, g, noise, 0.1, 0.2, clamp=(-1, 1))


@pytest.mark.parametrize("backend,dtype", per_device(DTYPES, DTYPES, keep=runs_dtype), indirect=["backend"])
def test_inplace_equals_out_of_place(backend, dtype):
    x, g = make_inputs((10, 1001), dtype, device=backend.device, count=2)
    kwargs = dict(step_size=0.2, noise_scale=0.7, seed=9, offset=2**40, prior_weight=1.0, clamp=(-1.5, 1.5))
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, **kwargs)
        out = lk.langevin_step_(x, g, **kwargs)
    assert out is x
    assert torch.equal(x, y)


def test_inplace_on_non_contiguous_view_updates_the_view_only(backend):
    x, g, _ = make_inputs((8, 8), device=backend.device)
    view, gv = x.t()[::2], g.t()[::2]
    untouched = x.t()[1::2].clone()
    expected = lk.langevin_step(view, gv, step_size=0.1, noise_scale=0.3, seed=4, offset=0)
    with lk.use_backend(backend.name):
        lk.langevin_step_(view, gv, step_size=0.1, noise_scale=0.3, seed=4, offset=0)
    assert torch.allclose(view, expected, atol=1e-6)
    assert torch.equal(x.t()[1::2], untouched)


# Sizes around SIMD tails, L1 blocks, thread chunks (CPU); vector tails, 4-element Philox
# groups, block and grid-stride edges (CUDA).
_POISON_CASES = per_device(
    cpu=[(numel, dtype) for numel in (1, 5, 4096 * 4 + 3, 70001) for dtype in (torch.float32,)]
    + [(4096 * 4 + 3, dtype) for dtype in (torch.bfloat16, torch.float64)],
    cuda=[(numel, dtype) for numel in (1, 3, 5, 8, 9, 4097, 4 * 65536 + 3, 1000003)
          for dtype in (torch.float32, torch.bfloat16, torch.float64)],
    keep=lambda backend, case: runs_dtype(backend, case[1]))


@pytest.mark.parametrize("backend,numel_dtype", _POISON_CASES, indirect=["backend"])
@pytest.mark.parametrize("explicit_noise", [False, True])
@pytest.mark.parametrize("misaligned", [False, True])
def test_every_output_element_written(backend, numel_dtype, explicit_noise, misaligned):
    # The kernel entry point writes into a NaN-poisoned buffer with NaN guard
    # elements after it: every output element must be written (tails, chunk and
    # block edges), and nothing past the end. `misaligned` starts every tensor one
    # element into its buffer, off the 16-byte vector alignment.
    numel, dtype = numel_dtype
    shift, guard = (1 if misaligned else 0), 16
    x, g, noise = (t[shift:shift + numel] for t in make_inputs(numel + shift, dtype, numel, backend.device))
    buf = torch.full((shift + numel + guard,), float("nan"), device=backend.device, dtype=dtype)
    out = buf[shift:shift + numel]
    seed, offset = 1, 2**32 - 3
    dispatch.run_step(backend.name, x, g, noise if explicit_noise else None, out,
                      0.1, 0.2, 0.5, -3.0, 3.0, seed, offset, None)
    assert not out.isnan().any(), f"{int(out.isnan().sum())} elements not written"
    assert buf[:shift].isnan().all() and buf[shift + numel:].isnan().all(), "wrote outside out"
    # internal noise is float32 in every dtype: compare with the float32 reference stream
    ref_noise = noise if explicit_noise else exact_stream(numel, seed, offset, backend.device)
    assert_update_close(out, x, g, ref_noise, 0.1, 0.2, 0.5, (-3.0, 3.0),
                        noise_err=0.0 if explicit_noise else NOISE_TOL)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_nan_and_inf_propagate_as_the_formula_says(backend, lam):
    # IEEE arithmetic of the formula as written, lam * x included (0 * inf = NaN).
    x = torch.tensor([float("nan"), 1.0, float("inf"), 2.0, -float("inf"), 0.5, 0.0], device=backend.device)
    g = torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0, float("inf"), -float("inf")], device=backend.device)
    noise = torch.zeros(7, device=backend.device)
    for clamp in (None, (-1.0, 1.0)):
        with lk.use_backend(backend.name):
            y = lk.langevin_step(x, g, step_size=0.1, noise_scale=1.0, prior_weight=lam, noise=noise, clamp=clamp)
        want, _ = expected_update(x, g, noise, 0.1, 1.0, lam, clamp)  # torch.clamp keeps NaN
        torch.testing.assert_close(y.double(), want, equal_nan=True, rtol=1e-6, atol=0)
    assert y[5] == -1 and y[6] == 1  # infinities are bounded by the clamp


def test_empty_tensors(backend):
    x = torch.empty(0, 3, device=backend.device)
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, x.clone(), step_size=0.1, noise_scale=0.1, seed=0, offset=0)
        out = lk.langevin_step_(x, x.clone(), step_size=0.1, noise_scale=0.1, seed=0, offset=0)
        z = lk.philox_normal(0, seed=1, device=backend.device)
    assert y.shape == (0, 3) and out is x and z.shape == (0,)


def test_triton_refuses_float64():
    pytest.importorskip("triton")
    from langevin_kernels import triton_kernels
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        triton_kernels.step(x, x, None, x, 0.1, 0.1, 0.0, -math.inf, math.inf, 0, 0, None)


# ----------------------------------------------------------------------------- autograd


def _gradcheck_inputs(clamp_binds, device="cpu"):
    gen = torch.Generator().manual_seed(3)
    x, g, noise = (torch.randn(5, 4, generator=gen, dtype=torch.float64).to(device) for _ in range(3))
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


@pytest.mark.parametrize("backend", backend_params(keep=lambda b: b.name != "triton"), indirect=True)
@pytest.mark.parametrize("clamp_binds", [False, True])
def test_gradcheck_through_x_grad_and_noise(backend, clamp_binds):
    # float64 gradcheck: on the float64 backends (triton runs 16/32-bit floats)
    (x, g, noise), clamp = _gradcheck_inputs(clamp_binds, backend.device)

    def f(x, g, noise):
        return lk.langevin_step(x, g, step_size=0.1, noise_scale=0.3, prior_weight=0.5, clamp=clamp, noise=noise)

    with lk.use_backend(backend.name):
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


def _op_samples(requires_grad, device):
    x, g, noise = (t.requires_grad_(requires_grad) for t in make_inputs((6, 5), device=device))
    state = torch.tensor([3, 100], dtype=torch.int64, device=device)
    return [
        (x, g, 0.1, 0.2, 3, 7, 0.5, None, None, None, None),
        (x, g, 0.1, 0.2, 3, 7, 0.5, -1.0, 1.0, None, None),
        (x, g, 0.1, 0.2, 3, 7, 0.0, None, 0.5, noise, None),
        (x, g, 0.1, 0.2, 0, 7, 0.5, None, None, None, state),
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_out_of_place(backend, requires_grad):
    with lk.use_backend(backend.name):
        for args in _op_samples(requires_grad, backend.device):
            torch.library.opcheck(torch.ops.langevin_kernels.langevin_step.default, args)


def test_opcheck_in_place(backend):
    with lk.use_backend(backend.name):
        for args in _op_samples(False, backend.device):
            args = (args[0].clone(),) + args[1:]
            torch.library.opcheck(torch.ops.langevin_kernels.langevin_step_.default, args)


def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    def chain_step(x, g, extra):
        # offset 2**32 - 3: the counter's low word wraps inside the draw
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, seed=1, offset=2**32 - 3, clamp=(-1, 1))
        lk.langevin_step_(x, g, step_size=0.1, noise_scale=0.2, seed=2, offset=9)
        return y * 2 + extra, x.sum()

    compiled = torch.compile(chain_step, fullgraph=True)
    x, g, extra = make_inputs((64, 33), device=backend.device)
    x_eager = x.clone()
    with lk.use_backend(backend.name):
        got, got_sum = compiled(x, g, extra)
        want, want_sum = chain_step(x_eager, g, extra)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(x, x_eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_sum, want_sum, rtol=1e-5, atol=1e-4)


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
