"""Fused-vs-eager benchmarks for langevin-kernels (DESIGN section 8).

    python -m benchmarks.run --suite step|chain|train|all [--device cpu|cuda] [--quick]
    pytest benchmarks/ --benchmark-only

Suites live in ``benchmarks.suites``; every suite builds a list of *variants*
(eager PyTorch written the way EBM code writes it, torch.compile of it, the fused op
on each backend, fused chains, peers such as torchebm) that run the same workload in
the same process, and checks that they all compute the same result on a fixed seed
before it reports their timings.
"""
