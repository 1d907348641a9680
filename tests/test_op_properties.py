"""Property-based tests (hypothesis) of the public ops: lk.langevin_step, lk.langevin_step_
and lk.philox_normal (docs/op.md and docs/noise.md).

tests/test_ops.py and tests/test_noise.py pin the contract with hand-picked examples; the
properties here generalise them over generated shapes (0-size, 1-element, up to ~20k
elements so that SIMD tails, L1 blocks and thread chunks are crossed), memory layouts
(permuted, sliced with steps up to 1000, as_strided with random order and gaps, odd
strides on size-1 dims, expanded views), dtypes, coefficients, clamp bounds, seeds and
offsets up to the 64-bit limits, and non-finite values. The oracle of every value check
is langevin_kernels/reference.py evaluated in float64 on the (exact) inputs and the exact
float64 noise stream, within a tolerance derived from the dtype (see `oracle`); where an
intermediate leaves float32's range, the float32 math's inf (and then NaN) is expected. The
stream itself is checked against the independent numpy rendering in tests/philox_spec.py,
and the kernels against the formula evaluated operation by operation in torch, bit for bit.

Every property runs with derandomize=True (the same examples on every run, no example
database) and its number of generated cases is printed at the end of the module
("hypothesis cases per property"). Triton runs only under TRITON_INTERPRET=1, where it is
slow (~50 ms per call), so its properties draw TRITON_EXAMPLES cases:

    TRITON_INTERPRET=1 pytest tests/test_op_properties.py -k triton
"""
from __future__ import annotations

import collections
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import langevin_kernels as lk
from langevin_kernels import reference
from philox_spec import normal_stream

U64 = 1 << 64
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ALLOWED = "allowed dtypes: float32, float16, bfloat16, float64"
# Every non-supported dtype this torch can make a CPU tensor of.
UNSUPPORTED_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
                      torch.complex64, torch.complex128] + [
    getattr(torch, name) for name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2",
                                      "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name)]
SEED_EDGES = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 2**31, 2**64 - 1]
# The smallest double that float32 rounds to infinity: FLT_MAX = 2^128 - 2^104, and the
# half-way point to 2^128 rounds to even, i.e. up.
F32_OVERFLOW = 2.0**128 - 2.0**103

settings.register_profile(
    "op-properties", derandomize=True, deadline=None, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])
PROFILE = settings.get_profile("op-properties")
TRITON_EXAMPLES = 6

CASES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_case_counts(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not CASES:
        return
    with capture.global_and_fixture_disabled():  # past pytest's output capture
        reporter.write("\n")
        reporter.write_line("hypothesis cases per property (calls of the property body): " + ", ".join(
            f"{name} {n}" for name, n in sorted(CASES.items())))


def run_property(name: str, backend: str | None, max_examples: int, *strategies, **kw_strategies):
    """Decorator: run the body as a hypothesis property now, for this backend.

    Each test calls its property inside the test function so that the number of examples can
    depend on the backend (few for the Triton interpreter) and so that the count of generated
    cases is recorded per property and backend.
    """
    if backend == "triton":
        max_examples = min(max_examples, TRITON_EXAMPLES)
    key = name if backend is None else f"{name}[{backend}]"

    def deco(body):
        @functools.wraps(body)  # keeps the signature and any @example for @given
        def counted(*args, **kwargs):
            CASES[key] += 1
            body(*args, **kwargs)
        prop = settings(PROFILE, max_examples=max_examples)(given(*strategies, **kw_strategies)(counted))
        prop()
        return prop
    return deco


# ----------------------------------------------------------------------------- oracle

# Tolerance of a result of dtype D against the exact (float64) formula:
#  * OUT_ROUND[D] * |y|: rounding of the result to D (unit roundoff 2^-p, p = significand bits),
#    plus TINY[D], the smallest subnormal of D, for results in D's subnormal range;
#  * 8 * u * scale, u the math type's unit roundoff: the math type (float32, float64 for float64 states) rounds each
#    of the six operations of x - a*(g + lam*x) + s*xi once, each error at most the unit
#    roundoff times the magnitude of the terms, scale = |x| + a(|g| + |lam x|) + s|xi|
#    (< 6 roundings, first order), plus 8 subnormal steps of the math type for underflow;
#  * NOISE_ERR * s with the kernels' own noise: their float32 Box-Muller (log, sqrt, cos/sin
#    polynomials) is within 3e-6 of the exact stream by analysis (tests/test_noise.py);
#  * the coefficients a, s, lam and the clamp bounds are numbers of the math type (docs/op.md,
#    "Dtypes and precision": math in float32), so the oracle uses them rounded to float32 for 16/32-bit
#    states: a step_size below float32's range is 0 to the kernel.
OUT_ROUND = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8,
             torch.float64: 2.0**-53}
TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133,
        torch.float64: 2.0**-1074}
NOISE_ERR = 1e-5
# Largest |x|, |grad|, |noise| drawn for the value checks: with |a|, |lam| <= 10, |s| <= 10 no
# float32 intermediate overflows and float16 results stay below 65504.
VALUE_CAP = {torch.float32: 1e6, torch.float16: 100.0, torch.bfloat16: 1e6, torch.float64: 1e6}


def out_round(dtype: torch.dtype, backend: str | None) -> float:
    """Relative error of the final rounding to dtype. Triton on CPU runs in its interpreter,
    whose float32 -> bfloat16 cast truncates (triton/runtime/interpreter.py cast_impl passes
    no rounding mode) where torch, the C++ kernels and the GPU's cvt round to nearest even:
    up to one bfloat16 ulp, 2^-7 relative, instead of half of one."""
    if backend == "triton" and dtype == torch.bfloat16:
        return 2.0**-7
    return OUT_ROUND[dtype]


def math_round(v: float | None, dtype: torch.dtype) -> float | None:
    """A coefficient as the kernels' math type holds it (float32 unless dtype is float64)."""
    if v is None or dtype == torch.float64:
        return v
    return float(np.float32(v)) if abs(v) < F32_OVERFLOW else math.copysign(math.inf, v)


def float32_range_formula(x, g, xi, a, s, lam):
    """The formula step by step in float64, except that an intermediate float32 could not
    hold becomes +-inf as it does in the float32 math (then e.g. 0 * inf = NaN); and the
    elements where that happens."""
    def fit(t):
        return torch.where(t.abs() >= F32_OVERFLOW, t.sign() * math.inf, t)

    t1 = fit(lam * x)
    t2 = fit(g + t1)
    t3 = fit(a * t2)
    t4 = fit(x - t3)
    t5 = fit(s * xi)
    y = fit(t4 + t5)
    exact = [lam * x, g + lam * x, a * (g + lam * x), x - a * (g + lam * x), s * xi]
    overflowed = torch.zeros(x.shape, dtype=torch.bool)
    for t in exact:
        overflowed |= t.abs() >= F32_OVERFLOW
    return y, overflowed


def oracle(x, g, noise, kw, backend=None):
    """(exact result, error bound) of the op on these inputs, elementwise in float64: the
    float64 reference (reference.langevin_step on float64 inputs, exact noise stream), where
    16/32-bit states take float32's range into account (float32_range_formula)."""
    dt = x.dtype
    a, s, lam = (math_round(kw[k], dt) for k in ("step_size", "noise_scale", "prior_weight"))
    lo, hi = (None, None) if kw.get("clamp") is None else (math_round(b, dt) for b in kw["clamp"])
    if noise is None:
        xi = reference.philox_normal(x.numel(), seed=kw["seed"], offset=kw["offset"],
                                     dtype=torch.float64).reshape(x.shape)
    else:
        xi = noise.double()
    x64, g64 = x.double(), g.double()
    want = reference.langevin_step(x64, g64, step_size=a, noise_scale=s, prior_weight=lam,
                                   clamp_lo=lo, clamp_hi=hi, noise=xi)
    if dt != torch.float64:
        limited, overflowed = float32_range_formula(x64, g64, xi, a, s, lam)
        if overflowed.any():
            if lo is not None or hi is not None:
                limited = limited.clamp(lo, hi)
            want = torch.where(overflowed, limited, want)
    math_u, math_tiny = (2.0**-53, 2.0**-1074) if dt == torch.float64 else (2.0**-24, 2.0**-149)
    scale = x64.abs() + a * (g64.abs() + abs(lam) * x64.abs()) + s * xi.abs()
    bound = (out_round(dt, backend) * want.abs() + TINY[dt] + 8 * math_u * scale + 8 * math_tiny
             + (s * NOISE_ERR if noise is None else 0.0))
    return want, bound


def assert_matches_oracle(y, x, g, noise, kw, backend=None):
    """y agrees with the exact formula: NaN exactly where it is NaN, +-inf exactly where its
    value rounded to y's dtype overflows, and within the bound elsewhere."""
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    want, bound = oracle(x, g, noise, kw, backend)
    got = y.double()
    nan = want.isnan()
    bad = (got.isnan() != nan).nonzero()
    assert not len(bad), f"NaN pattern differs at {bad[:5].tolist()}: got {got[tuple(bad[0])]}, want {want[tuple(bad[0])]}"
    rounded = want.to(x.dtype).double()
    inf = rounded.isinf()
    assert torch.equal(got.isinf(), inf), f"inf pattern differs: got {got[got.isinf() != inf]}, want {want[got.isinf() != inf]}"
    assert torch.equal(got[inf], rounded[inf])
    finite = ~nan & ~inf
    err = (got - want).abs()
    over = finite & ~(err <= bound)
    assert not over.any(), (f"{int(over.sum())} elements off: got {got[over][:4].tolist()}, "
                            f"want {want[over][:4].tolist()}, bound {bound[over][:4].tolist()}")


def assert_same(a, b, backend=None):
    """Bitwise-equal values (NaN equal to NaN; the sign of zero is not compared); for a
    bfloat16 result of the Triton interpreter, within its one-ulp cast (see out_round)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    same = (a == b) | (a.isnan() & b.isnan())
    if backend == "triton" and a.dtype == torch.bfloat16:
        same |= (a.double() - b.double()).abs() <= out_round(a.dtype, backend) * b.double().abs()
    assert same.all(), f"{int((~same).sum())} elements differ: {a[~same][:4].tolist()} vs {b[~same][:4].tolist()}"


# ----------------------------------------------------------------------------- layouts

def contiguous_strides(shape):
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running *= max(size, 1)
    return tuple(reversed(strides))


@st.composite
def shapes(draw):
    """0-4 dims of 0..6 elements, or one long dim (crosses the CPU kernel's SIMD tails,
    1024-element L1 blocks and 16384-element thread chunks)."""
    if draw(st.integers(0, 7)) == 0:
        return (draw(st.sampled_from([1, 3, 4, 5, 127, 129, 1023, 1025, 4099, 16387, 20001])),)
    return tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))


@st.composite
def layouts(draw, shape, *, expanded=False, overlapping=False):
    """A memory layout for a tensor of `shape`: (kind, storage size, strides, storage offset).

    kinds: contiguous; permuted (a transposed/permuted contiguous block); sliced (x[s::k]
    of a bigger tensor, steps up to 1000 on 1-D); strided (as_strided, random dim order,
    random gaps between dims, random strides on size-1 dims); expanded (stride 0 on some
    dims of size > 1); overlapping (stride 0 or strides whose spans interleave).
    """
    n = math.prod(shape)
    kinds = ["contiguous", "permuted", "sliced", "strided"]
    if expanded:
        kinds.append("expanded")
    if overlapping:
        kinds = ["expanded", "overlapping"]
    kind = draw(st.sampled_from(kinds))
    ndim = len(shape)
    offset = draw(st.integers(0, 7)) if kind != "contiguous" else 0
    if kind == "contiguous":
        strides = contiguous_strides(shape)
    elif kind == "permuted":
        perm = draw(st.permutations(range(ndim)))
        inner = contiguous_strides([shape[d] for d in perm])
        strides = [0] * ndim
        for pos, d in enumerate(perm):
            strides[d] = inner[pos]
    elif kind == "sliced":
        budget = max(1, 50_000 // max(n, 1))
        steps = [draw(st.integers(1, min(1000, budget) if ndim == 1 else 3)) for _ in shape]
        padded = [size * k + 1 for size, k in zip(shape, steps)]
        base = contiguous_strides(padded)
        strides = [b * k for b, k in zip(base, steps)]
    elif kind == "strided":
        perm = draw(st.permutations(range(ndim)))
        budget = max(1, 50_000 // max(n, 1))
        strides, running = [0] * ndim, 1
        for d in reversed(perm):  # the last dim of perm is the fastest
            if shape[d] == 1:
                strides[d] = draw(st.sampled_from([0, 1, 3, 10**6]))  # any stride: never stepped
                continue
            strides[d] = running + draw(st.integers(0, budget))
            running = strides[d] * max(shape[d] - 1, 0) + 1
            budget = max(1, budget // max(shape[d], 1))
    elif kind == "expanded":
        big = [d for d in range(ndim) if shape[d] > 1]
        chosen = draw(st.sets(st.sampled_from(big), min_size=1)) if big else set()
        reduced = [1 if d in chosen else s for d, s in enumerate(shape)]
        strides = [0 if d in chosen else s for d, s in enumerate(contiguous_strides(reduced))]
    else:  # overlapping without a zero stride: two dims whose steps interleave
        big = [d for d in range(ndim) if shape[d] > 1]
        strides = list(contiguous_strides(shape))
        if len(big) >= 2:
            d0, d1 = draw(st.permutations(big))[:2]
            strides[d0] = draw(st.integers(1, max(1, shape[d1] - 1)))
            strides[d1] = 1
        elif big:
            strides[big[0]] = 0
    strides = tuple(strides)
    extent = sum(st_ * (size - 1) for st_, size in zip(strides, shape)) + 1 if n else 0
    return kind, offset + extent, strides, offset


def view_offsets(t: torch.Tensor) -> torch.Tensor:
    """Storage offset of each element of t, in row-major order (int64, t's shape)."""
    idx = torch.full([1] * t.dim(), t.storage_offset(), dtype=torch.int64)
    for d, (size, stride) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.dim()
        shape[d] = size
        idx = idx + (torch.arange(size, dtype=torch.int64) * stride).reshape(shape)
    return idx.expand(t.shape)


def overlaps_itself(t: torch.Tensor) -> bool:
    offsets = view_offsets(t).reshape(-1)
    return offsets.unique().numel() < offsets.numel()


def materialize(layout, values: torch.Tensor, *, fill=float("nan")):
    """(view, base): a view with `layout` into a storage `base` filled with `fill` that holds
    `values`. Elements of overlapping views share memory: they read the value written last."""
    _kind, size, strides, offset = layout
    base = torch.full((max(size, 1),), fill, dtype=values.dtype)
    view = base.as_strided(values.shape, strides, offset)
    base[view_offsets(view).reshape(-1)] = values.reshape(-1)
    return view, base


# ----------------------------------------------------------------------------- strategies

@st.composite
def tensor_values(draw, shape, dtype, *, nonfinite=False, cap=None):
    """Logical (contiguous) values of `dtype`: scaled normals from a drawn seed, with special
    values (signed zeros, the dtype's smallest subnormal, +-cap; NaN/+-inf if nonfinite)
    written at drawn positions."""
    cap = VALUE_CAP[dtype] if cap is None else cap
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([0.0, 1e-6, 1e-2, 1.0, 30.0, cap]))
    vals = (torch.randn(shape, generator=gen, dtype=torch.float64) * min(magnitude, cap)).clamp(-cap, cap)
    vals = vals.to(dtype)
    n = vals.numel()
    if n:
        specials = [0.0, -0.0, TINY[dtype], -TINY[dtype], cap, -cap, 1.0]
        nonfinite_values = [math.nan, math.inf, -math.inf]
        flat = vals.view(-1)
        if nonfinite:
            for i, v in draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(nonfinite_values)),
                                      min_size=1, max_size=6)):
                flat[i] = v
        for i, v in draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(specials)), max_size=4)):
            flat[i] = v
    return vals


def seeds():
    return st.one_of(st.sampled_from(SEED_EDGES), st.integers(0, U64 - 1))


def offsets_for(numel):
    """Offsets whose draw of ceil(numel/4) counters stays below 2^64: edges, random, and the
    largest allowed one."""
    last = min(U64 - 1, U64 - (numel + 3) // 4)  # numel = 0 draws no counter
    return st.one_of(st.sampled_from([0, 2**32 - 1, 2**32, 2**63 - 1, 2**63, last]).map(lambda o: min(o, last)),
                     st.integers(0, last), st.integers(max(0, last - 8), last))


STEP_SIZES = st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 1e-45, 1e-40, 1e-8, 0.5, 10.0]),
                       st.floats(0.0, 10.0))
PRIOR_WEIGHTS = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e-40, 10.0, -10.0]), st.floats(-10.0, 10.0))


@st.composite
def clamps(draw, cap):
    if draw(st.booleans()):
        return None
    bound = st.one_of(st.none(), st.floats(-cap, cap), st.sampled_from([-1.0, 0.0, 1.0]))
    lo, hi = draw(bound), draw(bound)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return (lo, hi)


def dtypes_for(backend):
    # the triton kernels run 16/32-bit floats (float64 states go to the C++ kernels)
    return st.sampled_from(FLOAT_DTYPES if backend != "triton" else FLOAT_DTYPES[:3])


@st.composite
def step_cases(draw, backend, *, x_expanded=True, nonfinite=False):
    """(tensors, bases, kwargs): x, grad and maybe an explicit noise, each a view in its own
    layout into its own storage (bases), and the op's keyword arguments; internal-noise
    offsets keep the counter below 2^64."""
    dtype = draw(dtypes_for(backend))
    shape = draw(shapes())
    n = math.prod(shape)
    names = ["x", "grad"] + (["noise"] if draw(st.booleans()) else [])
    tensors, bases = {}, {}
    for name in names:
        vals = draw(tensor_values(shape, dtype, nonfinite=nonfinite and draw(st.booleans())))
        layout = draw(layouts(shape, expanded=x_expanded or name != "x"))
        tensors[name], bases[name] = materialize(layout, vals)
        note(f"{name}: {layout[0]} strides={layout[2]} storage_offset={layout[3]}")
    noise = tensors.get("noise")
    kwargs = dict(step_size=draw(STEP_SIZES), noise_scale=draw(STEP_SIZES), prior_weight=draw(PRIOR_WEIGHTS),
                  clamp=draw(clamps(VALUE_CAP[dtype])), seed=draw(seeds()),
                  # with explicit noise the counter is not used, so any uint64 offset is allowed
                  offset=draw(st.integers(0, U64 - 1) if noise is not None else offsets_for(n)))
    note(f"dtype={dtype} shape={shape} kwargs={kwargs}")
    return tensors, bases, kwargs


def call(op, backend, tensors, kwargs):
    with lk.use_backend(backend):
        return op(tensors["x"], tensors["grad"], noise=tensors.get("noise"), **kwargs)


# ----------------------------------------------------------------------------- values


def test_out_of_place_matches_the_float64_reference(cpu_backend):
    @run_property("out_of_place_matches_reference", cpu_backend, 150, step_cases(cpu_backend))
    def prop(case):
        tensors, _bases, kwargs = case
        before = {k: v.clone() for k, v in tensors.items()}
        y = call(lk.langevin_step, cpu_backend, tensors, kwargs)
        assert y.is_contiguous()
        assert_matches_oracle(y, tensors["x"], tensors["grad"], tensors.get("noise"), kwargs, cpu_backend)
        for name, t in tensors.items():  # inputs are read only
            assert_same(t, before[name])


def test_in_place_equals_out_of_place_and_writes_only_the_view(cpu_backend):
    @run_property("in_place_equals_out_of_place", cpu_backend, 100, step_cases(cpu_backend, x_expanded=False))
    def prop(case):
        tensors, bases, kwargs = case
        x, base = tensors["x"], bases["x"]
        want = call(lk.langevin_step, cpu_backend, tensors, kwargs)
        in_view = torch.zeros(base.shape, dtype=torch.bool)
        in_view[view_offsets(x).reshape(-1)] = True
        outside = base[~in_view].clone()
        out = call(lk.langevin_step_, cpu_backend, tensors, kwargs)
        assert out is x
        assert_same(x, want)
        assert_same(base[~in_view], outside)  # the rest of the storage is untouched


def test_non_finite_values_follow_the_formula_as_written(cpu_backend):
    # IEEE arithmetic of y = clamp(x - a*(g + lam*x) + s*xi): NaN in -> NaN out, inf - inf
    # and 0 * inf (a = 0, lam = 0, s = 0 included) -> NaN, +-inf bounded by a clamp bound.
    coefficient = st.sampled_from([0.0, 0.5, 1.0, 5e-324])

    @run_property("non_finite_values_follow_the_formula", cpu_backend, 100,
                  step_cases(cpu_backend, nonfinite=True), coefficient, coefficient, st.sampled_from([0.0, 1.0, -0.5]),
                  st.booleans())
    def prop(case, a, s, lam, in_place):
        tensors, _bases, kwargs = case
        kwargs = dict(kwargs, step_size=a, noise_scale=s, prior_weight=lam)
        if in_place and not overlaps_itself(tensors["x"]):
            x_before = tensors["x"].clone()
            y = call(lk.langevin_step_, cpu_backend, tensors, kwargs)
            tensors = dict(tensors, x=x_before)
        else:
            y = call(lk.langevin_step, cpu_backend, tensors, kwargs)
        assert_matches_oracle(y, tensors["x"], tensors["grad"], tensors.get("noise"), kwargs, cpu_backend)

    # element by element, the cases of tests/test_ops.py: the pattern is the formula's
    x = torch.tensor([math.nan, 1.0, math.inf, 2.0, -math.inf, 0.5, 0.0])
    g = torch.tensor([0.0, math.nan, 0.0, 0.0, 0.0, math.inf, -math.inf])
    with lk.use_backend(cpu_backend):
        y = lk.langevin_step(x, g, step_size=0.1, noise_scale=1.0, prior_weight=0.0, noise=torch.zeros(7))
    assert torch.equal(y.isnan(), torch.tensor([True, True, True, False, True, False, False]))


# ----------------------------------------------------------------------------- layouts


@st.composite
def overlapping_views(draw):
    shape = draw(shapes())
    return shape, draw(layouts(shape, overlapping=True))


def test_in_place_on_overlapping_views_is_refused():
    @run_property("in_place_overlapping_view_refused", None, 80,
                  overlapping_views(), dtypes_for("cpp"), st.integers(0, 2**32 - 1))
    # was updated in place, each location written twice:
    @example(shape_layout=((2, 2), ("overlapping", 3, (1, 1), 0)), dtype=torch.float32, seed=0)
    # no elements, nothing overlaps: was refused as an expanded view
    @example(shape_layout=((0, 2), ("overlapping", 0, (2, 0), 0)), dtype=torch.float32, seed=0)
    def prop(shape_layout, dtype, seed):
        shape, layout = shape_layout
        gen = torch.Generator().manual_seed(seed)
        x, base = materialize(layout, torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        grad = torch.ones(shape, dtype=dtype)
        note(f"layout={layout}")
        # out of place, any view works and reads each element where it lies
        y = lk.langevin_step(x, grad, step_size=0.1, noise_scale=0.0)
        assert_matches_oracle(y, x, grad, None, dict(step_size=0.1, noise_scale=0.0, prior_weight=0.0, seed=0, offset=0))
        before = base.clone()
        if overlaps_itself(x):
            with pytest.raises(ValueError, match=r"^x .*overlap in memory"):
                lk.langevin_step_(x, grad, step_size=0.1, noise_scale=0.0)
            # the op itself (as torch.compile or a direct caller reaches it) refuses too
            with pytest.raises(ValueError, match=r"^x .*overlap in memory"):
                torch.ops.langevin_kernels.langevin_step_(x, grad, 0.1, 0.0, 0, 0, 0.0, None, None, None, None)
            assert_same(base, before)
        else:  # 0 or 1 element: nothing overlaps, the update is the out-of-place one
            assert lk.langevin_step_(x, grad, step_size=0.1, noise_scale=0.0) is x
            assert_same(x, y)


def test_in_place_with_grad_or_noise_sharing_memory_with_x(cpu_backend):
    # grad (or noise) is a shifted view of x's own storage, e.g. x = buf[1:], grad = buf[:-1]:
    # the in-place result must be the out-of-place one, whatever order the kernel writes in.
    @run_property("in_place_with_aliased_inputs", cpu_backend, 80,
                  st.sampled_from([1, 5, 64, 1000, 5000]), st.integers(0, 9), st.integers(0, 9),
                  st.one_of(st.none(), st.integers(0, 9)), st.sampled_from([1, 2]), dtypes_for(cpu_backend),
                  st.integers(0, 2**32 - 1))
    # x = buf[1:], grad = buf[:-1] (and the same with noise): the C++ kernel wrote x[i]
    # before reading it as grad[i + 1], off by up to 0.7
    @example(n=1000, x_at=1, g_at=0, noise_at=None, step=1, dtype=torch.float32, seed=0)
    @example(n=1000, x_at=1, g_at=5, noise_at=0, step=1, dtype=torch.float32, seed=0)
    def prop(n, x_at, g_at, noise_at, step, dtype, seed):
        gen = torch.Generator().manual_seed(seed)
        buf = torch.randn(n * step + 10, generator=gen, dtype=torch.float64).to(dtype)
        x = buf[x_at: x_at + n * step: step]
        g = buf[g_at: g_at + n * step: step]
        noise = None if noise_at is None else buf[noise_at: noise_at + n * step: step]
        kwargs = dict(step_size=0.1, noise_scale=0.5, prior_weight=0.5, seed=seed, offset=3)
        with lk.use_backend(cpu_backend):
            want = lk.langevin_step(x.clone(), g.clone(), noise=None if noise is None else noise.clone(), **kwargs)
            lk.langevin_step_(x, g, noise=noise, **kwargs)
        assert_same(x, want)


# ----------------------------------------------------------------------------- input errors


def test_unsupported_dtypes_are_refused():
    @run_property("unsupported_dtypes_refused", None, 60,
                  st.sampled_from(UNSUPPORTED_DTYPES), st.sampled_from(["x", "grad", "noise"]),
                  st.sampled_from(["langevin_step", "langevin_step_"]), shapes())
    def prop(bad, arg, op_name, shape):
        tensors = {name: torch.zeros(shape) for name in ("x", "grad", "noise")}
        tensors[arg] = torch.zeros(shape).to(bad)
        before = tensors["x"].clone()
        with pytest.raises(TypeError, match=rf"^{arg} has dtype {bad}; {ALLOWED}$"):
            getattr(lk, op_name)(tensors["x"], tensors["grad"], noise=tensors["noise"], step_size=0.1, noise_scale=0.1)
        assert torch.equal(tensors["x"], before)
        with pytest.raises(TypeError, match=rf"^dtype={bad} is not supported; {ALLOWED}$"):
            lk.philox_normal(math.prod(shape), seed=0, dtype=bad)


def test_mismatched_dtypes_are_refused():
    @run_property("mismatched_dtypes_refused", None, 30,
                  st.permutations(FLOAT_DTYPES), st.sampled_from(["grad", "noise"]), shapes())
    def prop(dtypes, arg, shape):
        x = torch.zeros(shape, dtype=dtypes[0])
        other = {"grad": x.clone(), "noise": None, arg: torch.zeros(shape, dtype=dtypes[1])}
        with pytest.raises(TypeError, match=rf"^{arg} has dtype {dtypes[1]} but x has dtype {dtypes[0]}; they must match$"):
            lk.langevin_step(x, other["grad"], noise=other["noise"], step_size=0.1, noise_scale=0.1)


def test_mixed_devices_are_refused():
    @run_property("mixed_devices_refused", None, 40,
                  st.sampled_from(["x", "grad", "noise", "rng_state"]),
                  st.sampled_from(["langevin_step", "langevin_step_"]), shapes())
    def prop(arg, op_name, shape):
        tensors = {"x": torch.zeros(shape), "grad": torch.zeros(shape), "noise": None, "rng_state": None}
        if arg == "rng_state":
            tensors[arg] = torch.zeros(2, dtype=torch.int64, device="meta")
        else:
            tensors[arg] = torch.zeros(shape, device="meta")
        pattern = ("^grad is on cpu but x is on meta" if arg == "x"
                   else f"^{arg} is on meta but x is on cpu; they must be on one device$")
        with pytest.raises(ValueError, match=pattern):
            getattr(lk, op_name)(tensors["x"], tensors["grad"], noise=tensors["noise"],
                                 rng_state=tensors["rng_state"], step_size=0.1, noise_scale=0.1)
        with pytest.raises(ValueError, match="^rng_state is on meta but x is on cpu"):
            lk.philox_normal(4, seed=0, rng_state=torch.zeros(2, dtype=torch.int64, device="meta"))


# ----------------------------------------------------------------------------- coefficients

HUGE = [1e30, 3.4e38, float(np.finfo(np.float32).max), F32_OVERFLOW, 1e39, 1e300, 1.7976931348623157e308]
TINY_STEPS = [0.0, -0.0, 5e-324, 1e-300, 1e-45, 1e-40]


def test_extreme_coefficients(cpu_backend):
    # docs/op.md: step_size and noise_scale are >= 0 (any finite size), math is float32
    # for 16/32-bit states. Coefficients float32 cannot hold (>= 2^128 - 2^103, which float32
    # rounds to inf and would turn a*0 into NaN) are refused for those states, naming the
    # argument; float64 states take them. Tiny ones are float32 zeros to the kernel.
    coefficient = st.one_of(st.sampled_from(TINY_STEPS + HUGE), st.floats(0.0, 10.0))

    @run_property("extreme_coefficients", cpu_backend, 100,
                  dtypes_for(cpu_backend), shapes(), coefficient, coefficient,
                  st.one_of(coefficient, coefficient.map(lambda v: -v)), seeds(), st.data())
    @example(dtype=torch.float32, shape=(3,), a=1e39, s=0.5, lam=0.0, seed=0, data=None)  # was NaN, now refused
    @example(dtype=torch.float32, shape=(3,), a=0.5, s=0.0, lam=F32_OVERFLOW, seed=0, data=None)
    @example(dtype=torch.float64, shape=(3,), a=1e300, s=1e300, lam=-1e300, seed=0, data=None)
    def prop(dtype, shape, a, s, lam, seed, data):
        n = math.prod(shape)
        offset = 0 if data is None else data.draw(offsets_for(n))
        gen = torch.Generator().manual_seed(seed % 2**32)
        x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        kwargs = dict(step_size=a, noise_scale=s, prior_weight=lam, seed=seed, offset=offset)
        too_big = [name for name in ("step_size", "noise_scale", "prior_weight")
                   if dtype != torch.float64 and abs(kwargs[name]) >= F32_OVERFLOW]
        if cpu_backend == "triton" and dtype == torch.float64:  # the float64 @example
            with lk.use_backend(cpu_backend), pytest.raises(TypeError, match="float64 runs on the cuda, cpp"):
                lk.langevin_step(x, g, **kwargs)
            return
        with lk.use_backend(cpu_backend):
            if too_big:
                for op in (lk.langevin_step, lk.langevin_step_):
                    with pytest.raises(ValueError, match=rf"^{too_big[0]}=.* float32"):
                        op(x, g, **kwargs)
                return
            y = lk.langevin_step(x, g, **kwargs)
            xi = lk.philox_normal(n, seed=seed, offset=offset).reshape(shape)
        assert_matches_oracle(y, x, g, None, kwargs, cpu_backend)
        # The kernel is the formula as written, one operation after the other in the math type
        # (no fused multiply-add, coefficients rounded to it): bit for bit the torch expression.
        # So a = 0 leaves x + s*xi (NaN if g + lam*x is not finite: 0 * inf), s = 0 leaves
        # gradient descent whatever the seed.
        mt = torch.float64 if dtype == torch.float64 else torch.float32
        a_m, s_m, lam_m = (math_round(v, dtype) for v in (a, s, lam))
        xm, gm = x.to(mt), g.to(mt)
        assert_same(y, ((xm - a_m * (gm + lam_m * xm)) + s_m * xi.to(mt)).to(dtype), cpu_backend)
        if s_m == 0:
            with lk.use_backend(cpu_backend):
                other = lk.langevin_step(x, g, **dict(kwargs, seed=(seed + 1) % U64))
            assert_same(y, other)


def test_bad_coefficients_are_refused():
    bad_values = st.sampled_from([-1e-300, -0.5, -1e300, math.nan, math.inf, -math.inf, 10**400, -10**400,
                                  "0.1", None, True, [0.1]])

    @run_property("bad_coefficients_refused", None, 80,
                  st.sampled_from(["step_size", "noise_scale", "prior_weight", "clamp lo", "clamp hi"]),
                  bad_values, st.sampled_from(["langevin_step", "langevin_step_"]))
    @example(arg="step_size", value=10**400, op_name="langevin_step")  # was OverflowError
    @example(arg="clamp hi", value=-10**400, op_name="langevin_step_")
    def prop(arg, value, op_name):
        kwargs = dict(step_size=0.1, noise_scale=0.1, prior_weight=0.0, offset=0)
        if arg.startswith("clamp"):
            kwargs["clamp"] = (value, None) if arg == "clamp lo" else (None, value)
            name = "clamp bound"
        else:
            kwargs[arg] = value
            name = arg
        x, g = torch.zeros(5), torch.ones(5)
        if name == "clamp bound" and value is None:
            error = None  # None is "no bound"
        elif isinstance(value, (str, bool, list)) or value is None:
            error, pattern = TypeError, rf"^{name} must be a real number"
        elif isinstance(value, int) or math.isinf(value) or math.isnan(value):
            error, pattern = ValueError, rf"^{name}=.* must be finite"
        elif name in ("step_size", "noise_scale") and value < 0:
            error, pattern = ValueError, rf"^{name}=.* must be >= 0$"
        elif name == "prior_weight" and abs(value) >= F32_OVERFLOW:  # float32 x
            error, pattern = ValueError, rf"^{name}=.* does not fit float32"
        else:  # negative prior weights, any finite clamp bound: allowed
            error = None
        if error is None:
            y = getattr(lk, op_name)(x.clone(), g, seed=3, **kwargs)
            kw = dict(kwargs, seed=3, offset=0)
            kw["clamp"] = kwargs.get("clamp")
            assert_matches_oracle(y, x, g, None, kw)
            return
        with pytest.raises(error, match=pattern):
            getattr(lk, op_name)(x, g, seed=3, **kwargs)
        assert torch.equal(x, torch.zeros(5))  # nothing written before the error


# ----------------------------------------------------------------------------- seeds and offsets


def test_seed_and_offset_up_to_the_64_bit_limits(cpu_backend):
    # The op's noise is philox_normal's stream at the same (seed, offset), for any uint64
    # seed and every offset that keeps offset + ceil(numel/4) <= 2^64; the last allowed
    # offset included.
    @run_property("seed_offset_limits", cpu_backend, 80,
                  st.sampled_from([0, 1, 3, 4, 5, 31, 33, 200, 1029]), dtypes_for(cpu_backend), seeds(), st.data())
    @example(n=5, dtype=torch.float32, seed=2**64 - 1, data=None)
    def prop(n, dtype, seed, data):
        offset = min(U64 - 1, U64 - (n + 3) // 4) if data is None else data.draw(offsets_for(n))
        zeros = torch.zeros(n, dtype=dtype)
        kwargs = dict(step_size=0.0, noise_scale=1.0, seed=seed, offset=offset)
        with lk.use_backend(cpu_backend):
            y = lk.langevin_step(zeros, zeros, **kwargs)
            x = zeros.clone()
            lk.langevin_step_(x, zeros, **kwargs)
            stream = lk.philox_normal(n, seed=seed, offset=offset)
        assert_same(y, stream.to(dtype), cpu_backend)
        assert_same(x, y)
        assert np.max(np.abs(stream.double().numpy() - normal_stream(n, seed, offset)), initial=0) <= NOISE_ERR


def test_offset_past_the_counter_limit_is_refused():
    @run_property("offset_past_limit_refused", None, 80,
                  st.sampled_from([5, 8, 9, 17, 4096, 4097]), seeds(), st.data())
    def prop(n, seed, data):
        groups = (n + 3) // 4
        offset = data.draw(st.one_of(st.integers(U64 - groups + 1, U64 - 1), st.just(U64 - 1)))
        x = torch.zeros(n)
        for op in (lk.langevin_step, lk.langevin_step_):
            with pytest.raises(ValueError, match=r"passes 2\*\*64"):
                op(x, x.clone(), step_size=0.1, noise_scale=1.0, seed=seed, offset=offset)
        assert torch.equal(x, torch.zeros(n))
        with pytest.raises(ValueError, match=rf"^offset={offset} \+ ceil\(n/4\) passes 2\*\*64"):
            lk.philox_normal(n, seed=seed, offset=offset)
        # explicit noise uses no counter: the same offset is fine
        y = lk.langevin_step(x, x, step_size=0.1, noise_scale=1.0, seed=seed, offset=offset, noise=torch.ones(n))
        assert torch.equal(y, torch.ones(n))
        # and one counter less than the refused span works
        last = U64 - groups
        assert lk.langevin_step(x, x, step_size=0.0, noise_scale=1.0, seed=seed, offset=last).isfinite().all()


def test_seed_and_offset_out_of_range_are_refused():
    out_of_range = st.one_of(st.integers(-2**70, -1), st.integers(U64, 2**80), st.sampled_from([-1, U64]))
    not_int = st.sampled_from([1.0, 2.0**63, True, None, "3", torch.tensor(3)])

    @run_property("seed_offset_out_of_range_refused", None, 80,
                  st.sampled_from(["seed", "offset"]), st.one_of(out_of_range, not_int),
                  st.sampled_from(["langevin_step", "langevin_step_", "philox_normal"]))
    def prop(arg, value, op_name):
        kwargs = dict(seed=0, offset=0)
        kwargs[arg] = value
        if isinstance(value, int) and not isinstance(value, bool):
            error, pattern = ValueError, rf"^{arg}={value} is out of range: allowed 0 <= {arg} < 2\*\*64$"
        elif value is None and op_name != "philox_normal":   # the steps treat None as "not given"
            error, pattern = TypeError, rf"^{arg} not given: the step draws noise"
        else:
            error, pattern = TypeError, rf"^{arg} must be an int in \[0, 2\*\*64\)"
        with pytest.raises(error, match=pattern):
            if op_name == "philox_normal":
                lk.philox_normal(4, **kwargs)
            else:
                getattr(lk, op_name)(torch.zeros(4), torch.zeros(4), step_size=0.1, noise_scale=0.1, **kwargs)


# ----------------------------------------------------------------------------- the stream


def test_philox_normal_prefix_and_counter_layout(cpu_backend):
    # docs/noise.md: element i uses counter offset + i // 4 and is n_(i mod 4) of it, so
    # philox_normal(N, o)[k:] is philox_normal(N - 4j, o + j)[k - 4j:] with j = k // 4 (for
    # k % 4 == 0 a plain shift by j counters), and every prefix is the shorter draw.
    @run_property("philox_prefix_and_layout", cpu_backend, 80,
                  st.integers(0, 300) | st.integers(0, 300) | st.integers(0, 300) |
                  st.sampled_from([1023, 1025, 4100, 16383, 16385, 20001]),
                  seeds(), st.data())
    @example(total=20001, seed=12345, data=None)  # crosses the CPU kernel's blocks and thread chunks
    # seeds in [2^31, 2^32): the Triton interpreter drew from the key (lo32, 0xFFFFFFFF)
    @example(total=9, seed=2**31, data=None)
    @example(total=1, seed=2**32 - 1, data=None)
    def prop(total, seed, data):
        offset = min(U64 - 1, U64 - (total + 3) // 4) if data is None else data.draw(offsets_for(total))
        k = total // 3 if data is None else data.draw(st.integers(0, total))
        dtype = torch.float16 if data is None else data.draw(st.sampled_from(FLOAT_DTYPES))
        j = k // 4
        with lk.use_backend(cpu_backend):
            full = lk.philox_normal(total, seed=seed, offset=offset)
            prefix = lk.philox_normal(k, seed=seed, offset=offset)
            # (an empty draw at offset + j = 2^64 is out of range: then take any offset)
            shifted = lk.philox_normal(total - 4 * j, seed=seed, offset=min(offset + j, U64 - 1))
            typed = lk.philox_normal(total, seed=seed, offset=offset, dtype=dtype)
        assert full.shape == (total,) and full.dtype == torch.float32
        assert_same(prefix, full[:k])
        assert_same(shifted[k - 4 * j:], full[k:])
        if k % 4 == 0:
            assert_same(shifted, full[k:])
        assert_same(typed, full.to(dtype))
        # and the stream is the spec's (tests/philox_spec.py), to the float32 error bound
        assert np.max(np.abs(full.double().numpy() - normal_stream(total, seed, offset)), initial=0) <= NOISE_ERR


def test_philox_normal_bad_lengths_are_refused():
    @run_property("philox_bad_length_refused", None, 30,
                  st.one_of(st.integers(-2**70, -1), st.integers(2**63, 2**80),
                            st.sampled_from([1.0, True, None, "4", -1])))
    @example(n=2**70)  # was a TypeError from torch.empty
    def prop(n):
        with pytest.raises(ValueError, match=rf"^n={n!r}"):
            lk.philox_normal(n, seed=0)
