"""The noise stream (docs/noise.md): known answers, equality across backends
and with an independent rendering of the spec, and its statistics."""
import numpy as np
import pytest
import torch

import langevin_kernels as lk
from backends import per_device
from langevin_kernels import dispatch, reference
from philox_spec import KNOWN_ANSWERS, normal_stream

# Offsets chosen so that the 64-bit counter's low word wraps inside the draw; seeds with the
# high bit set; "last" is the largest offset whose draw still fits below 2^64.
SEED_OFFSETS = [(0, 0), (7, 2**32 - 3), (2**64 - 1, 2**40 + 5), (12345, "last")]
# 2^20 + 3 on CUDA: a partial last Philox group after many full blocks.
LENGTHS = per_device(cpu=[1, 3, 4, 5, 4097, 2**20], cuda=[1, 3, 4, 5, 4097, 2**20 + 3])


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(backend, counter, key, expected):
    counters = torch.tensor([counter], dtype=torch.int64, device=backend.device)
    words = dispatch.run_philox(backend.name, counters, *key)
    assert [int(v) for v in words[0].cpu()] == list(expected)


def test_philox_random_counters_match_reference(backend):
    gen = torch.Generator().manual_seed(1)
    counters = torch.randint(0, 2**32, (4099, 4), generator=gen, dtype=torch.int64)
    want = reference.philox_bits(counters, 0x9E3779B9, 0xDEADBEEF)
    got = dispatch.run_philox(backend.name, counters.to(backend.device), 0x9E3779B9, 0xDEADBEEF)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("backend,n", LENGTHS, indirect=["backend"])
@pytest.mark.parametrize("seed,offset", SEED_OFFSETS)
def test_stream_matches_spec(backend, n, seed, offset):
    if offset == "last":
        offset = 2**64 - lk.noise_offset_advance(n)
    with lk.use_backend(backend.name):
        got = lk.philox_normal(n, seed=seed, offset=offset, device=backend.device)
    assert got.shape == (n,) and got.device.type == backend.device
    want = normal_stream(n, seed, offset)
    # float32 kernels: u is rounded to float32 (relative 2^-24) and the angle 2*pi*v
    # carries ~4e-7 absolute error, times a radius of at most 6.7: < 3e-6 by analysis.
    assert np.max(np.abs(got.double().cpu().numpy() - want)) <= 1e-5


def test_counter_layout_one_philox_per_four_elements():
    # Element i uses counter offset + i // 4, so the stream at offset + 1 is the
    # stream at offset shifted by four elements.
    a = lk.philox_normal(1000, seed=3, offset=10)
    b = lk.philox_normal(996, seed=3, offset=11)
    assert torch.equal(a[4:], b)


def test_stream_on_device_state_equals_host_arguments(backend):
    state = torch.tensor([99, 2**33], dtype=torch.int64, device=backend.device)
    with lk.use_backend(backend.name):
        from_state = lk.philox_normal(1001, seed=0, offset=5, device=backend.device, rng_state=state)
        from_args = lk.philox_normal(1001, seed=99, offset=2**33 + 5, device=backend.device)
    assert torch.equal(from_state, from_args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_stream_dtypes_are_the_float32_stream_cast(dtype):
    ref = lk.philox_normal(257, seed=1, offset=2)
    assert torch.equal(lk.philox_normal(257, seed=1, offset=2, dtype=dtype), ref.to(dtype))


@pytest.mark.slow
def test_stream_statistics():
    n = 2**22
    z = lk.philox_normal(n, seed=2024, offset=0).double()
    # Standard errors for n iid N(0,1) draws: mean 1/sqrt(n), variance sqrt(2/n),
    # excess kurtosis sqrt(24/n), a correlation 1/sqrt(n). Bounds are 6 standard
    # errors: a correct stream fails one with probability < 1e-8.
    se = 1 / np.sqrt(n)
    assert abs(z.mean().item()) < 6 * se
    assert abs(z.var().item() - 1) < 6 * np.sqrt(2 / n)
    kurtosis = ((z - z.mean()) ** 4).mean().item() / z.var().item() ** 2 - 3
    assert abs(kurtosis) < 6 * np.sqrt(24 / n)
    for lag in (1, 2, 3, 4, 5):  # within a Philox block (1-3) and across blocks (4, 5)
        corr = torch.corrcoef(torch.stack([z[:-lag], z[lag:]]))[0, 1].item()
        assert abs(corr) < 6 * se, f"lag {lag}: correlation {corr}"
    # Squares too: Box-Muller pairs share a radius, which a plain correlation would miss.
    sq = z**2
    for lag in (1, 2):
        corr = torch.corrcoef(torch.stack([sq[:-lag], sq[lag:]]))[0, 1].item()
        assert abs(corr) < 6 * se, f"lag {lag}: correlation of squares {corr}"
    # A chain's next step starts ceil(n/4) counters later: no correlation with this one.
    nxt = lk.philox_normal(n, seed=2024, offset=lk.noise_offset_advance(n)).double()
    assert abs(torch.corrcoef(torch.stack([z, nxt]))[0, 1].item()) < 6 * se
    # Neighbouring seeds at the same offset are independent streams too.
    other = lk.philox_normal(n, seed=2025, offset=0).double()
    assert abs(torch.corrcoef(torch.stack([z, other]))[0, 1].item()) < 6 * se


def test_stream_tail_probability():
    # P(|z| > 3) = 0.0026998 for N(0,1); with n = 2^20 draws the count is binomial with
    # sd sqrt(n p (1 - p)) ~ 53; 6 sd around the mean. Checks the Box-Muller tails,
    # which mean and variance barely see.
    n = 2**20
    z = lk.philox_normal(n, seed=5, offset=77)
    count = (z.abs() > 3).sum().item()
    p = 0.0026997960632601866
    assert abs(count - n * p) < 6 * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True])
def test_seed_out_of_range(bad):
    with pytest.raises((ValueError, TypeError), match="seed"):
        lk.philox_normal(4, seed=bad)


def test_offset_overflow_is_refused():
    with pytest.raises(ValueError, match="offset"):
        lk.philox_normal(4 * 11, seed=0, offset=2**64 - 10)


def test_negative_length_is_refused():
    with pytest.raises(ValueError, match="n="):
        lk.philox_normal(-1, seed=0)
