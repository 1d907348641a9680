"""Where the ops come from: C++ schemas and kernels when the extension is built, the
same ops from Python when it is not, and the route from the C++ kernels to the Python
backends (csrc/register.cpp, csrc/step_op.cpp, csrc/kinetic_op.cpp, langevin_kernels/ops.py,
langevin_kernels/kinetic_ops.py)."""
import subprocess
import sys
import textwrap

import pytest
import torch

import langevin_kernels as lk
from langevin_kernels import dispatch

needs_ext = pytest.mark.skipif(dispatch.extension_error() is not None, reason="extension not built")
KW = dict(step_size=0.1, noise_scale=0.5, seed=7, offset=3)
KINETIC_KW = dict(step_size=0.1, friction=1.5, kick=0.05, seed=7, offset=3)
PUBLIC_OPS = ("langevin_step", "langevin_step_", "kinetic_step", "kinetic_step_")


@needs_ext
def test_public_ops_are_defined_and_implemented_in_cpp():
    for name in PUBLIC_OPS:
        op = getattr(torch.ops.langevin_kernels, name).default
        assert not op._defined_in_python, f"{name} should be defined by the C++ library"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"langevin_kernels::{name}", "CPU")


@needs_ext
def test_default_cpu_calls_never_reach_python_kernels(monkeypatch):
    # The native route: the C++ kernel runs _ext_step itself. The eager route goes back to
    # Python through _routed_step, where dispatch.run_step picks the backend.
    calls = []
    real = dispatch.run_step
    monkeypatch.setattr(dispatch, "run_step", lambda backend, *a: calls.append(backend) or real(backend, *a))
    x, g = torch.randn(6, 5), torch.randn(6, 5)
    native = lk.langevin_step(x, g, **KW)
    assert calls == []
    with lk.use_backend("eager"):
        routed = lk.langevin_step(x, g, **KW)
        y = x.clone()
        lk.langevin_step_(y, g, **KW)
    assert calls == ["eager", "eager"]
    torch.testing.assert_close(routed, native, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y, routed, rtol=0, atol=0)
    lk.langevin_step(x, g, **KW)   # leaving the context restores the native route
    assert len(calls) == 2


@needs_ext
def test_forced_backend_that_cannot_run_is_an_error_through_the_cpp_kernel():
    with lk.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was selected"):
        torch.ops.langevin_kernels.langevin_step(torch.zeros(4), torch.zeros(4), 0.1, 0.1, 0, 0, 0.0,
                                                 None, None, None, None)


@needs_ext
@pytest.mark.parametrize("bad", ["grad", "noise", "out"])
def test_routed_step_checks_what_it_indexes(bad):
    x = torch.zeros(16)
    args = dict(grad=torch.zeros(16), noise=torch.zeros(16), out=torch.zeros(16))
    args[bad] = torch.zeros(3)
    with lk.use_backend("eager"), pytest.raises(RuntimeError, match=f"_routed_step: {bad} must be a contiguous"):
        torch.ops.langevin_kernels._routed_step(x, args["grad"], args["noise"], args["out"], 0.1, 0.1, 0.0,
                                                -1.0, 1.0, 0, 0, None)


@needs_ext
def test_set_route_refuses_unknown_devices_and_dtypes():
    with pytest.raises(ValueError, match="device_type 'xpu' must be 'cpu' or 'cuda'"):
        torch.ops.langevin_kernels._set_route("xpu", torch.float32, True)
    with pytest.raises(ValueError, match="is not a supported state dtype"):
        torch.ops.langevin_kernels._set_route("cpu", torch.int32, True)


@needs_ext
def test_cpp_kernel_messages_match_the_fake_kernel():
    # One wording whichever kernel runs: the CPU kernel (C++) and the meta kernel (Python).
    def message(device, **over):
        args = dict(x=torch.zeros(4, 3, device=device), grad=torch.zeros(4, 3, device=device), **KW)
        args.update(over)
        x, g = args.pop("x"), args.pop("grad")
        with pytest.raises((ValueError, TypeError)) as info:
            torch.ops.langevin_kernels.langevin_step(x, g, args["step_size"], args["noise_scale"], args["seed"],
                                                     args["offset"], 0.0, args.get("lo"), args.get("hi"),
                                                     None, args.get("rng_state"))
        return info.type, str(info.value)

    cases = [dict(step_size=-0.5), dict(step_size=1e39), dict(noise_scale=float("inf")), dict(lo=1.0, hi=-1.0),
             dict(offset=-1), dict(rng_state=torch.zeros(3, dtype=torch.int64))]
    for over in cases:
        if "rng_state" in over:
            meta = dict(over, rng_state=over["rng_state"].to("meta"))
        else:
            meta = over
        assert message("cpu", **over) == message("meta", **meta), over
    for device in ("cpu", "meta"):
        assert message(device, grad=torch.zeros(4, 3, dtype=torch.float64, device=device)) == (
            TypeError, "grad has dtype torch.float64 but x has dtype torch.float32; they must match")
        assert message(device, grad=torch.zeros(3, device=device)) == (
            ValueError, "grad has shape (3,) but x has shape (4, 3); they must match")


@needs_ext
def test_default_cpu_kinetic_calls_never_reach_python_kernels(monkeypatch):
    calls = []
    real = dispatch.run_kinetic
    monkeypatch.setattr(dispatch, "run_kinetic", lambda backend, *a: calls.append(backend) or real(backend, *a))
    x, v, g = (torch.randn(6, 5) for _ in range(3))
    native = lk.kinetic_step(x, v, g, **KINETIC_KW)
    assert calls == []
    with lk.use_backend("eager"):
        routed = lk.kinetic_step(x, v, g, **KINETIC_KW)
        y, w = x.clone(), v.clone()
        lk.kinetic_step_(y, w, g, **KINETIC_KW)
    assert calls == ["eager", "eager"]
    for a, b in zip(routed, native):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.equal(y, routed[0]) and torch.equal(w, routed[1])
    lk.kinetic_step(x, v, g, **KINETIC_KW)   # leaving the context restores the native route
    assert len(calls) == 2


@needs_ext
def test_forced_backend_that_cannot_run_is_an_error_through_the_kinetic_cpp_kernel():
    x = torch.zeros(4)
    with lk.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was selected"):
        torch.ops.langevin_kernels.kinetic_step_(x, x.clone(), x, 0.1, 1.0, 0.1, 0, 0, None, None)


@needs_ext
@pytest.mark.parametrize("bad", ["v", "grad", "noise", "x_out", "v_out"])
def test_routed_kinetic_step_checks_what_it_indexes(bad):
    x = torch.zeros(16)
    args = {name: torch.zeros(16) for name in ("v", "grad", "noise", "x_out", "v_out")}
    args[bad] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=f"_routed_kinetic_step: {bad} must be a contiguous"):
        torch.ops.langevin_kernels._routed_kinetic_step(x, args["v"], args["grad"], args["noise"], args["x_out"],
                                                        args["v_out"], 0.1, 1.0, 0.1, 0, 0, None)


@needs_ext
@pytest.mark.parametrize("op", ["kinetic_step", "kinetic_step_"])
def test_kinetic_cpp_kernel_messages_match_the_fake_kernel(op):
    def message(device, **over):
        args = dict(x=torch.zeros(4, 3), v=torch.zeros(4, 3), grad=torch.zeros(4, 3), step_size=0.1, friction=1.5,
                    kick=0.1, seed=0, offset=0, noise=None, rng_state=None) | over
        args = {k: t.to(device) if isinstance(t, torch.Tensor) else t for k, t in args.items()}
        with pytest.raises((ValueError, TypeError)) as info:
            getattr(torch.ops.langevin_kernels, op)(*args.values())
        return info.type, str(info.value)

    cases = [dict(step_size=-0.5), dict(step_size=float("nan")), dict(friction=0.0), dict(friction=1e400),
             dict(kick=-1e-07), dict(v=torch.zeros(3)), dict(v=torch.zeros(4, 3, dtype=torch.float64)),
             dict(grad=torch.zeros(12)), dict(noise=torch.zeros(4, 3, 1)),
             dict(x=torch.zeros(4, 3, dtype=torch.int64), v=torch.zeros(4, 3, dtype=torch.int64)),
             dict(rng_state=torch.zeros(2, dtype=torch.int32)), dict(rng_state=torch.zeros(1, 2, dtype=torch.int64))]
    for over in cases:
        kind, text = message("meta", **over)
        assert message("cpu", **over) == (kind, text.replace("meta", "cpu")), over


NO_EXTENSION = textwrap.dedent("""
    import sys
    sys.modules["langevin_kernels._C"] = None          # as if the extension was never built
    import torch
    import langevin_kernels as lk
    assert lk.dispatch.extension_error() is not None
    assert torch.ops.langevin_kernels.langevin_step.default._defined_in_python
    x, g = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    kw = dict(step_size=0.1, noise_scale=0.5, seed=7, offset=3)
    y = lk.langevin_step(x, g, **kw)
    xi = lk.philox_normal(20, seed=7, offset=3, dtype=torch.float64).reshape(5, 4)
    assert torch.allclose(y, x - 0.1 * g + 0.5 * xi, rtol=1e-12, atol=1e-12)
    z, norms = x.clone(), torch.empty(5, dtype=torch.float64)
    lk.langevin_step_(z, g, grad_norm_out=norms, **kw)
    assert torch.equal(z, y)
    assert torch.allclose(norms, torch.linalg.vector_norm(g, dim=1), rtol=1e-12)
    try:
        lk.langevin_step(x, g[:2], **kw)
    except ValueError as exc:
        assert "grad has shape (2, 4) but x has shape (5, 4)" in str(exc)
    else:
        raise AssertionError("mismatched grad accepted")
    torch.library.opcheck(torch.ops.langevin_kernels.langevin_step.default,
                          (x.requires_grad_(), g, 0.1, 0.5, 7, 3, 0.0, -1.0, 1.0, None, None))
    assert torch.ops.langevin_kernels.kinetic_step.default._defined_in_python
    x, v = x.detach(), torch.randn(5, 4, dtype=torch.float64)
    kkw = dict(step_size=0.1, friction=1.5, kick=0.05, seed=7, offset=3)
    want = lk.reference.kinetic_step(x, v, g, **kkw)
    got = lk.kinetic_step(x, v, g, **kkw)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(got, want))
    y, w = x.t().contiguous().t(), v.clone()
    lk.kinetic_step_(y, w, g, **kkw)
    assert torch.equal(y, got[0]) and torch.equal(w, got[1])
    try:
        lk.kinetic_step(x, v[:2], g, **kkw)
    except ValueError as exc:
        assert "v has shape (2, 4) but x has shape (5, 4)" in str(exc)
    else:
        raise AssertionError("mismatched v accepted")
    torch.library.opcheck(torch.ops.langevin_kernels.kinetic_step.default,
                          (x.requires_grad_(), v, g, 0.1, 1.5, 0.05, 7, 3, None, None))
    torch.library.opcheck(torch.ops.langevin_kernels.kinetic_step_.default,
                          (x.detach().clone(), v.clone(), g, 0.1, 1.5, 0.05, 7, 3, None, None))
    print("ok")
""")


def test_ops_exist_without_the_extension():
    result = subprocess.run([sys.executable, "-c", NO_EXTENSION], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@needs_ext
@pytest.mark.gpu
def test_cuda_tensors_run_the_cpp_registered_kernel_natively(monkeypatch):
    if not dispatch._ext_has_cuda():
        pytest.skip("extension built without CUDA kernels")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("langevin_kernels::langevin_step", "CUDA")
    calls = []
    real = dispatch.run_step
    monkeypatch.setattr(dispatch, "run_step", lambda backend, *a: calls.append(backend) or real(backend, *a))
    x, g = torch.randn(6, 5, device="cuda"), torch.randn(6, 5, device="cuda")
    native = lk.langevin_step(x, g, **KW)          # default on CUDA: the cuda backend, from C++
    assert calls == []
    with lk.use_backend("triton"):
        routed = lk.langevin_step(x, g, **KW)
    assert calls == ["triton"]
    torch.testing.assert_close(routed, native, rtol=1e-6, atol=1e-6)


@needs_ext
@pytest.mark.gpu
def test_cuda_kinetic_calls_run_the_cpp_registered_kernel_natively(monkeypatch):
    if not dispatch._ext_has_cuda():
        pytest.skip("extension built without CUDA kernels")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("langevin_kernels::kinetic_step_", "CUDA")
    calls = []
    real = dispatch.run_kinetic
    monkeypatch.setattr(dispatch, "run_kinetic", lambda backend, *a: calls.append(backend) or real(backend, *a))
    x, v, g = (torch.randn(6, 5, device="cuda") for _ in range(3))
    native = lk.kinetic_step(x, v, g, **KINETIC_KW)          # default on CUDA: the cuda backend, from C++
    assert calls == []
    with lk.use_backend("triton"):
        routed = lk.kinetic_step(x, v, g, **KINETIC_KW)
    assert calls == ["triton"]
    for a, b in zip(routed, native):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
