"""Argument checks of the chains, and the per-chain row helpers they share."""
from __future__ import annotations

import math
import numbers

import torch


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")
    return int(value)


def _non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}={value!r} must be an int >= 0")
    return int(value)


def _optional_positive(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < math.inf:
        raise ValueError(f"{name}={value!r} must be None or a finite number > 0")
    return float(value)


def _check_state(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; need a batch of chains along dim 0")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; chains need a floating-point state")




def check_clamp(clamp):
    """None, or (lo, hi) as floats (either may be None) with lo <= hi."""
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise TypeError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
    lo, hi = clamp
    if lo is not None and hi is not None and float(lo) > float(hi):
        raise ValueError(f"clamp=({lo}, {hi}) has lo > hi; need lo <= hi")
    return (None if lo is None else float(lo), None if hi is None else float(hi))


def _per_chain(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


def _broadcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))
