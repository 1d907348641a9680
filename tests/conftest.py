"""Shared test setup: CPU-friendly defaults and clean skipping of GPU tests."""
import pytest
import torch

from backends import CPU_BACKENDS, Backend, backend_params

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fresh_backend_choice():
    """Each test starts from automatic backend selection, whatever the previous one forced."""
    import langevin_kernels as lk
    previous = lk.get_backend()
    lk.set_backend(None)
    yield
    lk.set_backend(previous)


@pytest.fixture(params=[b.name for b in CPU_BACKENDS])
def cpu_backend(request):
    """Each backend that can run CPU tensors here, by name (triton only under TRITON_INTERPRET=1;
    tests/test_triton_interpreter.py reruns the triton cases that way). For the CPU-only tests
    (chains, properties); a contract that holds on every device takes `backend` instead."""
    from langevin_kernels.dispatch import unavailable_reason
    reason = unavailable_reason(request.param, "cpu")
    if reason:
        pytest.skip(f"backend {request.param}: {reason}")
    return request.param


@pytest.fixture(params=backend_params())
def backend(request) -> Backend:
    """Every (backend, device) pair of tests/backends.py. A CPU backend that cannot run here is
    skipped with the reason (triton needs TRITON_INTERPRET=1); on a GPU machine both CUDA
    backends must run: a missing one means a broken CUDA build or Triton, so it fails."""
    from langevin_kernels.dispatch import unavailable_reason
    b = request.param
    reason = unavailable_reason(b.name, b.device)
    if reason and b.is_cuda:
        if not HAS_CUDA:  # the gpu mark skips these before setup; this covers direct calls
            pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
        pytest.fail(f"backend {b.name!r} must run on a GPU machine, but: {reason}")
    if reason:
        pytest.skip(f"backend {b.name}: {reason}")
    return b


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the CPU is shared, and float reductions then give
    run-to-run identical results (the training tests compare losses exactly)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
