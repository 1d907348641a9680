"""Eager reference of the noise stream and the update: the oracle and the fallback.

Written from docs/op.md and docs/noise.md as literally as possible, in plain torch ops,
so that it runs on any device, stays capturable in a CUDA graph (no host reads
of device values) and can be checked by eye. Philox runs on int64 tensors holding
32-bit words; the Box-Muller transform runs in float64, which is exact enough that
float32 kernels are compared against it, not the other way round.
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b for a constant a < 2^32 and words b.

    b is split into 16-bit halves so no intermediate exceeds 2^49 and int64
    arithmetic is exact (no reliance on wrap-around).
    """
    b_lo, b_hi = b & 0xFFFF, b >> 16
    t_lo = a * b_lo                      # < 2^48
    t_hi = a * b_hi                      # < 2^48
    low_sum = t_lo + ((t_hi & 0xFFFF) << 16)  # < 2^49
    lo = low_sum & MASK32
    hi = (t_hi >> 16) + (low_sum >> 32)
    return hi & MASK32, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors of 32-bit words (keys: tensors or ints)."""
    for _ in range(10):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _split64(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo32, hi32) of int64 tensors read as uint64 bit patterns."""
    return value & MASK32, (value >> 32) & MASK32


def _as_int64(value: int) -> int:
    """A uint64 bit pattern as the int64 with the same bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def philox_normal(n: int, *, seed: int, offset: int, device="cpu", dtype=torch.float32,
                  rng_state: torch.Tensor | None = None) -> torch.Tensor:
    """The first n values of the stream at (seed, offset), docs/noise.md.

    With rng_state (int64[2] = seed, base offset) the seed is rng_state[0] and the
    offset rng_state[1] + offset, read on the device.
    """
    device = torch.device(device)
    groups = (n + 3) // 4
    idx = torch.arange(groups, device=device, dtype=torch.int64)
    if rng_state is None:
        seed_t = torch.tensor(_as_int64(seed), device=device, dtype=torch.int64)
        counter = idx + _as_int64(offset)
    else:
        seed_t = rng_state[0]
        counter = idx + rng_state[1] + _as_int64(offset)
    k0, k1 = _split64(seed_t)
    c0, c1 = _split64(counter)
    zeros = torch.zeros_like(c0)
    r = philox4x32_10(c0, c1, zeros, zeros, k0, k1)
    u = [(w.to(torch.float64) + 0.5) * 2.0 ** -32 for w in r]
    rad0 = torch.sqrt(-2.0 * torch.log(u[0]))
    rad1 = torch.sqrt(-2.0 * torch.log(u[2]))
    ang0, ang1 = 2.0 * math.pi * u[1], 2.0 * math.pi * u[3]
    normals = torch.stack(
        [rad0 * torch.cos(ang0), rad0 * torch.sin(ang0), rad1 * torch.cos(ang1), rad1 * torch.sin(ang1)],
        dim=1,
    ).reshape(-1)[:n]
    return normals.to(dtype)


def philox_bits(counters: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """Raw Philox4x32-10 output for int64 counters [N, 4] of 32-bit words (tests)."""
    c = [counters[:, k] & MASK32 for k in range(4)]
    return torch.stack(philox4x32_10(*c, key0 & MASK32, key1 & MASK32), dim=1)


def langevin_step(x: torch.Tensor, grad: torch.Tensor, *, step_size, noise_scale,
                  seed: int = 0, offset: int = 0, prior_weight: float = 0.0,
                  clamp_lo: float | None = None, clamp_hi: float | None = None,
                  noise: torch.Tensor | None = None,
                  rng_state: torch.Tensor | None = None) -> torch.Tensor:
    """y = clamp(x - a (grad + lam x) + s xi, lo, hi), computed in float32 (float64 for float64).

    a and s are floats or tensors that broadcast against x in the math type (per-chain
    coefficients: shape [B, 1, ..., 1])."""
    math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if noise is None:
        noise = philox_normal(x.numel(), seed=seed, offset=offset, device=x.device,
                              dtype=torch.float32, rng_state=rng_state).reshape(x.shape)
    xm, gm, nm = x.to(math_dtype), grad.to(math_dtype), noise.to(math_dtype)
    y = xm - step_size * (gm + prior_weight * xm) + noise_scale * nm
    if clamp_lo is not None or clamp_hi is not None:
        y = torch.clamp(y, min=clamp_lo, max=clamp_hi)
    return y.to(x.dtype)


def kinetic_step(x: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, *, step_size: float, friction: float,
                 kick: float, seed: int = 0, offset: int = 0, noise: torch.Tensor | None = None,
                 rng_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused kinetic-Langevin call, B(kick) A(h/2) O A(h/2), docs/samplers.md; returns (x, v).

    v1 = v - kick * grad;  x1 = x + h/2 v1;  v2 = c1 v1 + c2 xi;  x2 = x1 + h/2 v2,
    with c1 = exp(-friction h), c2 = sqrt(1 - c1^2) and xi the stream at (seed, offset) (docs/noise.md),
    computed in float32 (float64 for float64 states)."""
    math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if noise is None:
        noise = philox_normal(x.numel(), seed=seed, offset=offset, device=x.device,
                              dtype=torch.float32, rng_state=rng_state).reshape(x.shape)
    c1 = math.exp(-friction * step_size)
    c2 = math.sqrt(-math.expm1(-2.0 * friction * step_size))   # sqrt(1 - c1^2) without cancellation
    xm, vm, gm, nm = (t.to(math_dtype) for t in (x, v, grad, noise))
    v1 = vm - kick * gm
    x1 = xm + (0.5 * step_size) * v1
    v2 = c1 * v1 + c2 * nm
    x2 = x1 + (0.5 * step_size) * v2
    return x2.to(x.dtype), v2.to(v.dtype)
