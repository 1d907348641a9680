"""pytest-benchmark view of the chain suite: `pytest benchmarks/ --benchmark-only`.

The small double-well chain (host-bound), the 4096 x 32 MLP chain (launch-bound on a GPU) and the
latent chain, quick lengths, on the default device: every variant of the chain suite.
"""
import pytest
import torch

from benchmarks import run as bench_run
from benchmarks.suites import chain

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
bench_run._configure(None)
BACKENDS = ["cpp"] if DEVICE.type == "cpu" else ["triton", "cuda"]
NAMES = ["eager", "compile", "torchebm", "jax"] + [
    f"lk[{b}]{label}" for b in BACKENDS for label in ("", " lean", " compile", " graph", " compile+graph")]


@pytest.mark.parametrize("case", ["dw-small", "mlp", "latent"])
@pytest.mark.parametrize("name", NAMES)
def test_chain(benchmark, case, name):
    workload = chain.CASES[case](DEVICE, True)
    variants = chain.build_variants(workload, DEVICE, with_compile="compile" in name)
    variant = next((v for v in variants if v.name == name), None)
    if variant is None or variant.unavailable:
        pytest.skip(f"{name} not available here" if variant is None else variant.unavailable)
    counter = iter(range(10**9))
    n_inputs = len(workload.x0s)
    with variant.context():
        variant.run(0)
        def call():
            variant.run(next(counter) % n_inputs)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
        benchmark.pedantic(call, rounds=10, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(case=workload.name, n_steps=workload.n_steps, device=DEVICE.type)
