"""pytest-benchmark view of the step suite: `pytest benchmarks/ --benchmark-only`.

Same variants and inputs as `python -m benchmarks.run --suite step`, at 2^16 and 2^20 elements
(float32) on the default device; pytest-benchmark does the timing (rounds of rotated inputs).
"""
import pytest
import torch

from benchmarks import run as bench_run
from benchmarks.suites import step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
bench_run._configure(None)


def _variants(exponent):
    variants, _, n_inputs, _ = step.build_case(exponent, torch.float32, DEVICE, quick=True)
    return variants, n_inputs


@pytest.mark.parametrize("exponent", [16, 20])
@pytest.mark.parametrize("name", ["eager", "compile", "fused[cpp]", "fused[cuda]", "fused[triton]", "torchebm"])
def test_step(benchmark, exponent, name):
    variants, n_inputs = _variants(exponent)
    variant = next(v for v in variants if v.name == name)
    if variant.unavailable:
        pytest.skip(variant.unavailable)
    counter = iter(range(10**9))
    with variant.context():
        variant.run(0)                      # compile / warm up outside the timing
        if DEVICE.type == "cuda":
            def call():
                variant.run(next(counter) % n_inputs)
                torch.cuda.synchronize()
        else:
            def call():
                variant.run(next(counter) % n_inputs)
        benchmark.pedantic(call, rounds=20, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(numel=2 ** exponent, dtype="fp32", device=DEVICE.type)
