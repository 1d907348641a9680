"""Per-chain step_size / noise_scale tensors in lk.langevin_step(_) (docs/op.md): every backend
against the eager formula, equality with the scalar op, NaN propagation, argument checks,
opcheck, autograd and compile."""
from __future__ import annotations

import pytest
import torch

import langevin_kernels as lk
from backends import per_device, runs_dtype

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Odd row lengths (7, 1001) put chain boundaries inside a Philox group and inside SIMD/vector chunks.
SHAPES = ((5, 7), (3, 1001), (4, 2, 3))


def _math(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _inputs(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, g, noise = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device) for _ in range(3))
    a = (0.05 + torch.rand(shape[0], generator=gen, dtype=torch.float64)).to(_math(dtype)).to(device)
    s = (0.1 + torch.rand(shape[0], generator=gen, dtype=torch.float64)).to(_math(dtype)).to(device)
    return x, g, noise, a, s


def _expected(x, g, noise, a, s, lam=0.0):
    """The formula of docs/op.md in the math type, each chain with its own a and s."""
    m = _math(x.dtype)
    view = (-1,) + (1,) * (x.dim() - 1)
    xm, gm, nm = x.to(m), g.to(m), noise.to(m)
    return (xm - a.view(view) * (gm + lam * xm) + s.view(view) * nm).to(x.dtype)


@pytest.mark.parametrize("backend,dtype", per_device(DTYPES, DTYPES, keep=runs_dtype), indirect=["backend"])
@pytest.mark.parametrize("shape", SHAPES)
def test_per_chain_equals_the_formula_with_explicit_noise(backend, dtype, shape):
    x, g, noise, a, s = _inputs(shape, dtype, backend.device)
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, step_size=a, noise_scale=s, noise=noise, prior_weight=0.5)
    want = _expected(x, g, noise, a, s, lam=0.5)
    if dtype in (torch.float32, torch.float64):
        # same operations in the same type; 1e-6 allows a fused multiply-add on a GPU
        torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    else:   # one rounding to 16 bits: at most one unit in the last place apart
        torch.testing.assert_close(y.float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend,dtype", per_device(DTYPES, DTYPES, keep=runs_dtype), indirect=["backend"])
def test_equal_entries_are_bit_identical_to_the_scalar_op(backend, dtype):
    x, g, _, a, s = _inputs((6, 37), dtype, backend.device)
    a_value, s_value = float(a[0]), float(s[0])   # representable in the math type: no rounding apart
    kwargs = dict(seed=7, offset=2**33, clamp=(-2.0, 2.0), prior_weight=1.0)
    with lk.use_backend(backend.name):
        scalar = lk.langevin_step(x, g, step_size=a_value, noise_scale=s_value, **kwargs)
        per_chain = lk.langevin_step(x, g, step_size=torch.full_like(a, a_value),
                                     noise_scale=torch.full_like(s, s_value), **kwargs)
        inplace = x.clone()
        lk.langevin_step_(inplace, g, step_size=torch.full_like(a, a_value), noise_scale=s_value, **kwargs)
    assert torch.equal(scalar, per_chain)
    assert torch.equal(scalar, inplace)


@pytest.mark.parametrize("backend,dtype", per_device(DTYPES, DTYPES, keep=runs_dtype), indirect=["backend"])
def test_generated_noise_matches_the_stream(backend, dtype):
    x, g, _, a, s = _inputs((4, 9), dtype, backend.device)
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, step_size=a, noise_scale=s, seed=5, offset=3)
    noise = lk.philox_normal(x.numel(), seed=5, offset=3, device=backend.device).reshape(x.shape)
    want = _expected(x, g, noise.to(dtype) if dtype in (torch.float16, torch.bfloat16) else noise, a, s)
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2   # backends' log/cos round differently
    torch.testing.assert_close(y.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,dtype", per_device(DTYPES, DTYPES, keep=runs_dtype), indirect=["backend"])
def test_nan_in_a_chain_poisons_only_that_chain(backend, dtype):
    x, g, noise, a, s = _inputs((4, 9), dtype, backend.device)
    x[1, 3] = float("nan")
    g[2, 0] = float("inf")
    with lk.use_backend(backend.name):
        y = lk.langevin_step(x, g, step_size=a, noise_scale=s, noise=noise)
    assert torch.isnan(y[1, 3])
    assert not torch.isfinite(y[2, 0])
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[3]).all()


def test_cpu_values_are_checked():
    x, g, _, a, s = _inputs((4, 3), torch.float32, "cpu")
    for bad, text in ((-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf")):
        a_bad = a.clone()
        a_bad[2] = bad
        with pytest.raises(ValueError, match=rf"step_size_per_chain\[2\]={text} must be finite and >= 0"):
            lk.langevin_step(x, g, step_size=a_bad, noise_scale=0.1, seed=0, offset=0)
        with pytest.raises(ValueError, match=r"noise_scale_per_chain\[2\]"):
            lk.langevin_step_(x.clone(), g, step_size=0.1, noise_scale=a_bad, seed=0, offset=0)


@pytest.mark.parametrize("per_chain,match", [
    (torch.ones(3), r"step_size_per_chain has shape \(3,\) but must be \(4,\): one value per chain"),
    (torch.ones(4, 1), r"has shape \(4, 1\) but must be \(4,\)"),
    (torch.ones(4, dtype=torch.int64), "step_size_per_chain has dtype torch.int64; allowed dtypes"),
])
def test_bad_shapes_and_dtypes_raise_naming_the_argument(per_chain, match):
    x, g = torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        lk.langevin_step(x, g, step_size=per_chain, noise_scale=0.1, seed=0, offset=0)


def test_scalar_state_has_no_chains():
    with pytest.raises(ValueError, match="needs x with a chain dimension"):
        lk.langevin_step(torch.zeros(()), torch.zeros(()), step_size=torch.ones(1), noise_scale=0.1, seed=0, offset=0)


@pytest.mark.gpu
def test_device_mismatch_raises():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x, g = torch.zeros(4, 3, device="cuda"), torch.zeros(4, 3, device="cuda")
    with pytest.raises(ValueError, match="step_size_per_chain is on cpu but x is on cuda"):
        lk.langevin_step(x, g, step_size=torch.ones(4), noise_scale=0.1, seed=0, offset=0)


def test_raw_op_checks_what_it_indexes():
    x = torch.zeros(12)
    with pytest.raises(RuntimeError, match="must divide"):
        torch.ops.langevin_kernels._ext_step(x, x, None, torch.empty(12), 0.1, 0.1, 0.0, -1e9, 1e9, 0, 0, None,
                                             torch.ones(5), None)
    with pytest.raises(RuntimeError, match="step_size_per_chain must be a contiguous"):
        torch.ops.langevin_kernels._ext_step(x, x, None, torch.empty(12), 0.1, 0.1, 0.0, -1e9, 1e9, 0, 0, None,
                                             torch.ones(4, dtype=torch.float64), None)


@pytest.mark.parametrize("inplace", [False, True])
def test_opcheck(inplace):
    x, g, noise, a, s = _inputs((6, 5), torch.float32, "cpu")
    if inplace:
        torch.library.opcheck(torch.ops.langevin_kernels.langevin_step_.default,
                              (x, g, 1.0, 1.0, 3, 11, 0.5, -2.0, 2.0, None, None, torch.empty(6), a, s))
    else:
        torch.library.opcheck(torch.ops.langevin_kernels.langevin_step.default,
                              (x.requires_grad_(), g.requires_grad_(), 1.0, 1.0, 3, 11, 0.5, None, None,
                               noise.requires_grad_(), None, a, s))


def test_autograd_uses_each_chains_coefficients():
    x, g, noise, a, s = (t.double() for t in _inputs((3, 4), torch.float64, "cpu"))

    def step(x, g, noise):
        return lk.langevin_step(x, g, step_size=a, noise_scale=s, noise=noise, prior_weight=0.5)

    torch.autograd.gradcheck(step, (x.requires_grad_(), g.requires_grad_(), noise.requires_grad_()))


def test_compiled_call_matches_eager():
    x, g, _, a, s = _inputs((6, 4), torch.float32, "cpu")

    def step(x, g, a, s):
        return lk.langevin_step(x, g, step_size=a, noise_scale=s, seed=1, offset=2)

    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x, g, a, s)
    assert torch.equal(got, step(x, g, a, s))


_NO_EXTENSION = """
import sys
sys.modules["langevin_kernels._C"] = None          # as if the extension was never built
import torch
import langevin_kernels as lk
assert lk.dispatch.extension_error() is not None
x, g = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
a = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
y = lk.langevin_step(x, g, step_size=a, noise_scale=a.sqrt(), seed=7, offset=3)
xi = lk.philox_normal(12, seed=7, offset=3, dtype=torch.float64).reshape(3, 4)
assert torch.allclose(y, x - a[:, None] * g + a.sqrt()[:, None] * xi, rtol=1e-12, atol=1e-12)
z = x.clone()
lk.langevin_step_(z, g, step_size=a, noise_scale=a.sqrt(), seed=7, offset=3)
assert torch.equal(z, y)
try:
    lk.langevin_step(x, g, step_size=-a, noise_scale=0.1, seed=0, offset=0)
except ValueError as exc:
    assert "step_size_per_chain[0]=-0.1 must be finite and >= 0" in str(exc), exc
else:
    raise AssertionError("negative per-chain step accepted")
torch.library.opcheck(torch.ops.langevin_kernels.langevin_step.default,
                      (x.requires_grad_(), g, 1.0, 1.0, 7, 3, 0.0, None, None, None, None, a, a))
print("ok")
"""


def test_python_defined_ops_take_per_chain_coefficients():
    """Without the C++ extension, ops.py defines the ops with the same per-chain arguments."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", _NO_EXTENSION], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]
