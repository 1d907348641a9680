"""The backends a contract test runs on, one entry per (backend, device) pair.

    def test_something(backend):            # conftest.py's fixture: every pair below
        x = torch.zeros(3, device=backend.device)
        with lk.use_backend(backend.name): ...

CPU: cpp, eager, and triton (runs only under TRITON_INTERPRET=1, which
tests/test_triton_interpreter.py sets in a subprocess; skipped otherwise). CUDA: cuda and
triton, marked `gpu` (skipped without a GPU; on a GPU machine an unavailable one fails).
A test whose sizes differ per device parametrizes with `per_device(...)` instead."""
from __future__ import annotations

from typing import NamedTuple

import pytest


class Backend(NamedTuple):
    name: str    # what lk.use_backend takes
    device: str  # where the test's tensors live

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"


CPU_BACKENDS = (Backend("cpp", "cpu"), Backend("eager", "cpu"), Backend("triton", "cpu"))
CUDA_BACKENDS = (Backend("cuda", "cuda"), Backend("triton", "cuda"))
ALL = CPU_BACKENDS + CUDA_BACKENDS


def backend_id(backend: Backend) -> str:
    # "gpu-..." for CUDA so that `-k "triton and not gpu"` picks the CPU triton cases.
    return f"{'gpu' if backend.is_cuda else 'cpu'}-{backend.name}"


def _marks(backend: Backend) -> list:
    return [pytest.mark.gpu] if backend.is_cuda else []


def backend_params(keep=None) -> list:
    """ALL (those with keep(backend) true) as pytest params: ids like cpu-cpp / gpu-triton,
    and the gpu mark on the CUDA ones. For parametrize("backend", ..., indirect=True)."""
    return [pytest.param(b, id=backend_id(b), marks=_marks(b)) for b in ALL if keep is None or keep(b)]


def per_device(cpu: list, cuda: list, keep=None) -> list:
    """(backend, value) params for parametrize("backend,<name>", ..., indirect=["backend"]):
    every CPU backend with each value of `cpu`, every CUDA backend with each of `cuda`,
    leaving out the pairs where keep(backend, value) is false (rather than skipping them)."""
    return [pytest.param(b, value, id=f"{backend_id(b)}-{_value_id(value)}", marks=_marks(b))
            for b in ALL for value in (cuda if b.is_cuda else cpu) if keep is None or keep(b, value)]


def _value_id(value) -> str:
    """(7, 9) -> 7x9; torch.float32 -> float32; (4097, torch.bfloat16) -> 4097-bfloat16."""
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    if isinstance(value, tuple):
        return "-".join(_value_id(v) for v in value)
    return str(value).replace("torch.", "")


def runs_dtype(backend: Backend, dtype) -> bool:
    """The triton backend runs 16/32-bit floats only (float64 goes to cpp/cuda/eager)."""
    return not (backend.name == "triton" and str(dtype) == "torch.float64")
