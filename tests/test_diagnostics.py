"""Tests of langevin_kernels.diagnostics: ESS, split R-hat and acceptance on known processes,
against ArviZ (when installed) and against a loop-based numpy reference written here.

Statistical bounds (fixed seeds). For an AR(1) process x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t
the autocorrelation at lag t is rho^|t|, the integrated autocorrelation time is
tau = (1 + rho) / (1 - rho), and M chains of N draws have ESS = M N / tau.
Madras & Sokal (1988): an estimate of tau summed over a window of W lags has relative
variance about 2 (2W + 1) / (M N). Geyer's sequence stops where the autocorrelation sinks into
its noise floor 1 / sqrt(M N), i.e. after W ~ log(sqrt(M N)) / -log|rho| lags (W >= 1), so
the ESS of one dimension has relative standard deviation sd = sqrt(2 (2W + 1) / (M N)) and the
mean over D independent dimensions sd / sqrt(D). Truncating the sum biases tau by at most
about 2 / sqrt(M N) relative: the terms dropped past the window, or the noise terms kept
because they happened to be positive, are each of the size of the noise floor.
Tests allow that bias plus 5 standard deviations (two-sided p ~ 6e-7).
"""
import math
import warnings

import numpy as np
import pytest
import torch

from langevin_kernels.chains import DataChain
from langevin_kernels.diagnostics import (StreamingDiagnostics, acceptance_per_chain, chain_diagnostics,
                                          effective_sample_size, split_rhat)


@pytest.fixture(scope="module")
def arviz():
    """ArviZ, an optional test-only dependency, imported only by the tests that compare with it
    (its import takes seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # arviz warns about its coming refactor on import
        return pytest.importorskip("arviz", reason="arviz is not installed; pip install arviz to compare with it")


# --------------------------------------------------------------------------------------------
# draws with known answers
# --------------------------------------------------------------------------------------------
def ar1(rho, n_draws, n_chains, n_dims, seed, dtype=torch.float64):
    """Stationary AR(1) draws with unit marginal variance, [draws, chains, dims]."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n_draws, n_chains, n_dims, generator=gen, dtype=torch.float64)
    x = torch.empty_like(noise)
    x[0] = noise[0]                                   # stationary start: N(0, 1)
    scale = math.sqrt(1 - rho * rho)
    for t in range(1, n_draws):
        x[t] = rho * x[t - 1] + scale * noise[t]
    return x.to(dtype)


def ess_tolerance(rho, n_chains, n_draws, n_dims):
    """Allowed |mean ESS / theory - 1| over n_dims independent dims (module docstring)."""
    total = n_chains * n_draws
    window = 1 if rho == 0 else max(1, math.ceil(math.log(math.sqrt(total)) / -math.log(abs(rho))))
    sd_one_dim = math.sqrt(2 * (2 * window + 1) / total)
    return 2 / math.sqrt(total) + 5 * sd_one_dim / math.sqrt(n_dims)


def mixed_draws(seed, n_draws=1001):
    """[draws, 4 chains, 6 dims] of hard cases: strong and negative autocorrelation, heavy
    tails, many ties (rounded values, as MALA rejections repeat states), a constant dim and a
    slowly mixing chain; an odd number of draws so the split drops a middle draw."""
    rng = np.random.default_rng(seed)
    rho = np.array([0.9, 0.5, -0.3, 0.95, 0.0, 0.0])
    x = np.zeros((n_draws, 4, 6))
    x[0] = rng.standard_normal((4, 6))
    for t in range(1, n_draws):
        x[t] = rho * x[t - 1] + np.sqrt(1 - rho ** 2) * rng.standard_normal((4, 6))
    x[:, :, 3] = np.round(x[:, :, 3] * 2) / 2                     # ties
    x[:, :, 4] = rng.standard_t(1, size=(n_draws, 4))             # Cauchy: no mean
    x[:, :, 5] = 2.5
    x[:, 0, 0] += np.linspace(0, 1.5, n_draws)                    # one drifting chain
    return x


# --------------------------------------------------------------------------------------------
# numpy reference: loops over lags, written from the definitions (Vehtari et al. 2021; Stan)
# --------------------------------------------------------------------------------------------
def np_split(x):                         # [chains, draws] -> [2 chains, draws // 2]
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]])


def np_rank_normal(x):
    from statistics import NormalDist
    values, inverse, counts = np.unique(x.ravel(), return_inverse=True, return_counts=True)
    before = np.concatenate([[0], np.cumsum(counts)[:-1]])
    average_rank = before + (counts + 1) / 2                      # ties share their mean rank
    inv_cdf = np.vectorize(NormalDist().inv_cdf)
    return inv_cdf((average_rank[inverse] - 0.375) / (x.size + 0.25)).reshape(x.shape)


def np_ess(x):                           # Geyer's initial monotone sequence, x [chains, draws]
    m, n = x.shape
    if np.ptp(x) == 0:
        return float(x.size)
    centred = x - x.mean(axis=1, keepdims=True)
    acov = np.array([np.correlate(c, c, mode="full")[n - 1:] / n for c in centred])   # direct sums
    within = acov[:, 0].mean() * n / (n - 1)
    var_plus = within * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    kept = [1.0, rho[1]]                  # pair 0 always counts
    t = 1
    even, odd = 1.0, rho[1]
    while t < n - 3 and even + odd > 0:   # next pair while the last one was positive
        even, odd = rho[t + 1], rho[t + 2]
        kept += [even, odd] if even + odd >= 0 else [0.0, 0.0]
        t += 2
    last = t - 2                          # kept[: last + 1] are the summed pairs
    if even > 0:
        kept[last + 1] = even
    for k in range(1, (last + 1) // 2):   # monotone: no pair larger than the one before
        previous = kept[2 * k - 2] + kept[2 * k - 1]
        if kept[2 * k] + kept[2 * k + 1] > previous:
            kept[2 * k] = kept[2 * k + 1] = previous / 2
    tau = -1 + 2 * sum(kept[: last + 1]) + kept[last + 1]
    tau = max(tau, 1 / math.log10(x.size))
    return x.size / tau


def np_rhat(x):                          # classic R-hat, x [chains, draws]
    n = x.shape[1]
    within = x.var(axis=1, ddof=1).mean()
    between_over_n = x.mean(axis=1).var(ddof=1)
    with np.errstate(invalid="ignore"):                           # constant draws: 0/0 = NaN
        return float(np.sqrt(((n - 1) / n * within + between_over_n) / within))


def np_reference(x, kind):               # x [chains, draws] of one dimension
    split = np_split(x)
    if kind == "ess_bulk":
        return np_ess(np_rank_normal(split))
    if kind == "ess_mean":
        return np_ess(split)
    if kind == "ess_tail":
        return min(np_ess(np_split((x <= np.quantile(x, p)).astype(float))) for p in (0.05, 0.95))
    if kind == "rhat_split":
        return np_rhat(split)
    folded = np.abs(split - np.median(split))
    return max(np_rhat(np_rank_normal(split)), np_rhat(np_rank_normal(folded)))   # rhat_rank


def ours(x, kind):                       # x [draws, chains, dims] numpy -> numpy [dims]
    t = torch.from_numpy(x)
    if kind.startswith("ess_"):
        return effective_sample_size(t, method=kind[4:]).numpy()
    return split_rhat(t, method=kind[5:]).numpy()


KINDS = ("ess_bulk", "ess_tail", "ess_mean", "rhat_rank", "rhat_split")


# --------------------------------------------------------------------------------------------
# agreement with references
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_matches_numpy_reference(kind):
    x = mixed_draws(seed=1, n_draws=601)
    expected = np.array([np_reference(x[:, :, d].T, kind) for d in range(x.shape[2])])
    # same formulas, different arithmetic (FFT vs direct sums): float64 rounding only
    np.testing.assert_allclose(ours(x, kind), expected, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_arviz(kind, arviz):
    x = mixed_draws(seed=2)
    dataset = arviz.convert_to_dataset(np.ascontiguousarray(x.transpose(1, 0, 2)))   # (chain, draw, dim)
    method = kind.split("_")[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = (arviz.ess(dataset, method=method) if kind.startswith("ess_")
               else arviz.rhat(dataset, method=method))["x"].values
    got = ours(x, kind)
    # R-hat of the constant dim is 0/0 = NaN in both; ESS there is the number of draws
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(got).sum() == kind.startswith("rhat")
    finite = ~np.isnan(ref)
    assert np.all(np.abs(got[finite] / ref[finite] - 1) < 0.05), (got, ref)   # the target: within 5 %
    np.testing.assert_allclose(got, ref, rtol=1e-9)                           # in fact: the same numbers


def test_float32_within_5_percent_of_arviz(arviz):
    x = mixed_draws(seed=3, n_draws=800)
    x32 = x.astype(np.float32)
    dataset = arviz.convert_to_dataset(np.ascontiguousarray(x32.transpose(1, 0, 2)).astype(np.float64))
    report = chain_diagnostics(torch.from_numpy(x32))
    assert all(v.dtype == torch.float32 for v in report.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ref in [("ess_bulk", arviz.ess(dataset, method="bulk")), ("ess_tail", arviz.ess(dataset, method="tail")),
                          ("ess_mean", arviz.ess(dataset, method="mean")), ("rhat", arviz.rhat(dataset))]:
            got, want = report[name].double().numpy(), ref["x"].values
            finite = ~np.isnan(want)                               # R-hat of the constant dim
            assert np.array_equal(np.isnan(got), ~finite), (name, got, want)
            assert np.all(np.abs(got[finite] / want[finite] - 1) < 0.05), (name, got, want)


def test_chain_diagnostics_equals_the_single_functions():
    t = torch.from_numpy(mixed_draws(seed=4, n_draws=700))      # even: the tail shares the split's sort
    report = chain_diagnostics(t)
    for method in ("bulk", "tail", "mean"):
        torch.testing.assert_close(report[f"ess_{method}"], effective_sample_size(t, method=method), rtol=1e-12, atol=0)
    torch.testing.assert_close(report["rhat"], split_rhat(t), rtol=1e-12, atol=0, equal_nan=True)
    assert "acceptance" not in report


# --------------------------------------------------------------------------------------------
# known processes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho, method", [(0.9, "bulk"), (0.5, "bulk"), (0.0, "bulk"), (-0.3, "bulk"),
                                         (0.9, "mean"), (-0.3, "mean")])
def test_ess_of_ar1_matches_theory(rho, method):
    n_draws, n_chains, n_dims = 2000, 4, 128
    x = ar1(rho, n_draws, n_chains, n_dims, seed=10 + int(rho * 10))
    ess = effective_sample_size(x, method=method)
    theory = n_chains * n_draws * (1 - rho) / (1 + rho)          # rho = 0: iid, ESS = all draws
    ratio = (ess / theory).mean().item()
    assert abs(ratio - 1) < ess_tolerance(rho, n_chains, n_draws, n_dims), (rho, method, ratio)


def test_ess_of_a_data_chain_trajectory():
    # ULA on N(0, I): x' = x - a x + s xi is AR(1) with rho = 1 - a in every coordinate, and
    # its stationary variance is s^2 / (1 - rho^2); start there so every draw is stationary
    a, s, n_chains, dim, n_steps = 0.5, 1.0, 16, 32, 1000
    rho = 1 - a
    chain = DataChain(lambda x: 0.5 * (x * x).sum(1), n_steps=n_steps, step_size=a, noise_scale=s, seed=7)
    x0 = torch.randn(n_chains, dim, generator=torch.Generator().manual_seed(7)) * s / math.sqrt(1 - rho ** 2)
    _, trajectory = chain.run(x0, return_trajectory=True)        # [n_steps + 1, chains, dim]
    ess = effective_sample_size(trajectory)
    n_draws = trajectory.shape[0]
    assert ess.shape == (dim,) and ess.dtype == torch.float32
    ratio = (ess / (n_chains * n_draws * (1 - rho) / (1 + rho))).mean().item()
    assert abs(ratio - 1) < ess_tolerance(rho, n_chains, n_draws, dim), ratio


def test_rhat_of_mixed_chains_is_near_one():
    # iid N(0, 1) chains split into 2M = 8 chains of n = 1000: R-hat^2 = 1 - 1/n + F / n with
    # F = var(chain means) * n ~ chi2_7 / 7 (ratio to W ~ 1), so R-hat - 1 <= (q / 7) / (2n)
    # with q = 38, the chi2_7 quantile at 1 - 1e-6: 0.0027; the usual alarm is 1.01
    x = ar1(0.0, 2000, 4, 64, seed=20)
    for method in ("rank", "split"):
        rhat = split_rhat(x, method=method)
        assert (rhat < 1.0028).all() and (rhat > 0.99).all(), (method, rhat.max())


def test_rhat_of_chains_stuck_at_different_means():
    # chains m = 0..3 iid N(m, 1); split: 8 chains with means (0, 1, 2, 3) twice, their
    # variance 10/7, W = 1, so split R-hat = sqrt(1 - 1/n + 10/7) = 1.558; the chain means
    # carry errors 1/sqrt(1000) = 0.03, which move R-hat by < 0.02 at 3 sd: allow 0.05
    n_draws, n_dims = 2000, 8
    x = ar1(0.0, n_draws, 4, n_dims, seed=30) + torch.arange(4, dtype=torch.float64)[None, :, None]
    split = split_rhat(x, method="split")
    assert ((split - math.sqrt(1 - 1 / 1000 + 10 / 7)).abs() < 0.05).all(), split
    # rank-normalised: the pooled draws become N(0, 1) scores; the chains still own disjoint
    # bands of ranks, so the between-chain variance stays most of the total: far above 1.01
    assert (split_rhat(x) > 1.3).all(), split_rhat(x)


def test_split_rhat_sees_a_trend_the_unsplit_rhat_misses():
    # every chain drifts by c = 2 over the run: all chain means agree (unsplit R-hat ~ 1), but
    # the halves' means differ by c / 2: between-variance 8 * 0.5^2 / 7 = 2/7 on W = 1 + 1/12,
    # split R-hat = sqrt(1 + (2/7) / (13/12)) = 1.124
    n_draws, n_chains = 2000, 4
    trend = torch.linspace(-1, 1, n_draws, dtype=torch.float64)[:, None, None]
    x = ar1(0.0, n_draws, n_chains, 4, seed=40) + trend
    split = split_rhat(x, method="split")
    assert ((split - math.sqrt(1 + (2 / 7) / (13 / 12))).abs() < 0.03).all(), split
    unsplit = StreamingDiagnostics()
    for draw in x:
        unsplit.update(draw)
    assert (unsplit.rhat() < 1.01).all(), unsplit.rhat()


# --------------------------------------------------------------------------------------------
# layouts, dtypes, chunks, special values
# --------------------------------------------------------------------------------------------
def test_event_shape_dtypes_and_layouts_agree():
    x = ar1(0.7, 400, 3, 12, seed=50)                              # [draws, chains, 12]
    flat = chain_diagnostics(x)
    grid = chain_diagnostics(x.reshape(400, 3, 3, 4))              # [draws, chains, d1, d2]
    chains_first = chain_diagnostics(x.permute(1, 2, 0), draw_dim=2, chain_dim=0)
    chunked = chain_diagnostics(x, chunk_size=5)
    single32 = chain_diagnostics(x.float())
    for name, value in flat.items():
        assert grid[name].shape == (3, 4) and value.dtype == torch.float64
        torch.testing.assert_close(grid[name].reshape(12), value, rtol=1e-12, atol=0)
        torch.testing.assert_close(chains_first[name], value, rtol=1e-12, atol=0)
        torch.testing.assert_close(chunked[name], value, rtol=1e-12, atol=0)
        # float32 draws: rounding the draws and float32 FFTs move ESS and R-hat by far less than 1 %
        assert single32[name].dtype == torch.float32
        torch.testing.assert_close(single32[name].double(), value, rtol=1e-2, atol=0)
    for low in (torch.float16, torch.bfloat16):                   # promoted to float32
        assert effective_sample_size(x.to(low)).dtype == torch.float32


def test_single_chain():
    x = ar1(0.5, 1000, 1, 4, seed=60)
    one = effective_sample_size(x[:, 0], chain_dim=None)
    torch.testing.assert_close(one, effective_sample_size(x), rtol=1e-12, atol=0)
    assert split_rhat(x[:, 0], chain_dim=None).shape == (4,)


def test_constant_and_nan_dimensions():
    x = ar1(0.0, 100, 2, 3, seed=70)
    x[:, :, 1] = 3.0                                               # constant: every draw counts
    x[5, 1, 2] = math.nan
    ess = effective_sample_size(x)
    assert torch.isfinite(ess[0]) and ess[1] == 200 and torch.isnan(ess[2])
    assert torch.isnan(split_rhat(x)[2]) and torch.isfinite(split_rhat(x)[0])


# --------------------------------------------------------------------------------------------
# acceptance and streaming
# --------------------------------------------------------------------------------------------
def test_acceptance_per_chain():
    accepted = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(acceptance_per_chain(accepted), torch.tensor([1.0, 0.25, 0.25]))
    torch.testing.assert_close(acceptance_per_chain(accepted.T, step_dim=1), torch.tensor([1.0, 0.25, 0.25]))
    probs = torch.tensor([[0.5, 1.0], [0.25, 0.0]], dtype=torch.float64)        # Metropolis probabilities
    torch.testing.assert_close(acceptance_per_chain(probs), torch.tensor([0.375, 0.5], dtype=torch.float64))
    report = chain_diagnostics(ar1(0.0, 8, 3, 1, seed=80), accepted)
    torch.testing.assert_close(report["acceptance"], torch.tensor([1.0, 0.25, 0.25]))


@pytest.mark.parametrize("n_draws", [500, 501])
def test_streaming_matches_the_trajectory(n_draws):
    x = ar1(0.8, n_draws, 3, 5, seed=90) + torch.arange(3, dtype=torch.float64)[None, :, None] * 0.1
    accepted = torch.rand(n_draws, 3, generator=torch.Generator().manual_seed(90)) < 0.6
    split = StreamingDiagnostics(n_draws=n_draws)
    unsplit = StreamingDiagnostics()
    for draw, flags in zip(x, accepted):
        split.update(draw, accepted=flags)
        unsplit.update(draw)
    torch.testing.assert_close(split.rhat(), split_rhat(x, method="split"), rtol=1e-10, atol=0)
    torch.testing.assert_close(unsplit.mean, x.mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(unsplit.variance, x.var(0), rtol=1e-10, atol=0)
    torch.testing.assert_close(split.acceptance(), acceptance_per_chain(accepted))
    with pytest.raises(ValueError, match="n_draws"):
        split.update(x[0])


def test_streaming_rejects_bad_use():
    acc = StreamingDiagnostics(n_draws=10)
    acc.update(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="needs all of them"):
        acc.rhat()
    with pytest.raises(ValueError, match="earlier draws had"):
        acc.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"accepted must be a \[chains\]"):
        acc.update(torch.zeros(3, 2), accepted=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        acc.update(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="acceptance"):
        acc.acceptance()
    with pytest.raises(ValueError, match="n_draws=2"):
        StreamingDiagnostics(n_draws=2)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, message", [
    (lambda: effective_sample_size(np.zeros((10, 2))), TypeError, "trajectory must be a torch.Tensor"),
    (lambda: effective_sample_size(torch.zeros(10, 2, dtype=torch.int64)), TypeError, "floating-point.*int64"),
    (lambda: split_rhat(torch.zeros(10, 2, dtype=torch.complex64)), TypeError, "floating-point"),
    (lambda: effective_sample_size(torch.zeros(3, 2, 5)), ValueError, "3 draws.*at least 4"),
    (lambda: split_rhat(torch.zeros(10)), ValueError, "at least 2 dims.*chain_dim=None"),
    (lambda: effective_sample_size(torch.zeros(10, 2), draw_dim=2), ValueError, "draw_dim=2"),
    (lambda: effective_sample_size(torch.zeros(10, 2), chain_dim=0), ValueError, "draw_dim and chain_dim"),
    (lambda: effective_sample_size(torch.zeros(10, 2), method="tails"), ValueError, "method='tails'.*'bulk'"),
    (lambda: split_rhat(torch.zeros(10, 2), method="bulk"), ValueError, "method='bulk'.*'rank'"),
    (lambda: split_rhat(torch.zeros(10, 2), chunk_size=0), ValueError, "chunk_size=0"),
    (lambda: acceptance_per_chain([[True]]), TypeError, "accepted must be a torch.Tensor"),
    (lambda: acceptance_per_chain(torch.tensor(True)), ValueError, "0-dimensional"),
    (lambda: acceptance_per_chain(torch.zeros(0, 3, dtype=torch.bool)), ValueError, "no steps"),
    (lambda: acceptance_per_chain(torch.zeros(4, 3, dtype=torch.complex64)), TypeError, "accepted must be a bool"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------------
# no host reads: meta tensors carry no data, so any .item(), bool(tensor), nonzero() or
# data-dependent shape inside the call raises; on CUDA that is what would force a sync
# --------------------------------------------------------------------------------------------
def test_runs_on_data_free_meta_tensors():
    x = torch.empty(101, 4, 3, 2, device="meta")
    accepted = torch.empty(100, 4, dtype=torch.bool, device="meta")
    report = chain_diagnostics(x, accepted, chunk_size=4)
    assert {name: (tuple(v.shape), v.device.type) for name, v in report.items()} == {
        "ess_bulk": ((3, 2), "meta"), "ess_tail": ((3, 2), "meta"), "ess_mean": ((3, 2), "meta"),
        "rhat": ((3, 2), "meta"), "acceptance": ((4,), "meta")}
    streaming = StreamingDiagnostics(n_draws=5)
    for _ in range(5):
        streaming.update(x[0], accepted=accepted[0])
    assert streaming.rhat().shape == (3, 2) and streaming.acceptance().shape == (4,)


# --------------------------------------------------------------------------------------------
# GPU: same numbers, and no host synchronisation inside the call
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_matches_cpu_without_host_sync():
    x = torch.from_numpy(mixed_draws(seed=5, n_draws=1000))
    accepted = torch.rand(999, 4, generator=torch.Generator().manual_seed(5)) < 0.5
    expected = chain_diagnostics(x, accepted)
    x_gpu, accepted_gpu = x.cuda(), accepted.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")             # any device -> host read raises
    try:
        got = chain_diagnostics(x_gpu, accepted_gpu)
        got_chunked = effective_sample_size(x_gpu, chunk_size=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, value in expected.items():
        assert got[name].device.type == "cuda"
        torch.testing.assert_close(got[name].cpu(), value, rtol=1e-9, atol=0, equal_nan=True)
    torch.testing.assert_close(got_chunked.cpu(), expected["ess_bulk"], rtol=1e-9, atol=0, equal_nan=True)
