"""The C++ CPU kernel's SIMD code paths (csrc/cpu/simd_kernels.h).

The kernel is compiled once per instruction set (a 128-bit baseline for every CPU,
AVX2 where the CPU has it) and picks one at run time. Both must give bit-identical
results, independent of the thread count, and equal to the float32 formula:
  - every SIMD path against the baseline, bit for bit (tails of every length mod 4
    and mod the 32-counter SIMD batch, NaN and inf in x and grad, each dtype);
  - explicit-noise updates of every float16/bfloat16 bit pattern against torch's own
    float32 arithmetic and rounding (the kernel rounds 16-bit results by hand);
  - each path's noise against the float64 reference stream.
No timing here: speed is measured by the step suite (python -m benchmarks.run --suite step).
"""
import pytest
import torch

import langevin_kernels as lk
from langevin_kernels import reference
from langevin_kernels.dispatch import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("cpp", "cpu") is not None,
                                reason=f"C++ extension: {unavailable_reason('cpp', 'cpu')}")

INF = float("inf")
# element counts that end a SIMD batch (32 counters with AVX2, 16 with the baseline)
# at every remainder mod 4, and one that spans several parallel tasks
SIZES = [1, 2, 3, 5, 63, 64, 65, 127, 129, 130, 131, 1029, 70001]
BIT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64,
            torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _ops():
    return torch.ops.langevin_kernels


def _available_isas():
    isas = ["baseline"]
    previous = _ops()._ext_cpu_isa()
    try:
        _ops()._ext_cpu_isa("avx2")
        isas.append("avx2")
    except RuntimeError:  # this CPU has no AVX2
        pass
    finally:
        _ops()._ext_cpu_isa(previous)
    return isas


@pytest.fixture
def restore_isa_and_threads():
    isa, threads = _ops()._ext_cpu_isa(), torch.get_num_threads()
    yield
    _ops()._ext_cpu_isa(isa)
    torch.set_num_threads(threads)


def _inputs(n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen).mul_(0.9).to(dtype)
    g = torch.randn(n, generator=gen).to(dtype)
    noise = torch.randn(n, generator=gen).to(dtype)
    specials = [(x, 0, float("nan")), (g, 1, float("nan")), (x, 2, INF), (g, 3, -INF), (x, 4, -INF)]
    for t, i, v in specials:
        if i < n:
            t[i] = v
    return x, g, noise


def _run_step(x, g, noise, a, s, lam, lo, hi, seed, offset):
    y = torch.empty_like(x)
    _ops()._ext_step(x, g, noise, y, a, s, lam, lo, hi, seed, offset, None)
    return y


def _bits(t):
    return t.view(BIT_VIEW[t.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_isa_and_thread_count_gives_the_same_bits(dtype, restore_isa_and_threads):
    params = [(0.01, 0.1, 0.0, -INF, INF, 0, 0), (0.5, 1.0, 1.0, -1.0, 1.0, 7, 2**32 - 5)]
    results = {}
    for isa in _available_isas():
        _ops()._ext_cpu_isa(isa)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for n in SIZES:
                x, g, noise = _inputs(n, dtype, seed=n)
                for p in params:
                    for explicit in (None, noise):
                        y = _run_step(x, g, explicit, *p)
                        key = (n, p, explicit is None)
                        if key in results:
                            assert torch.equal(_bits(y), _bits(results[key])), (isa, threads, key)
                        else:
                            results[key] = y
                out = torch.empty(n)
                _ops()._ext_normal(out, 3, 2**32 - 7, None)
                if ("normal", n) in results:
                    assert torch.equal(_bits(out), _bits(results[("normal", n)])), (isa, threads, n)
                else:
                    results[("normal", n)] = out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("a, s, lam, lo, hi", [
    (0.0, 1.0, 0.0, -INF, INF),       # y = x + xi: every rounding case of the sum
    (1e-3, 0.37, 0.0, -1.0, 1.0),
    (0.3, 1.7, 1.0, -INF, INF),
    (0.0, 3e4, 0.0, -INF, INF),       # float16 overflow to inf
    (0.0, 1e-6, 0.0, -INF, INF),      # float16 subnormal results
])
def test_16bit_updates_equal_torch_float32_math(dtype, a, s, lam, lo, hi, restore_isa_and_threads):
    # x runs through all 65536 bit patterns (zeros, subnormals, inf, NaN included). The
    # reference is torch's float32 arithmetic, one rounding per operation in the order of
    # the formula, then torch's own rounding to the 16-bit type: the kernel must match it
    # bit for bit (NaN only has to stay NaN).
    gen = torch.Generator().manual_seed(11)
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    g = torch.randn(65536, generator=gen).to(dtype)
    noise = (torch.randn(65536, generator=gen) * torch.logspace(-9, 5, 65536)).to(dtype)
    xf, gf, nf = x.float(), g.float(), noise.float()
    expected = (xf - a * (gf + lam * xf) + s * nf).clamp(lo, hi).to(dtype)
    for isa in _available_isas():
        _ops()._ext_cpu_isa(isa)
        y = _run_step(x, g, noise, a, s, lam, lo, hi, 0, 0)
        both_nan = torch.isnan(y) & torch.isnan(expected)
        mismatch = (_bits(y) != _bits(expected)) & ~both_nan
        assert not bool(mismatch.any()), (isa, x[mismatch][:5], y[mismatch][:5], expected[mismatch][:5])


@pytest.mark.parametrize("seed, offset", [(0, 0), (123, 2**32 - 3), (2**64 - 1, 2**40)])
def test_each_isa_noise_is_the_reference_stream(seed, offset, restore_isa_and_threads):
    # The float32 stream is within ~1e-6 of the float64 reference (philox.h: log series
    # remainder < 4e-9, angle polynomials ~2e-8, plus float32 rounding of |n| <= 6.7).
    n = 4 * 4099 + 3
    expected = reference.philox_normal(n, seed=seed, offset=offset, dtype=torch.float64)
    for isa in _available_isas():
        _ops()._ext_cpu_isa(isa)
        with lk.use_backend("cpp"):
            got = lk.philox_normal(n, seed=seed, offset=offset)
        assert (got.double() - expected).abs().max().item() < 2e-6, isa


def test_unknown_isa_is_refused(restore_isa_and_threads):
    with pytest.raises(RuntimeError, match="allowed: auto, baseline, avx2"):
        _ops()._ext_cpu_isa("sse9")
