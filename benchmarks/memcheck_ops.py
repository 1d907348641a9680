"""Every memory path of the fused ops on small odd shapes, checked against the eager oracle.

    compute-sanitizer --tool memcheck python -m benchmarks.memcheck_ops --device cuda --backends cuda,triton
    python -m benchmarks.memcheck_ops --device cpu --backends cpp          # the same driver on CPU

Run under compute-sanitizer (benchmarks/gpu_check.sh does, with the caching allocator off so
that every tensor is its own allocation and an out-of-bounds access lands outside it) this walks
the kernels' vector and element-wise paths: sizes around the vector width and a tail, views
shifted by one element (misaligned) and strided views, every dtype, explicit and in-kernel noise,
the prior term, clamps, rng_state, in place and out of place, and philox_normal. Each result is
compared with the eager backend run on CPU copies (float32: 1e-5; float64: 1e-6; 16-bit: 2e-2, one rounding of a
value of order 1), so the run is a correctness check as well as a memory check. Exit status 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import sys

import torch

import langevin_kernels as lk
from langevin_kernels import dispatch

SIZES = (1, 3, 5, 8, 9, 13, 4097, 65539)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# float64 states still draw float32 normals (the noise stream is float32 on every backend), whose
# last-place differences between backends (~5e-7 for |xi| ~ 4) times noise_scale 0.2 stay < 1e-6.
TOL = {torch.float32: 1e-5, torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def _views(numel: int, dtype, device, gen):
    """Contiguous, shifted-by-one (misaligned) and strided views of fresh allocations."""
    def fresh(n):
        return (torch.rand(n, generator=gen, device=device) * 2 - 1).to(dtype)
    yield "contiguous", lambda: fresh(numel)
    yield "shifted", lambda: fresh(numel + 1)[1:]
    yield "strided", lambda: fresh(2 * numel)[::2]


def _calls(x, g, noise, state):
    """(label, kwargs) of the op calls to make on one input."""
    base = dict(step_size=0.1, noise_scale=0.2, seed=3, offset=2**32 - 1)
    yield "plain", dict(base)
    yield "prior+clamp", dict(base, prior_weight=0.5, clamp=(-0.5, 0.5))
    yield "one-sided clamp", dict(base, clamp=(None, 0.25))
    yield "explicit noise", dict(base, noise=noise)
    yield "rng_state", dict(step_size=0.1, noise_scale=0.2, rng_state=state)


def _oracle(x, g, kwargs) -> torch.Tensor:
    """The eager backend's result on CPU copies: under compute-sanitizer only the backend under
    test launches GPU kernels (the noise stream is the same on every device)."""
    on_cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with lk.use_backend("eager"):
        return lk.langevin_step(x.cpu(), g.cpu(), **on_cpu)


def check_backend(backend: str, device: torch.device) -> list[str]:
    """Run every call on `backend` and on the eager oracle; returns the mismatches found."""
    gen = torch.Generator(device=device).manual_seed(0)
    state = torch.tensor([7, 2**32 - 2], dtype=torch.int64, device=device)
    failures = []
    for dtype in DTYPES:
        if dtype == torch.float64 and backend == "triton":
            continue        # Triton's kernels are float32/16-bit; float64 goes to the cuda backend
        for numel in SIZES:
            for view, make in _views(numel, dtype, device, gen):
                x, g, noise = make(), make(), make()
                for label, kwargs in _calls(x, g, noise, state):
                    expected = _oracle(x, g, kwargs)
                    with lk.use_backend(backend):
                        got = lk.langevin_step(x, g, **kwargs)
                        inplace = x.clone()
                        lk.langevin_step_(inplace, g, **kwargs)
                    for form, out in (("out-of-place", got), ("in-place", inplace)):
                        err = (out.cpu().double() - expected.double()).abs().max().item()
                        if not err <= TOL[dtype]:
                            failures.append(f"{backend} {dtype} n={numel} {view} {label} {form}: max err {err:.3g}")
    for numel in SIZES:
        with lk.use_backend("eager"):
            expected = lk.philox_normal(numel, seed=1, offset=2**32 - 1, device="cpu")
        with lk.use_backend(backend):
            got = lk.philox_normal(numel, seed=1, offset=2**32 - 1, device=device)
            lk.philox_normal(numel, seed=0, device=device, rng_state=state)
        err = (got.cpu() - expected).abs().max().item()
        if not err <= TOL[torch.float32]:
            failures.append(f"{backend} philox_normal n={numel}: max err {err:.3g}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memcheck_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--backends", default=None, help="comma-separated (default: cuda,triton on CUDA, cpp on CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    backends = (args.backends or ("cuda,triton" if device.type == "cuda" else "cpp")).split(",")
    failures = []
    for backend in backends:
        if backend not in lk.backends():
            parser.error(f"--backends: {backend!r} is not one of {', '.join(lk.backends())}")
        reason = dispatch.unavailable_reason(backend, device)
        if reason:
            print(f"{backend}: not available on {device.type} ({reason}); skipped")
            continue
        found = check_backend(backend, device)
        print(f"{backend}: {'ok' if not found else f'{len(found)} mismatches'} "
              f"({len(DTYPES)} dtypes x {len(SIZES)} sizes x 3 layouts x 5 call forms x 2, philox_normal)")
        failures += found
    for line in failures[:50]:
        print("MISMATCH", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
