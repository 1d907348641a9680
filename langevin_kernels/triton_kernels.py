"""Triton kernels of the fused update and of the noise stream.

The arithmetic mirrors csrc/philox.h line for line (Philox4x32-10, then the
branch-free float32 Box-Muller of that header), so Triton, C++ and CUDA draw the
same noise. Each program owns BLOCK groups of four consecutive elements: one
Philox call per group (docs/noise.md), and the [BLOCK, 4] tiles of x, grad and
y are loaded and stored as 16-byte vectors per thread.

Roofline of the update (fp32, no explicit noise): 12 bytes per element (read x,
read grad, write y) against ~60 integer ops per group for Philox (10 rounds of 2
mul-hi, 2 mul-lo, 4 xor, 2 key adds = 15 ops per element) plus ~40 float ops per
element for Box-Muller and the update. An H100 moves ~3 TB/s, i.e. ~4 ps per
element, in which 132 SMs x 128 lanes x ~1.8 GHz issue ~120 ops: the kernel stays
memory-bound as long as each thread keeps several 16-byte loads in flight, which
BLOCK=1024 groups over 4 warps (8 groups, 32 elements per thread) gives.

This module is imported lazily by dispatch.py: TRITON_INTERPRET=1 must be set
before the @triton.jit definitions run for the interpreter to take over.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Groups of four per program, and warps. The interpreter pays ~9 ms per program
# instance whatever its size, so it gets few, large programs.
BLOCK_GROUPS = 16384 if INTERPRETED else 1024
NUM_WARPS = 4


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
    m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
    w0 = tl.full(c0.shape, 0x9E3779B9, tl.uint32)
    w1 = tl.full(c0.shape, 0xBB67AE85, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + w0
        k1 = k1 + w1
    return c0, c1, c2, c3


@triton.jit
def _open_unit(r):
    return (r.to(tl.float32) + 0.5) * 2.3283064365386963e-10


@triton.jit
def _log_open_unit(r):
    low_half = (r >> 31) == 0
    u = _open_unit(r)
    d = _open_unit(r ^ tl.full(r.shape, 0xFFFFFFFF, tl.uint32))  # 1 - u, from the complement word
    near_one = ((r >> 31) == 1) & (d <= 0.29289322)
    w = tl.where(low_half, u, 1.0 - d)
    bits = w.to(tl.uint32, bitcast=True)
    e = ((bits >> 23) & 0xFF).to(tl.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.41421356
    m = tl.where(big, 0.5 * m, m)
    e = tl.where(big, e + 1, e)
    f = tl.where(near_one, -d, m - 1.0)
    ef = tl.where(near_one, 0.0, e.to(tl.float32))
    s = f / (2.0 + f)
    s2 = s * s
    series = 1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9))))
    return ef * 0.69314718 + 2.0 * s * series


@triton.jit
def _cos_sin_turn(r):
    v = _open_unit(r)
    qi = (4.0 * v + 0.5).to(tl.int32)
    t = 6.28318531 * (v - 0.25 * qi.to(tl.float32))
    t2 = t * t
    sin_t = t * (1.0 + t2 * (-1.0 / 6 + t2 * (1.0 / 120 + t2 * (-1.0 / 5040 + t2 * (1.0 / 362880)))))
    cos_t = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24 + t2 * (-1.0 / 720 + t2 * (1.0 / 40320))))
    quadrant = qi & 3
    swap = (quadrant & 1) == 1
    cc = tl.where(swap, sin_t, cos_t)
    ss = tl.where(swap, cos_t, sin_t)
    c = tl.where((quadrant == 1) | (quadrant == 2), -cc, cc)
    s = tl.where(quadrant >= 2, -ss, ss)
    return c, s


@triton.jit
def _normals_tile(groups, seed, offset, BLOCK: tl.constexpr):
    """[BLOCK, 4] normals for group indices `groups` (int64) at 64-bit seed/offset."""
    c = groups + offset
    c_lo = (c & 0xFFFFFFFF).to(tl.uint32)
    c_hi = ((c >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tl.zeros_like(c_lo)
    r0, r1, r2, r3 = _philox4x32_10(c_lo, c_hi, zero, zero, k0, k1)
    rad0 = tl.sqrt(-2.0 * _log_open_unit(r0))
    rad1 = tl.sqrt(-2.0 * _log_open_unit(r2))
    c0, s0 = _cos_sin_turn(r1)
    c1, s1 = _cos_sin_turn(r3)
    # join twice: [b, j, k] = (n0, n1 | n2, n3)[2j + k], i.e. row b holds n0..n3 in order
    tile = tl.join(tl.join(rad0 * c0, rad1 * c1), tl.join(rad0 * s0, rad1 * s1))
    return tl.reshape(tile, [BLOCK, 4])


@triton.jit
def _seed_offset(seed, offset, rng_ptr, HAS_RNG_STATE: tl.constexpr):
    # Adding an int64 zero is free on a GPU; it matters in the interpreter (TRITON_INTERPRET=1),
    # which keeps a scalar argument in [2^31, 2^32) as numpy uint32 although it types it int64,
    # so .to(tl.int64) leaves the data alone and a shift then reads it as a negative int32:
    # seeds in that range drew from the key (lo32, 0xFFFFFFFF) instead of (lo32, 0).
    zero = tl.full([], 0, tl.int64)
    seed = seed.to(tl.int64) + zero
    offset = offset.to(tl.int64) + zero
    if HAS_RNG_STATE:
        seed = tl.load(rng_ptr)
        offset = offset + tl.load(rng_ptr + 1)
    return seed, offset


# seed and offset change every step: without do_not_specialize Triton would compile a
# variant per divisibility class and turn a value of 1 into a compile-time constant.
@triton.jit(do_not_specialize=["seed", "offset"])
def _langevin_step_kernel(x_ptr, g_ptr, noise_ptr, y_ptr, numel, a, s, lam, lo, hi, seed, offset, rng_ptr,
                          a_ptr, s_ptr, row_len,
                          HAS_NOISE: tl.constexpr, HAS_RNG_STATE: tl.constexpr, A_PER_CHAIN: tl.constexpr,
                          S_PER_CHAIN: tl.constexpr, BLOCK: tl.constexpr):
    groups = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    idx = groups[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = idx < numel
    x = tl.load(x_ptr + idx, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + idx, mask=mask).to(tl.float32)
    if HAS_NOISE:
        xi = tl.load(noise_ptr + idx, mask=mask).to(tl.float32)
    else:
        seed, offset = _seed_offset(seed, offset, rng_ptr, HAS_RNG_STATE)
        xi = _normals_tile(groups, seed, offset, BLOCK)
    if A_PER_CHAIN:
        a = tl.load(a_ptr + idx // row_len, mask=mask)
    if S_PER_CHAIN:
        s = tl.load(s_ptr + idx // row_len, mask=mask)
    y = x - a * (g + lam * x) + s * xi
    y = tl.where(y < lo, lo, tl.where(y > hi, hi, y))  # comparisons keep NaN, like torch.clamp
    tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


# The kinetic op (kinetic_ops.py, docs/samplers.md): the same tiles and noise as the step above;
# c1 and c2 come from the host, computed there in double.
@triton.jit(do_not_specialize=["seed", "offset"])
def _kinetic_step_kernel(x_ptr, v_ptr, g_ptr, noise_ptr, x_out_ptr, v_out_ptr, numel, kick, half_h, c1, c2,
                         seed, offset, rng_ptr, HAS_NOISE: tl.constexpr, HAS_RNG_STATE: tl.constexpr,
                         BLOCK: tl.constexpr):
    groups = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    idx = groups[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = idx < numel
    x = tl.load(x_ptr + idx, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + idx, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + idx, mask=mask).to(tl.float32)
    if HAS_NOISE:
        xi = tl.load(noise_ptr + idx, mask=mask).to(tl.float32)
    else:
        seed, offset = _seed_offset(seed, offset, rng_ptr, HAS_RNG_STATE)
        xi = _normals_tile(groups, seed, offset, BLOCK)
    v1 = v - kick * g
    x1 = x + half_h * v1
    v2 = c1 * v1 + c2 * xi
    x2 = x1 + half_h * v2
    tl.store(x_out_ptr + idx, x2.to(x_out_ptr.dtype.element_ty), mask=mask)
    tl.store(v_out_ptr + idx, v2.to(v_out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed", "offset"])
def _normal_kernel(out_ptr, numel, seed, offset, rng_ptr, HAS_RNG_STATE: tl.constexpr, BLOCK: tl.constexpr):
    groups = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    idx = groups[:, None] * 4 + tl.arange(0, 4)[None, :]
    seed, offset = _seed_offset(seed, offset, rng_ptr, HAS_RNG_STATE)
    tl.store(out_ptr + idx, _normals_tile(groups, seed, offset, BLOCK), mask=idx < numel)


@triton.jit
def _philox_kernel(ctr_ptr, out_ptr, rows, k0, k1, BLOCK: tl.constexpr):
    row = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = row < rows
    c0 = tl.load(ctr_ptr + 4 * row, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(ctr_ptr + 4 * row + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(ctr_ptr + 4 * row + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(ctr_ptr + 4 * row + 3, mask=mask, other=0).to(tl.uint32)
    key0 = tl.full([BLOCK], k0, tl.int64).to(tl.uint32)
    key1 = tl.full([BLOCK], k1, tl.int64).to(tl.uint32)
    r0, r1, r2, r3 = _philox4x32_10(c0, c1, c2, c3, key0, key1)
    tl.store(out_ptr + 4 * row, r0.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * row + 1, r1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * row + 2, r2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * row + 3, r3.to(tl.int64), mask=mask)


def _grid(numel: int, block: int):
    return (triton.cdiv(triton.cdiv(numel, 4), block),)


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype == torch.float64:
        raise TypeError("the triton backend runs float32, float16 and bfloat16; float64 runs on the "
                        "cuda, cpp and eager backends")


def step(x, grad, noise, out, a, s, lam, lo, hi, seed, offset, rng_state, a_rows=None, s_rows=None) -> None:
    """Write the update into `out` (contiguous tensors of one dtype; out may be x). a_rows / s_rows:
    optional float32 per-chain coefficients, entry i // (numel / R) for element i."""
    _check_dtype(x)
    numel = x.numel()
    rows = next((t.numel() for t in (a_rows, s_rows) if t is not None), 0)
    row_len = numel // rows if rows else 1
    _langevin_step_kernel[_grid(numel, BLOCK_GROUPS)](
        x, grad, noise if noise is not None else x, out, numel, a, s, lam, lo, hi, seed, offset,
        rng_state if rng_state is not None else x,
        a_rows if a_rows is not None else x, s_rows if s_rows is not None else x, row_len,
        HAS_NOISE=noise is not None, HAS_RNG_STATE=rng_state is not None, A_PER_CHAIN=a_rows is not None,
        S_PER_CHAIN=s_rows is not None, BLOCK=BLOCK_GROUPS, num_warps=NUM_WARPS)


def kinetic_step(x, v, grad, noise, x_out, v_out, step_size, friction, kick, seed, offset, rng_state) -> None:
    """Write the kinetic update into x_out, v_out (contiguous tensors of one dtype; they may be x, v)."""
    _check_dtype(x)
    c1 = math.exp(-friction * step_size)
    c2 = math.sqrt(-math.expm1(-2.0 * friction * step_size))  # as the reference: no cancellation
    numel = x.numel()
    _kinetic_step_kernel[_grid(numel, BLOCK_GROUPS)](
        x, v, grad, noise if noise is not None else x, x_out, v_out, numel, kick, 0.5 * step_size, c1, c2,
        seed, offset, rng_state if rng_state is not None else x,
        HAS_NOISE=noise is not None, HAS_RNG_STATE=rng_state is not None, BLOCK=BLOCK_GROUPS,
        num_warps=NUM_WARPS)


def normal(out: torch.Tensor, seed: int, offset: int, rng_state=None) -> None:
    """Fill contiguous float32 `out` with the stream at (seed, offset)."""
    numel = out.numel()
    _normal_kernel[_grid(numel, BLOCK_GROUPS)](
        out, numel, seed, offset, rng_state if rng_state is not None else out,
        HAS_RNG_STATE=rng_state is not None, BLOCK=BLOCK_GROUPS, num_warps=NUM_WARPS)


def philox(counters: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """Raw Philox4x32-10 words for int64 counters [N, 4] (known-answer tests)."""
    counters = counters.contiguous()
    out = torch.empty_like(counters)
    rows = counters.shape[0]
    block = 128
    _philox_kernel[(triton.cdiv(rows, block),)](counters, out, rows, key0 & 0xFFFFFFFF, key1 & 0xFFFFFFFF,
                                               BLOCK=block)
    return out
