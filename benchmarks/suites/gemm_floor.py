"""The GEMM floor of a variant: its matrix products and convolutions alone, replayed.

A chain over a network, or a training iteration, runs the same matrix products however it is
compiled or fused: what compilation removes is everything around them (elementwise kernels,
op-call and Python overhead, launches). Timing the products alone therefore bounds the
speed-up any implementation can reach on this machine without faster GEMMs: the row's
"vs eager" column is that ceiling. The products are recorded once from one call of the
variant (under a dispatch mode, so autograd's backward products count too) and replayed on
fresh tensors of the same sizes, strides and dtypes; the values do not change a GEMM's time.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from .common import Variant

aten = torch.ops.aten
PRODUCT_OPS = frozenset({aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
                         aten.convolution.default, aten.convolution_backward.default})


class _TensorSpec:
    """Size, stride, dtype and device of a recorded argument (no reference to its data)."""

    def __init__(self, t: torch.Tensor):
        self.size, self.stride, self.dtype, self.device = tuple(t.shape), t.stride(), t.dtype, t.device

    def make(self) -> torch.Tensor:
        """A fresh tensor of this layout; broadcast (stride 0) layouts view a smaller storage."""
        span = 1 + sum((n - 1) * st for n, st in zip(self.size, self.stride)) if all(self.size) else 0
        storage = torch.empty(span, dtype=self.dtype, device=self.device)
        storage = storage.normal_() if storage.is_floating_point() else storage.zero_()
        return storage.as_strided(self.size, self.stride)


def _spec(arg):
    return _TensorSpec(arg) if isinstance(arg, torch.Tensor) else arg


def _materialise(arg):
    return arg.make() if isinstance(arg, _TensorSpec) else arg


class _ProductRecorder(TorchDispatchMode):
    """Records (op, args, kwargs) of every product op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCT_OPS:
            self.calls.append((func, tree_map(_spec, args), tree_map(_spec, kwargs)))
        return func(*args, **kwargs)


def record_products(fn: Callable[[], object]) -> list:
    """The product ops one call of fn dispatches, as (op, args, kwargs) with tensor specs."""
    with _ProductRecorder() as recorder:
        fn()
    return recorder.calls


def gemm_floor_variant(fn: Callable[[], object], *, what: str) -> Variant:
    """A variant that replays the products of one call of fn (``what`` names fn in the note)."""
    calls = record_products(fn)
    if not calls:
        return Variant("GEMM floor", unavailable=f"{what} runs no matrix products or convolutions")
    replay = [(op, tree_map(_materialise, args), tree_map(_materialise, kwargs)) for op, args, kwargs in calls]

    def run(i):
        with torch.no_grad():
            for op, args, kwargs in replay:
                op(*args, **kwargs)

    return Variant("GEMM floor", run, note=f"the {len(calls)} matrix products of {what}, replayed alone: "
                   "a bound on any speed-up without faster GEMMs")
