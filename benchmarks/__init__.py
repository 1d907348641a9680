"""Fused-vs-eager benchmarks for langevin-kernels (docs/benchmarks.md; bounds in NOTES.md).

    python -m benchmarks.run --suite step|chain|train|all [--device cpu|cuda] [--quick|--smoke]
    python -m benchmarks.run --render FILE.json ...       # tables of saved results
    pytest benchmarks/ --benchmark-only
    bash benchmarks/gpu_check.sh [--dry-run] [--bundle]    # the one prepared GPU run

Suites live in ``benchmarks.suites``; every suite builds a list of *variants*
(eager PyTorch written the way EBM code writes it, torch.compile of it, the fused op
on each backend, our chains with their options, peers such as torchebm and JAX) that run
the same workload in the same process, and checks that they all compute the same result
on a fixed seed before it reports their timings. Results go to runs/bench/ unless --out
or --update-results (benchmarks/results/) says otherwise.
"""
