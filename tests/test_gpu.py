"""GPU-only tests (`pytest -m gpu`): what has no CPU counterpart. The CUDA C++ kernel
("cuda") and the Triton kernel ("triton") against each other and the CPU kernel, at sizes
past 2^28 elements, on a side stream and under CUDA-graph capture. The contract tests
(values, layouts, dtypes, NaN/inf, empty, opcheck, compile, the noise stream) are written
once in test_ops.py and test_noise.py and run there on every backend, CUDA ones included
(tests/backends.py). On a machine without a GPU every test is skipped with the reason.

On a GPU machine both backends must be available: a missing one fails the run
(it means the CUDA build or Triton is broken), it is never a skip.
"""
import pytest
import torch

import langevin_kernels as lk
from langevin_kernels import dispatch
from update_reference import NOISE_TOL, TOLERANCE, assert_update_close

HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

GPU_BACKENDS = ("cuda", "triton")


def cuda_randn(shape, dtype=torch.float32, seed=0, count=3):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(shape, generator=gen, device="cuda", dtype=torch.float64).to(dtype)
            for _ in range(count)]




def stream(n, seed, offset):
    """The reference stream on the GPU (float64 Box-Muller, rounded to float32)."""
    with lk.use_backend("eager"):
        return lk.philox_normal(n, seed=seed, offset=offset, device="cuda")


def test_both_gpu_backends_are_available():
    for name in GPU_BACKENDS:
        assert dispatch.unavailable_reason(name, "cuda") is None, lk.backends()
    assert dispatch.select(torch.device("cuda"), torch.float64) == "cuda"


# ----------------------------------------------------------------------------- noise


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
