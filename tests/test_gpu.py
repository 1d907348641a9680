"""GPU tests (`pytest -m gpu`): the CUDA C++ kernel ("cuda") and the Triton kernel
("triton") against each other, the eager reference ("eager") and the float64
formula, on CUDA tensors. On a machine without a GPU every test is skipped with
the reason.

On a GPU machine both backends must be available: a missing one fails the run
(it means the CUDA build or Triton is broken), it is never a skip.
"""
import math

import pytest
import torch

import langevin_kernels as lk
from langevin_kernels import dispatch, reference
from philox_spec import KNOWN_ANSWERS

HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

GPU_BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Error of the update relative to the size of its terms (|x| + a(|g| + |lam x|) + s|xi|):
# inputs are exact in their dtype and the math is float32 (float64 for float64), so
# the error is the final rounding to the dtype (2^-8 bf16, 2^-11 fp16) plus a few
# float32 roundings and FMA contractions; float32 gets the contract's 1e-6.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1.2e-3, torch.bfloat16: 8e-3, torch.float64: 1e-13}
# Every backend's float32 noise is within ~3e-6 of the exact stream (csrc/philox.h);
# the contract allows 1e-5.
NOISE_TOL = 1e-5
# Offsets whose 64-bit counter crosses 2^32 inside a draw, and seeds with the high bit set.
SEED_OFFSETS = [(0, 0), (7, 2**32 - 3), (2**64 - 1, 2**40 + 5), (12345, 2**64 - 2**20)]


@pytest.fixture(params=GPU_BACKENDS)
def gpu_backend(request):
    reason = dispatch.unavailable_reason(request.param, "cuda")
    assert reason is None, f"backend {request.param!r} must run on a GPU machine, but: {reason}"
    return request.param


def skip_float64_on_triton(backend, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend runs 16/32-bit floats; float64 goes to cuda")


def cuda_randn(shape, dtype=torch.float32, seed=0, count=3):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(shape, generator=gen, device="cuda", dtype=torch.float64).to(dtype)
            for _ in range(count)]


def formula(x, g, noise, a, s, lam=0.0, clamp=None):
    """The update in float64 from the (rounded) inputs, and the size of its terms."""
    x64, g64, n64 = x.double(), g.double(), noise.double()
    y = x64 - a * (g64 + lam * x64) + s * n64
    scale = x64.abs() + a * (g64.abs() + abs(lam) * x64.abs()) + s * n64.abs() + 1e-30
    if clamp is not None:
        y = y.clamp(*clamp)
    return y, scale


def assert_update_close(y, x, g, noise, a, s, lam=0.0, clamp=None, noise_err=0.0):
    """|y - formula| <= TOLERANCE * term size + s * noise_err (clamping is 1-Lipschitz)."""
    want, scale = formula(x, g, noise, a, s, lam, clamp)
    excess = ((y.double() - want).abs() - s * noise_err) / scale
    worst = excess.max().item()
    assert worst <= TOLERANCE[x.dtype], f"max relative error {worst:.3g} for {x.dtype}"


def stream(n, seed, offset):
    """The reference stream on the GPU (float64 Box-Muller, rounded to float32)."""
    with lk.use_backend("eager"):
        return lk.philox_normal(n, seed=seed, offset=offset, device="cuda")


def test_both_gpu_backends_are_available():
    for name in GPU_BACKENDS:
        assert dispatch.unavailable_reason(name, "cuda") is None, lk.backends()
    assert dispatch.select(torch.device("cuda"), torch.float64) == "cuda"


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(gpu_backend, counter, key, expected):
    counters = torch.tensor([counter], dtype=torch.int64, device="cuda")
    words = dispatch.run_philox(gpu_backend, counters, *key)
    assert [int(v) for v in words[0].cpu()] == list(expected)


def test_philox_random_counters_match_reference(gpu_backend):
    gen = torch.Generator().manual_seed(1)
    counters = torch.randint(0, 2**32, (4099, 4), generator=gen, dtype=torch.int64)
    want = reference.philox_bits(counters, 0x9E3779B9, 0xDEADBEEF)
    got = dispatch.run_philox(gpu_backend, counters.cuda(), 0x9E3779B9, 0xDEADBEEF)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 4097, 2**20 + 3])
@pytest.mark.parametrize("seed,offset", SEED_OFFSETS)
def test_noise_matches_reference(gpu_backend, n, seed, offset):
    with lk.use_backend(gpu_backend):
        got = lk.philox_normal(n, seed=seed, offset=offset, device="cuda")
    assert got.shape == (n,) and got.is_cuda
    assert (got - stream(n, seed, offset)).abs().max().item() <= NOISE_TOL


def test_cuda_noise_matches_cpu_kernel():
    if dispatch.unavailable_reason("cpp", "cpu"):
        pytest.skip("cpp backend not built")
    n, seed, offset = 2**18 + 1, 99, 2**32 - 1000
    with lk.use_backend("cuda"):
        gpu = lk.philox_normal(n, seed=seed, offset=offset, device="cuda").cpu()
    with lk.use_backend("cpp"):
        cpu = lk.philox_normal(n, seed=seed, offset=offset, device="cpu")
    # Same header, same float32 arithmetic; only nvcc's fast-math sqrt/div and FMA
    # contractions differ, a few ulp of values below 7.
    assert (gpu - cpu).abs().max().item() <= NOISE_TOL


def test_noise_from_device_state_equals_host_arguments(gpu_backend):
    state = torch.tensor([99, 2**33], dtype=torch.int64, device="cuda")
    with lk.use_backend(gpu_backend):
        from_state = lk.philox_normal(1001, seed=0, offset=5, device="cuda", rng_state=state)
        from_args = lk.philox_normal(1001, seed=99, offset=2**33 + 5, device="cuda")
    assert torch.equal(from_state, from_args)


def test_huge_noise_cuda_vs_triton_vs_reference():
    # 2^28 + 3 float32 normals (1 GiB), with the counter crossing 2^32 in the middle:
    # the backends agree everywhere, and both ends match the reference at the same
    # counters (64-bit indexing, the tail).
    n = 2**28 + 3
    seed, offset = 2024, 2**32 - 2**25
    outs = {}
    for name in GPU_BACKENDS:
        with lk.use_backend(name):
            outs[name] = lk.philox_normal(n, seed=seed, offset=offset, device="cuda")
    assert (outs["cuda"] - outs["triton"]).abs().max().item() <= 2 * NOISE_TOL
    tail_start = (n - 4099) // 4 * 4
    for got in outs.values():
        assert (got[:4099] - stream(4099, seed, offset)).abs().max().item() <= NOISE_TOL
        tail = stream(n - tail_start, seed, offset + tail_start // 4)
        assert (got[tail_start:] - tail).abs().max().item() <= NOISE_TOL
    del outs


# ----------------------------------------------------------------------------- update

ODD_SHAPES = [(1,), (3,), (5,), (7, 9), (2, 3, 17), (4097,), (1000003,)]
VARIANTS = [(0.0, None), (1.0, (-1.0, 1.0)), (0.5, (None, 0.5))]  # (prior_weight, clamp)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("lam,clamp", VARIANTS)
def test_update_with_explicit_noise(gpu_backend, dtype, shape, lam, clamp):
    skip_float64_on_triton(gpu_backend, dtype)
    x, g, noise = cuda_randn(shape, dtype)
    with lk.use_backend(gpu_backend):
        y = lk.langevin_step(x, g, step_size=0.05, noise_scale=0.3, prior_weight=lam, clamp=clamp, noise=noise)
    assert y.shape == x.shape and y.dtype == dtype and y.is_cuda
    assert_update_close(y, x, g, noise, 0.05, 0.3, lam, clamp)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam,clamp", VARIANTS)
def test_update_with_internal_noise(gpu_backend, dtype, lam, clamp):
    skip_float64_on_triton(gpu_backend, dtype)
    x, g = cuda_randn((333, 77), dtype, count=2)
    seed, offset = 2**63 + 11, 2**32 - 5000
    with lk.use_backend(gpu_backend):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.5, seed=seed, offset=offset,
                             prior_weight=lam, clamp=clamp)
    noise = stream(x.numel(), seed, offset).reshape(x.shape)
    assert_update_close(y, x, g, noise, 0.1, 0.5, lam, clamp, noise_err=NOISE_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_update_cuda_vs_triton_vs_reference(dtype):
    # 2^28 - 3 elements: the kernels' 64-bit indexing and their last, partial chunk.
    numel = 2**28 - 3
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(numel, generator=gen, device="cuda", dtype=dtype)
    g = torch.randn(numel, generator=gen, device="cuda", dtype=dtype)
    kwargs = dict(step_size=0.01, noise_scale=0.2, seed=17, offset=2**32 - 2**24, prior_weight=1.0,
                  clamp=(-2.0, 2.0))
    ys = {}
    for name in GPU_BACKENDS:
        with lk.use_backend(name):
            ys[name] = lk.langevin_step(x, g, **kwargs)
    # Same float32 math up to the noise's last bits: one output rounding of the dtype apart.
    diff = (ys["cuda"].float() - ys["triton"].float()).abs()
    bound = 2 * kwargs["noise_scale"] * NOISE_TOL + TOLERANCE[dtype] * (x.float().abs() + 2.5)
    assert (diff <= bound).all()
    del diff, bound
    for start in (0, numel - 4099 - 1):
        start = start // 4 * 4
        xs, gs = x[start:start + 4099], g[start:start + 4099]
        noise = stream(xs.numel(), kwargs["seed"], kwargs["offset"] + start // 4)
        for y in ys.values():
            assert_update_close(y[start:start + 4099], xs, gs, noise, 0.01, 0.2, 1.0, (-2.0, 2.0),
                                noise_err=NOISE_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_equals_out_of_place(gpu_backend, dtype):
    skip_float64_on_triton(gpu_backend, dtype)
    x, g = cuda_randn((10, 1001), dtype, count=2)
    kwargs = dict(step_size=0.2, noise_scale=0.7, seed=9, offset=2**40, prior_weight=1.0, clamp=(-1.5, 1.5))
    with lk.use_backend(gpu_backend):
        y = lk.langevin_step(x, g, **kwargs)
        out = lk.langevin_step_(x, g, **kwargs)
    assert out is x
    assert torch.equal(x, y)


def test_cuda_update_matches_cpu_kernel():
    if dispatch.unavailable_reason("cpp", "cpu"):
        pytest.skip("cpp backend not built")
    x, g = cuda_randn((513, 9), count=2)
    kwargs = dict(step_size=0.1, noise_scale=1.0, seed=3, offset=2**32 - 100, prior_weight=0.5, clamp=(-2, 2))
    with lk.use_backend("cuda"):
        gpu = lk.langevin_step(x, g, **kwargs).cpu()
    with lk.use_backend("cpp"):
        cpu = lk.langevin_step(x.cpu(), g.cpu(), **kwargs)
    assert (gpu - cpu).abs().max().item() <= NOISE_TOL + 1e-6 * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("numel", [1, 3, 5, 8, 9, 4097, 4 * 65536 + 3, 1000003])
@pytest.mark.parametrize("explicit_noise", [False, True])
@pytest.mark.parametrize("misaligned", [False, True])
def test_nan_poisoned_output_fully_written(gpu_backend, dtype, numel, explicit_noise, misaligned):
    # The kernel entry point writes into a NaN-poisoned buffer with NaN guard
    # elements after it: every output element must be written (tails, chunk and
    # block edges), and nothing past the end. `misaligned` starts every tensor one
    # element into its buffer, off the 16-byte vector alignment.
    skip_float64_on_triton(gpu_backend, dtype)
    shift = 1 if misaligned else 0
    guard = 16
    x, g, noise = (t[shift:shift + numel] for t in cuda_randn(numel + shift, dtype, seed=numel))
    buf = torch.full((shift + numel + guard,), float("nan"), device="cuda", dtype=dtype)
    out = buf[shift:shift + numel]
    args = (noise if explicit_noise else None, 0.1, 0.2, 0.5, -3.0, 3.0, 1, 2**32 - 3, None)
    dispatch.run_step(gpu_backend, x, g, args[0], out, *args[1:])
    assert not out.isnan().any(), f"{int(out.isnan().sum())} elements not written"
    assert buf[:shift].isnan().all() and buf[shift + numel:].isnan().all(), "wrote outside out"
    # internal noise is float32 in every dtype: compare with the float32 reference stream
    ref_noise = noise if explicit_noise else stream(numel, 1, 2**32 - 3)
    assert_update_close(out, x, g, ref_noise, 0.1, 0.2, 0.5, (-3.0, 3.0),
                        noise_err=0.0 if explicit_noise else NOISE_TOL)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last"])
def test_non_contiguous_inputs(gpu_backend, layout):
    base = cuda_randn((6, 8, 10, 12))
    if layout == "transposed":
        x, g, noise = (t[0, 0].t() for t in base)
    elif layout == "sliced":
        x, g, noise = (t[:, ::2, 1:, ::3] for t in base)
    else:
        x, g, noise = (t.contiguous(memory_format=torch.channels_last) for t in base)
    assert not x.is_contiguous()
    with lk.use_backend(gpu_backend):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, noise=noise)
        y_internal = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, seed=1)
        y_contig = lk.langevin_step(x.contiguous(), g.contiguous(), step_size=0.1, noise_scale=0.2, seed=1)
        view = x.clone()
        lk.langevin_step_(view, g, step_size=0.1, noise_scale=0.2, seed=1)
    assert_update_close(y, x, g, noise, 0.1, 0.2)
    # Noise follows the logical row-major index, whatever the memory layout.
    assert torch.equal(y_internal, y_contig)
    assert torch.equal(view, y_contig)


def test_empty_tensors(gpu_backend):
    x = torch.empty(0, 3, device="cuda")
    with lk.use_backend(gpu_backend):
        y = lk.langevin_step(x, x.clone(), step_size=0.1, noise_scale=0.1)
        out = lk.langevin_step_(x, x.clone(), step_size=0.1, noise_scale=0.1)
        z = lk.philox_normal(0, seed=1, device="cuda")
    assert y.shape == (0, 3) and out is x and z.shape == (0,)


def test_nan_and_inf_propagate_as_the_formula_says(gpu_backend):
    x = torch.tensor([float("nan"), 1.0, float("inf"), 2.0, -float("inf"), 0.5, 0.0], device="cuda")
    g = torch.tensor([0.0, float("nan"), 0.0, 0.0, 0.0, float("inf"), -float("inf")], device="cuda")
    noise = torch.zeros(7, device="cuda")
    for clamp in (None, (-1.0, 1.0)):
        with lk.use_backend(gpu_backend):
            y = lk.langevin_step(x, g, step_size=0.1, noise_scale=1.0, prior_weight=1.0, noise=noise, clamp=clamp)
        want, _ = formula(x, g, noise, 0.1, 1.0, 1.0, clamp)
        torch.testing.assert_close(y.double(), want, equal_nan=True, rtol=1e-6, atol=0)


def test_cuda_launches_on_the_current_stream():
    # Work queued on a side stream: the kernel must wait for the fill that precedes
    # it there, which it only does if it launches on that stream.
    side = torch.cuda.Stream()
    x = torch.zeros(2**24, device="cuda")
    g = torch.ones_like(x)
    side.wait_stream(torch.cuda.current_stream())  # x and g are made on the default stream
    with torch.cuda.stream(side), lk.use_backend("cuda"):
        torch.cuda._sleep(10_000_000)  # keep the side stream busy (~5-10 ms)
        x.fill_(1.0)
        y = lk.langevin_step(x, g, step_size=0.5, noise_scale=0.0)
    side.synchronize()
    assert torch.equal(y, torch.full_like(x, 0.5))


# ----------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_graph_replay_draws_fresh_noise_from_device_state(backend):
    # A captured in-place step reads (seed, offset) from rng_state, and the captured
    # work advances rng_state[1]: replay k equals the uncaptured op at offset
    # base + k * advance, so every replay draws new noise. The base puts the 64-bit
    # counter across 2^32 during the second replay.
    shape = (7, 143)
    adv = lk.noise_offset_advance(7 * 143)
    seed, base = 2**63 + 12345, 2**32 - adv - 1
    seed64 = seed - 2**64
    kwargs = dict(step_size=0.01, noise_scale=0.5, prior_weight=0.3, clamp=(-3.0, 3.0))
    x0, g = cuda_randn(shape, count=2)
    x = x0.clone()
    state = torch.tensor([seed64, base], dtype=torch.int64, device="cuda")
    with lk.use_backend(backend):
        scratch = x0.clone()  # warm-up outside the capture (compiles, lazy initialisation)
        lk.langevin_step_(scratch, g, rng_state=state.clone(), **kwargs)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            lk.langevin_step_(x, g, rng_state=state, **kwargs)
            state[1] += adv
        x.copy_(x0)  # capture records the work without running it; start from x0 anyway
        state.copy_(torch.tensor([seed64, base], dtype=torch.int64))
        for k in range(4):
            prev = x.clone()
            graph.replay()
            want = lk.langevin_step(prev, g, seed=seed, offset=base + k * adv, **kwargs)
            stale = lk.langevin_step(prev, g, seed=seed, offset=base, **kwargs)
            torch.cuda.synchronize()
            torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
            if k:  # a replay that did not advance the state would reuse replay 0's noise
                assert (x - stale).abs().max().item() > 0.1
    assert state.tolist() == [seed64, base + 4 * adv]
    del graph


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_graph_replay_of_philox_normal(backend):
    n = 4099
    adv = lk.noise_offset_advance(n)
    state = torch.tensor([5, 2**32 - adv], dtype=torch.int64, device="cuda")
    with lk.use_backend(backend):
        lk.philox_normal(n, seed=0, device="cuda", rng_state=state.clone())
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            z = lk.philox_normal(n, seed=0, device="cuda", rng_state=state)
            state[1] += adv
        state.copy_(torch.tensor([5, 2**32 - adv], dtype=torch.int64))
        for k in range(3):
            graph.replay()
            want = lk.philox_normal(n, seed=5, offset=2**32 - adv + k * adv, device="cuda")
            torch.cuda.synchronize()
            assert torch.equal(z, want)
    del graph


# ----------------------------------------------------------------------------- torch.library, compile


def _op_samples(requires_grad):
    x, g, noise = (t.requires_grad_(requires_grad) for t in cuda_randn((6, 5)))
    state = torch.tensor([3, 100], dtype=torch.int64, device="cuda")
    return [
        (x, g, 0.1, 0.2, 3, 7, 0.5, None, None, None, None),
        (x, g, 0.1, 0.2, 3, 7, 0.5, -1.0, 1.0, None, None),
        (x, g, 0.1, 0.2, 3, 7, 0.0, None, 0.5, noise, None),
        (x, g, 0.1, 0.2, 0, 7, 0.5, None, None, None, state),
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_out_of_place(gpu_backend, requires_grad):
    with lk.use_backend(gpu_backend):
        for args in _op_samples(requires_grad):
            torch.library.opcheck(torch.ops.langevin_kernels.langevin_step.default, args)


def test_opcheck_in_place(gpu_backend):
    with lk.use_backend(gpu_backend):
        for args in _op_samples(False):
            args = (args[0].clone(),) + args[1:]
            torch.library.opcheck(torch.ops.langevin_kernels.langevin_step_.default, args)


def test_torch_compile_fullgraph(gpu_backend):
    torch._dynamo.reset()

    def chain_step(x, g, extra):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=0.2, seed=1, offset=2**32 - 3, clamp=(-1, 1))
        lk.langevin_step_(x, g, step_size=0.1, noise_scale=0.2, seed=2, offset=9)
        return y * 2 + extra, x.sum()

    compiled = torch.compile(chain_step, fullgraph=True)
    x, g, extra = cuda_randn((64, 33))
    x_eager = x.clone()
    with lk.use_backend(gpu_backend):
        got, got_sum = compiled(x, g, extra)
        want, want_sum = chain_step(x_eager, g, extra)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(x, x_eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_sum, want_sum, rtol=1e-5, atol=1e-4)
