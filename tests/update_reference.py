"""The update's formula in float64 and the tolerance a kernel's result is held to, shared by the
contract tests (test_ops.py) and the GPU tests (test_gpu.py)."""
import torch

# Worst-case error of each dtype relative to the size of the terms of the update
# (|x| + a(|g| + |lam x|) + s|xi|): inputs are exact in their dtype and the math is float32
# (float64 for float64), so the error is the final rounding to the dtype (2^-8 bf16, 2^-11
# fp16) plus a few float32 roundings and FMA contractions; float32 gets the contract's 1e-6.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1.2e-3, torch.bfloat16: 8e-3, torch.float64: 1e-13}
# Every backend's float32 noise is within ~3e-6 of the exact stream (csrc/philox.h);
# the contract allows 1e-5.
NOISE_TOL = 1e-5


def expected_update(x, g, noise, a, s, lam=0.0, clamp=None):
    """The formula in float64 from the (already rounded) inputs, and the size of its terms."""
    x64, g64, n64 = x.double(), g.double(), noise.double()
    y = x64 - a * (g64 + lam * x64) + s * n64
    scale = x64.abs() + a * (g64.abs() + abs(lam) * x64.abs()) + s * n64.abs() + 1e-30
    if clamp is not None:
        y = y.clamp(*clamp)
    return y, scale


def assert_update_close(y, x, g, noise, a, s, lam=0.0, clamp=None, noise_err=0.0):
    """|y - formula| <= TOLERANCE * term size + s * noise_err (clamping is 1-Lipschitz)."""
    want, scale = expected_update(x, g, noise, a, s, lam, clamp)
    rel = (((y.double() - want).abs() - s * noise_err) / scale).max().item()
    assert rel <= TOLERANCE[x.dtype], f"max relative error {rel:.3g} for {x.dtype}"
