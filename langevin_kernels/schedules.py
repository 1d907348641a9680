"""Per-step schedules for a chain's step size and noise scale (docs/chains.md).

A chain accepts, for ``step_size`` and ``noise_scale``, a number (constant), a
sequence with one value per step, or one of the schedule objects below. Every
form is resolved once, at chain construction, into a tuple of ``n_steps`` Python
floats: the op receives plain floats, so a captured CUDA graph bakes them in and
no step reads a schedule on the device.

    lk.Linear(0.1, 0.01)            # 0.1 at step 0 down to 0.01 at the last step
    lk.ExponentialDecay(0.1, 0.97)  # 0.1 * 0.97**k
    lk.CosineDecay(0.1, 0.001)      # half a cosine from 0.1 to 0.001
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


class Schedule:
    """Base class: ``schedule.values(n_steps)`` gives the value of each step 0..n_steps-1."""

    def value(self, step: int, n_steps: int) -> float:
        raise NotImplementedError

    def values(self, n_steps: int) -> tuple[float, ...]:
        return tuple(float(self.value(k, n_steps)) for k in range(n_steps))


def _fraction(step: int, n_steps: int) -> float:
    """Where step k sits between the first (0) and the last (1) step."""
    return step / (n_steps - 1) if n_steps > 1 else 0.0


class Constant(Schedule):
    """The same value at every step."""

    def __init__(self, value: float):
        self.start = float(value)

    def value(self, step, n_steps):
        return self.start

    def __repr__(self):
        return f"Constant({self.start})"


class Linear(Schedule):
    """Linear from ``start`` at step 0 to ``end`` at the last step."""

    def __init__(self, start: float, end: float):
        self.start, self.end = float(start), float(end)

    def value(self, step, n_steps):
        return self.start + (self.end - self.start) * _fraction(step, n_steps)

    def __repr__(self):
        return f"Linear({self.start}, {self.end})"


class ExponentialDecay(Schedule):
    """``start * decay**k`` at step k (decay in (0, 1] shrinks it)."""

    def __init__(self, start: float, decay: float):
        if not 0 < float(decay):
            raise ValueError(f"ExponentialDecay decay={decay} must be > 0")
        self.start, self.decay = float(start), float(decay)

    def value(self, step, n_steps):
        return self.start * self.decay ** step

    def __repr__(self):
        return f"ExponentialDecay({self.start}, {self.decay})"


class CosineDecay(Schedule):
    """Half a cosine from ``start`` at step 0 to ``end`` at the last step."""

    def __init__(self, start: float, end: float = 0.0):
        self.start, self.end = float(start), float(end)

    def value(self, step, n_steps):
        weight = 0.5 * (1.0 + math.cos(math.pi * _fraction(step, n_steps)))
        return self.end + (self.start - self.end) * weight

    def __repr__(self):
        return f"CosineDecay({self.start}, {self.end})"


def resolve_schedule(name: str, spec, n_steps: int) -> tuple[float, ...]:
    """``spec`` (number, per-step sequence or Schedule) as n_steps finite floats >= 0."""
    if isinstance(spec, Schedule):
        values = spec.values(n_steps)
    elif isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        values = (float(spec),) * n_steps
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != n_steps:
            raise ValueError(f"{name} has {len(spec)} per-step values but n_steps={n_steps}; "
                             "give exactly one value per step")
        values = tuple(float(v) for v in spec)
    else:
        raise TypeError(f"{name} must be a number, a sequence of n_steps numbers or a Schedule "
                        f"(Constant, Linear, ExponentialDecay, CosineDecay), got {type(spec).__name__}")
    for k, v in enumerate(values):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} at step {k} is {v}; every value must be finite and >= 0")
    return values
