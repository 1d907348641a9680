"""MCMC diagnostics on the device: effective sample size, split R-hat, acceptance per chain.

    x_k, traj = chain.run(x0, return_trajectory=True)      # traj: [draws, chains, *event_shape]
    ess = lk.effective_sample_size(traj[burn:])             # [*event_shape], on traj's device
    rhat = lk.split_rhat(traj[burn:])                       # [*event_shape]
    acc = lk.acceptance_per_chain(accepted)                 # [steps, chains] bool -> [chains]
    report = lk.chain_diagnostics(traj[burn:], accepted)    # all of them in one call

Definitions follow Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat for assessing convergence of MCMC", as ArviZ
(``az.ess``, ``az.rhat``) and Stan compute them, so the numbers agree with ArviZ's on the same
draws (tests/test_diagnostics.py checks this). Everything runs as batched tensor operations on
the trajectory's device: autocovariances by FFT (``torch.fft``) for every dimension and chain
at once, ranks by one sort per call, Geyer's truncation by cumulative products and minima
instead of a per-lag loop. Nothing is read back to the host, so a call costs a handful of
kernel launches and no synchronisation; the results stay on the device until the caller reads
them.

Layout. ``trajectory`` is ``[draws, chains, *event_shape]`` by default, the layout of
``DataChain.run(x0, return_trajectory=True)`` (``trajectory[j]`` is the state after
``j * thin`` steps, so ``trajectory[0]`` is the start: slice warm-up draws off before calling).
``draw_dim`` and ``chain_dim`` name other layouts; ``chain_dim=None`` means a single chain.
Results have shape ``event_shape`` (the trajectory's shape without the draw and chain dims),
dtype float64 for float64 trajectories and float32 otherwise (float16/bfloat16 draws are
promoted).

Computation, per dimension, on an array of M chains x N draws:

* split: each chain is cut into its first and last ``N // 2`` draws (the middle draw of an
  odd N is dropped), giving 2M chains of ``N // 2`` draws.
* rank normalisation: the pooled draws are ranked (ties get their average rank) and mapped
  to ``Phi^-1((rank - 3/8) / (S + 1/4))`` for S pooled draws (Blom's offsets).
* ESS (Geyer's initial monotone sequence): with per-chain autocovariances ``acov_m(t)``
  (divisor N), ``W = mean_m acov_m(0) * N / (N - 1)``, ``var+ = W (N - 1) / N + B`` where B is
  the variance (divisor M - 1) of the chain means, ``rho(t) = 1 - (W - mean_m acov_m(t)) / var+``.
  Pair sums ``P_k = rho(2k) + rho(2k + 1)`` are summed while positive, made non-increasing
  (running minimum), and ``tau = -1 + 2 * sum_{k<K} P_k + rho(2K)``, floored at
  ``1 / log10(M N)``; ESS = ``M N / tau``. Constant draws give ESS = M N (and R-hat NaN,
  0/0, as in ArviZ); a dimension with a NaN draw gives NaN.
* R-hat: ``sqrt(((N - 1) / N * W + B_n / N) / W)`` over split chains, with ``B_n = N * var(chain
  means)`` and ``W`` the mean within-chain variance (divisor N - 1).
"""
from __future__ import annotations

import math
import numbers

import torch

ESS_METHODS = ("bulk", "tail", "mean")
RHAT_METHODS = ("rank", "split")
MIN_DRAWS = 4  # as ArviZ: fewer draws leave no lag pairs for Geyer's sequence after the split
TAIL_PROBS = (0.05, 0.95)  # the tail ESS is the smaller of the 5 % and 95 % quantile ESS
_BLOM_OFFSET = 3.0 / 8.0  # rank -> normal score offset (Blom 1958), as Stan and ArviZ use


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def effective_sample_size(trajectory: torch.Tensor, *, method: str = "bulk", draw_dim: int = 0,
                          chain_dim: int | None = 1, chunk_size: int | None = None) -> torch.Tensor:
    """Effective sample size of each dimension of a multi-chain trajectory, on its device.

    Args:
        trajectory: floating-point tensor, ``[draws, chains, *event_shape]`` by default
            (``DataChain.run(..., return_trajectory=True)``); at least 4 draws.
        method: ``"bulk"`` (default; ArviZ's default): Vehtari et al. (2021) bulk ESS, the
            split-chain ESS of the rank-normalised draws -- robust to heavy tails and
            invariant to monotone transformations. ``"mean"``: split-chain ESS of the raw
            draws, the ESS that sets the Monte Carlo error of the mean (ArviZ
            ``method="mean"``). ``"tail"``: the smaller of the ESS of the indicators
            ``x <= q05`` and ``x <= q95`` (ArviZ ``method="tail"``). All use Geyer's initial
            monotone sequence on the FFT autocorrelation pooled over chains.
        draw_dim, chain_dim: which dims hold draws and chains (``chain_dim=None``: one chain).
        chunk_size: process this many dimensions per batch (None: all at once). The
            temporaries (FFT buffers, sort indices, ranks) peak at about 13x the trajectory's
            size in the compute dtype for ESS, 16x for R-hat and 24x for
            :func:`chain_diagnostics` (measured: 1000 draws x 16 chains x 1000 float32 dims);
            chunk large event shapes (images) to bound that. Chunks are a Python loop over
            batches of dimensions, still with no host reads.

    Returns:
        Tensor of shape ``event_shape`` on the trajectory's device: the ESS of each
        dimension (between about 0 and ``chains * draws * log10(chains * draws)``;
        anticorrelated chains can exceed ``chains * draws``).

    Raises:
        TypeError: ``trajectory`` is not a floating-point tensor.
        ValueError: bad dims, fewer than 4 draws, unknown ``method`` or bad ``chunk_size``.
    """
    method = _choice("method", method, ESS_METHODS)
    draws = _as_dims_chains_draws(trajectory, draw_dim, chain_dim)
    _check_chunk_size(chunk_size)
    fn = {"bulk": _ess_bulk, "tail": _ess_tail, "mean": _ess_mean}[method]
    return _by_chunks(fn, draws.values, chunk_size).reshape(draws.event_shape)


def split_rhat(trajectory: torch.Tensor, *, method: str = "rank", draw_dim: int = 0,
               chain_dim: int | None = 1, chunk_size: int | None = None) -> torch.Tensor:
    """Split R-hat (potential scale reduction) of each dimension, on the trajectory's device.

    Args:
        trajectory: floating-point tensor, ``[draws, chains, *event_shape]`` by default; at
            least 4 draws. One chain is allowed (its halves are compared), unlike ArviZ,
            which returns NaN for a single chain.
        method: ``"rank"`` (default; ArviZ's and Stan's default): Vehtari et al. (2021)
            rank-normalised split R-hat, the larger of the split R-hat of the rank-normalised
            draws (bulk) and of the rank-normalised distances to the median (tails).
            ``"split"``: the classic split R-hat of the raw draws (Gelman et al., BDA3;
            ArviZ ``method="split"``).
        draw_dim, chain_dim, chunk_size: as for :func:`effective_sample_size`.

    Returns:
        Tensor of shape ``event_shape``: values near 1 mean the chains agree; the usual
        threshold is 1.01.

    Raises:
        TypeError / ValueError: as for :func:`effective_sample_size`.
    """
    method = _choice("method", method, RHAT_METHODS)
    draws = _as_dims_chains_draws(trajectory, draw_dim, chain_dim)
    _check_chunk_size(chunk_size)
    fn = _rhat_rank if method == "rank" else _rhat_split
    return _by_chunks(fn, draws.values, chunk_size).reshape(draws.event_shape)


def acceptance_per_chain(accepted: torch.Tensor, *, step_dim: int = 0) -> torch.Tensor:
    """Fraction of accepted proposals of each chain, on the record's device.

    Args:
        accepted: ``[steps, chains]`` record (``step_dim`` names the steps dim) of bool
            accept decisions, or of numbers in [0, 1] such as integer 0/1 flags or the
            Metropolis acceptance probabilities ``min(1, alpha)`` (their mean is the
            Rao-Blackwellised acceptance rate). Values are not range-checked: that would
            need a host read.
        step_dim: the dim that indexes steps; it is averaged away.

    Returns:
        Tensor of the record's shape without ``step_dim`` (``[chains]``), float64 for
        float64 records and float32 otherwise.

    Raises:
        TypeError: ``accepted`` is not a real (bool, integer or floating-point) tensor.
        ValueError: ``accepted`` is 0-dimensional, ``step_dim`` is out of range, or there
            are no steps.
    """
    if not isinstance(accepted, torch.Tensor):
        raise TypeError(f"accepted must be a torch.Tensor of accept flags, got {type(accepted).__name__}")
    if accepted.is_complex():
        raise TypeError(f"accepted must be a bool, integer or floating-point tensor, got dtype {accepted.dtype}")
    if accepted.dim() < 1:
        raise ValueError("accepted must have a steps dim ([steps, chains]), got a 0-dimensional tensor")
    step_dim = _dim_index("step_dim", step_dim, accepted.dim())
    if accepted.shape[step_dim] < 1:
        raise ValueError(f"accepted has no steps along step_dim={step_dim} (shape {tuple(accepted.shape)})")
    dtype = torch.float64 if accepted.dtype == torch.float64 else torch.float32
    return accepted.to(dtype).mean(dim=step_dim)


def chain_diagnostics(trajectory: torch.Tensor, accepted: torch.Tensor | None = None, *,
                      draw_dim: int = 0, chain_dim: int | None = 1,
                      chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """All diagnostics of a run in one call, as device tensors (what ``az.summary`` reports).

    Returns a dict with ``"ess_bulk"``, ``"ess_tail"``, ``"ess_mean"`` and ``"rhat"`` (rank
    R-hat), each of shape ``event_shape``, and, when ``accepted`` is given,
    ``"acceptance"`` (:func:`acceptance_per_chain` of it, steps along dim 0). The rank
    normalisation is shared between the bulk ESS and R-hat. Arguments and errors as for
    :func:`effective_sample_size`.
    """
    draws = _as_dims_chains_draws(trajectory, draw_dim, chain_dim)
    _check_chunk_size(chunk_size)
    stacked = _by_chunks(_all_diagnostics, draws.values, chunk_size)   # [4, D]
    out = {name: row.reshape(draws.event_shape)
           for name, row in zip(("ess_bulk", "ess_tail", "ess_mean", "rhat"), stacked.unbind(0))}
    if accepted is not None:
        out["acceptance"] = acceptance_per_chain(accepted)
    return out


class StreamingDiagnostics:
    """Per-chain means, variances, R-hat and acceptance accumulated draw by draw, on the device.

    For runs too long to keep as a trajectory. Welford's update keeps a running mean and sum of
    squared deviations per chain and dimension (float64 for float64 draws, else float32); each
    ``update`` is a few elementwise kernels and no host read (the draw counter is a Python int).

        acc = lk.StreamingDiagnostics(n_draws=1000)      # n_draws known: split R-hat
        for _ in range(1000):
            x = chain.run(x)                             # [chains, *event_shape]
            acc.update(x, accepted=flags)                # flags: [chains] bool, optional
        acc.rhat()                                       # == split_rhat(traj, method="split")

    With ``n_draws`` the draws are split like :func:`split_rhat` (first ``n_draws // 2`` and last
    ``n_draws // 2``; an odd middle draw is skipped) and :meth:`rhat` is the classic split
    R-hat, which needs all ``n_draws`` updates. Without it, :meth:`rhat` is the unsplit R-hat
    of the draws so far (ArviZ ``method="identity"``), which misses trends within a chain.
    ESS needs autocorrelations and therefore the trajectory: use :func:`effective_sample_size`.
    """

    def __init__(self, n_draws: int | None = None):
        if n_draws is not None and (isinstance(n_draws, bool) or not isinstance(n_draws, numbers.Integral)
                                    or n_draws < MIN_DRAWS):
            raise ValueError(f"n_draws={n_draws!r} must be None or an int >= {MIN_DRAWS}")
        self.n_draws = None if n_draws is None else int(n_draws)
        self.draws_seen = 0
        self._shape = None
        self._halves = [_Welford(), _Welford()]   # split halves; only [0] without n_draws
        self._accepted_sum = None
        self._accept_updates = 0

    def update(self, x: torch.Tensor, accepted: torch.Tensor | None = None) -> None:
        """Add one draw ``x`` of shape ``[chains, *event_shape]`` (and optional accept flags
        of shape ``[chains]``)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() < 1:
            raise ValueError("x must be [chains, *event_shape], got a 0-dimensional tensor")
        if self._shape is not None and x.shape != self._shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, earlier draws had {tuple(self._shape)}")
        if self.n_draws is not None and self.draws_seen >= self.n_draws:
            raise ValueError(f"update() called more than n_draws={self.n_draws} times")
        if accepted is not None:
            self._add_accepted(accepted, x.shape[0])
        half = self._half_of(self.draws_seen)
        if half is not None:
            self._halves[half].add(x)
        self._shape = x.shape
        self.draws_seen += 1

    def _add_accepted(self, accepted, n_chains: int) -> None:
        if not isinstance(accepted, torch.Tensor) or accepted.shape != (n_chains,):
            got = tuple(accepted.shape) if isinstance(accepted, torch.Tensor) else type(accepted).__name__
            raise ValueError(f"accepted must be a [chains] = [{n_chains}] tensor, got {got}")
        flags = acceptance_per_chain(accepted.unsqueeze(0))    # checks the dtype; float [chains]
        self._accepted_sum = flags if self._accepted_sum is None else self._accepted_sum + flags
        self._accept_updates += 1

    @property
    def mean(self) -> torch.Tensor:
        """Per-chain mean of all draws counted so far, ``[chains, *event_shape]``."""
        return self._pooled().mean

    @property
    def variance(self) -> torch.Tensor:
        """Per-chain sample variance (divisor count - 1), ``[chains, *event_shape]``."""
        pooled = self._pooled()
        return pooled.m2 / (pooled.count - 1)

    def rhat(self) -> torch.Tensor:
        """Split R-hat (with ``n_draws``) or unsplit R-hat of the draws so far, ``event_shape``."""
        if self.n_draws is None:
            if self.draws_seen < 2:
                raise ValueError(f"rhat() needs at least 2 draws, got {self.draws_seen}")
            return _rhat_from_moments(self._halves[0].mean, self._halves[0].m2, self._halves[0].count)
        if self.draws_seen != self.n_draws:
            raise ValueError(f"rhat() with n_draws={self.n_draws} needs all of them, got {self.draws_seen}")
        first, second = self._halves
        means = torch.cat([first.mean, second.mean])   # 2M split chains
        m2 = torch.cat([first.m2, second.m2])
        return _rhat_from_moments(means, m2, first.count)

    def acceptance(self) -> torch.Tensor:
        """Per-chain fraction of accepted proposals over the updates that passed ``accepted``."""
        if self._accept_updates == 0:
            raise ValueError("acceptance() needs updates with accepted=... flags, got none")
        return self._accepted_sum / self._accept_updates

    def _half_of(self, index: int) -> int | None:
        if self.n_draws is None:
            return 0
        half = self.n_draws // 2
        if index < half:
            return 0
        return 1 if index >= self.n_draws - half else None

    def _pooled(self) -> "_Welford":
        first, second = self._halves
        if first.count + second.count < 2:
            raise ValueError(f"needs at least 2 draws, got {first.count + second.count}")
        return first.merged(second)


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
class _DimsChainsDraws:
    """The trajectory as a ``[D, chains, draws]`` tensor in the compute dtype, and its event shape."""

    def __init__(self, values: torch.Tensor, event_shape: torch.Size):
        self.values = values
        self.event_shape = event_shape


def _as_dims_chains_draws(trajectory, draw_dim, chain_dim) -> _DimsChainsDraws:
    if not isinstance(trajectory, torch.Tensor):
        raise TypeError(f"trajectory must be a torch.Tensor [draws, chains, *event_shape], "
                        f"got {type(trajectory).__name__}")
    if not trajectory.is_floating_point():
        raise TypeError(f"trajectory must be a floating-point tensor, got dtype {trajectory.dtype}")
    x = trajectory
    if chain_dim is None:
        if x.dim() < 1:
            raise ValueError("trajectory must have a draws dim, got a 0-dimensional tensor")
        draw_dim = _dim_index("draw_dim", draw_dim, x.dim())
        x = x.movedim(draw_dim, 0).unsqueeze(1)          # one chain
    else:
        if x.dim() < 2:
            raise ValueError(f"trajectory must be [draws, chains, *event_shape] (at least 2 dims), "
                             f"got shape {tuple(x.shape)}; pass chain_dim=None for a single chain")
        draw_dim = _dim_index("draw_dim", draw_dim, x.dim())
        chain_dim = _dim_index("chain_dim", chain_dim, x.dim())
        if draw_dim == chain_dim:
            raise ValueError(f"draw_dim and chain_dim must differ, both are {draw_dim}")
        x = x.movedim((draw_dim, chain_dim), (0, 1))
    n_draws, n_chains = x.shape[0], x.shape[1]
    if n_draws < MIN_DRAWS:
        raise ValueError(f"trajectory has {n_draws} draws along draw_dim; ESS and R-hat need at least "
                         f"{MIN_DRAWS} (shape {tuple(trajectory.shape)})")
    if n_chains < 1:
        raise ValueError(f"trajectory has no chains along chain_dim (shape {tuple(trajectory.shape)})")
    event_shape = x.shape[2:]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    values = x.to(dtype).reshape(n_draws, n_chains, math.prod(event_shape)).permute(2, 1, 0)
    return _DimsChainsDraws(values, event_shape)


def _dim_index(name: str, dim, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim!r} must be an int in [{-ndim}, {ndim - 1}] for a {ndim}-dim tensor")
    return int(dim) % ndim


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, allowed))}")
    return value


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be None or an int >= 1")


def _by_chunks(fn, values: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """fn over [D, M, N] -> [..., D], applied to slices of at most chunk_size dimensions;
    NaN wherever a dimension has a NaN draw (a rank or a quantile of NaN means nothing)."""
    if chunk_size is None or chunk_size >= values.shape[0]:
        result = fn(values)
    else:
        result = torch.cat([fn(part) for part in values.split(chunk_size, dim=0)], dim=-1)
    has_nan = torch.isnan(values).flatten(1).any(dim=-1)
    return torch.where(has_nan, torch.full_like(result, math.nan), result)


# --------------------------------------------------------------------------------------------
# transforms of [D, M, N] draws
# --------------------------------------------------------------------------------------------
def _split_chains(x: torch.Tensor) -> torch.Tensor:
    """[D, M, N] -> [D, 2M, N // 2]: first and last halves of each chain as separate chains."""
    half = x.shape[-1] // 2
    return torch.cat([x[..., :half], x[..., x.shape[-1] - half:]], dim=1)


def _sorted_pooled(x: torch.Tensor):
    """Per dimension, the pooled draws sorted (NaN last) and the permutation that sorts them."""
    return x.reshape(x.shape[0], -1).sort(dim=-1)


def _rank_normal(x: torch.Tensor, sorted_pooled=None) -> torch.Tensor:
    """Normal scores of the pooled ranks of [D, M, N] draws; ties share their average rank."""
    values, order = _sorted_pooled(x) if sorted_pooled is None else sorted_pooled
    pooled = values.shape[-1]
    position = torch.arange(pooled, device=x.device).expand_as(values)
    differs = values[:, 1:] != values[:, :-1]
    edge = torch.ones_like(differs[:, :1])
    starts_group = torch.cat([edge, differs], dim=-1)
    ends_group = torch.cat([differs, edge], dim=-1)
    # first and last position of each run of equal values, spread over the run
    first = torch.where(starts_group, position, 0).cummax(dim=-1).values
    last = torch.where(ends_group, position, pooled - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    mean_rank = (first + last).to(x.dtype) / 2 + 1              # 1-based average rank
    ranks = torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)
    scores = torch.special.ndtri((ranks - _BLOM_OFFSET) / (pooled + 1 - 2 * _BLOM_OFFSET))
    return scores.reshape(x.shape)


def _median_from_sorted(values: torch.Tensor) -> torch.Tensor:
    """Median of each row of sorted [D, S] values (mean of the middle two for even S), [D, 1, 1]."""
    pooled = values.shape[-1]
    middle = (values[:, (pooled - 1) // 2] + values[:, pooled // 2]) / 2
    return middle[:, None, None]


def _quantile_from_sorted(values: torch.Tensor, prob: float) -> torch.Tensor:
    """Quantile (linear interpolation, R's type 7 / numpy's default) of sorted [D, S] rows, [D]."""
    position = (values.shape[-1] - 1) * prob
    below = math.floor(position)
    above = min(below + 1, values.shape[-1] - 1)
    return values[:, below] + (position - below) * (values[:, above] - values[:, below])


# --------------------------------------------------------------------------------------------
# ESS and R-hat of [D, M, N] draws
# --------------------------------------------------------------------------------------------
def _fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT-friendly padding (>= 2N - 1 avoids circular wrap-around)."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < n:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _autocovariance(x: torch.Tensor) -> torch.Tensor:
    """Autocovariance of each chain at lags 0..N-1 (divisor N), by FFT, [D, M, N]."""
    n = x.shape[-1]
    length = _fft_length(2 * n)
    centred = x - x.mean(dim=-1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=length, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.fft.irfft(power, n=length, dim=-1)[..., :n] / n


def _geyer_ess(x: torch.Tensor) -> torch.Tensor:
    """Multi-chain ESS of [D, M, N] draws with Geyer's initial monotone sequence, [D]."""
    n_dims, n_chains, n = x.shape
    total = n_chains * n
    acov = _autocovariance(x)
    within = acov[..., 0].mean(dim=1) * n / (n - 1)                  # W
    var_plus = within * (n - 1) / n
    if n_chains > 1:
        var_plus = var_plus + x.mean(dim=-1).var(dim=1)              # + B / N
    rho = 1 - (within[:, None] - acov.mean(dim=1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    # pairs P_k = rho(2k) + rho(2k+1), k = 0..last_pair; Geyer looks at pair k >= 1 only while
    # every earlier pair is positive, and never past lag N - 2 (ArviZ's and Stan's bound)
    n_pairs = max((n - 1) // 2 - 1, 0) + 1
    pairs = rho[:, :2 * n_pairs].reshape(n_dims, n_pairs, 2).sum(dim=-1)
    still_positive = (pairs[:, :-1] > 0).to(torch.int64).cumprod(dim=-1)
    last_pair = still_positive.sum(dim=-1, keepdim=True)             # K: last pair looked at
    monotone = pairs.cummin(dim=-1).values                           # initial monotone sequence
    summed = torch.cat([torch.zeros_like(monotone[:, :1]), monotone.cumsum(dim=-1)], dim=-1)
    kept_sum = summed.gather(-1, last_pair).squeeze(-1)              # sum of pairs 0..K-1
    rho_even = rho[:, 0::2].gather(-1, last_pair).squeeze(-1)        # rho(2K)
    pair_last = pairs.gather(-1, last_pair).squeeze(-1)
    # rho(2K) still counts when positive, or when its pair was non-negative (kept by Geyer)
    rho_even = torch.where((pair_last >= 0) | (rho_even > 0), rho_even, torch.zeros_like(rho_even))
    tau = (-1 + 2 * kept_sum + rho_even).clamp(min=1 / math.log10(total))
    ess = total / tau
    ess = torch.where(torch.isnan(rho).any(dim=-1), torch.full_like(ess, math.nan), ess)
    return torch.where(_is_constant(x), torch.full_like(ess, float(total)), ess)


def _is_constant(x: torch.Tensor) -> torch.Tensor:
    """Per dimension: all draws equal up to rounding (their ESS is the number of draws), [D]."""
    flat = x.reshape(x.shape[0], -1)
    spread = flat.amax(dim=-1) - flat.amin(dim=-1)
    scale = flat.abs().amax(dim=-1).clamp(min=1.0)
    return spread <= torch.finfo(x.dtype).eps * scale


def _rhat_from_moments(chain_means: torch.Tensor, chain_m2: torch.Tensor, n: int) -> torch.Tensor:
    """R-hat from per-chain means and sums of squared deviations ([M, ...], n draws per chain)."""
    within = (chain_m2 / (n - 1)).mean(dim=0)
    between_over_n = chain_means.var(dim=0)                         # B / n
    return torch.sqrt(((n - 1) / n * within + between_over_n) / within)


def _rhat_of(x: torch.Tensor) -> torch.Tensor:
    """Classic (unsplit) R-hat of [D, M, N] draws, [D]."""
    means = x.mean(dim=-1, keepdim=True)
    m2 = (x - means).square().sum(dim=-1)
    return _rhat_from_moments(means.squeeze(-1).transpose(0, 1), m2.transpose(0, 1), x.shape[-1])


def _ess_bulk(x: torch.Tensor) -> torch.Tensor:
    return _geyer_ess(_rank_normal(_split_chains(x)))


def _ess_mean(x: torch.Tensor) -> torch.Tensor:
    return _geyer_ess(_split_chains(x))


def _ess_tail(x: torch.Tensor, sorted_all=None) -> torch.Tensor:
    """min over q in (5 %, 95 %) of the split ESS of the indicator x <= quantile_q(x)."""
    values = (_sorted_pooled(x) if sorted_all is None else sorted_all)[0]
    quantiles = torch.stack([_quantile_from_sorted(values, p) for p in TAIL_PROBS])   # [2, D]
    below = (x.unsqueeze(0) <= quantiles[:, :, None, None]).to(x.dtype)             # [2, D, M, N]
    ess = _geyer_ess(_split_chains(below.flatten(0, 1))).reshape(2, -1)
    return torch.minimum(ess[0], ess[1])


def _rhat_split(x: torch.Tensor) -> torch.Tensor:
    return _rhat_of(_split_chains(x))


def _rhat_rank(x: torch.Tensor, split=None, sorted_split=None) -> torch.Tensor:
    """max(R-hat of rank-normalised split draws, R-hat of rank-normalised |draw - median|)."""
    split = _split_chains(x) if split is None else split
    sorted_split = _sorted_pooled(split) if sorted_split is None else sorted_split
    bulk = _rhat_of(_rank_normal(split, sorted_split))
    folded = (split - _median_from_sorted(sorted_split[0])).abs()
    tail = _rhat_of(_rank_normal(folded))
    return torch.maximum(bulk, tail)


def _all_diagnostics(x: torch.Tensor) -> torch.Tensor:
    """[ess_bulk, ess_tail, ess_mean, rank rhat] of [D, M, N] draws, [4, D]."""
    split = _split_chains(x)
    sorted_split = _sorted_pooled(split)
    ess_bulk = _geyer_ess(_rank_normal(split, sorted_split))
    # with an even number of draws the split keeps every draw, so its sort serves the quantiles
    sorted_all = sorted_split if x.shape[-1] % 2 == 0 else None
    ess_tail = _ess_tail(x, sorted_all)
    return torch.stack([ess_bulk, ess_tail, _geyer_ess(split), _rhat_rank(x, split, sorted_split)])


class _Welford:
    """Running per-chain count, mean and sum of squared deviations of [chains, ...] draws."""

    def __init__(self, count: int = 0, mean: torch.Tensor | None = None, m2: torch.Tensor | None = None):
        self.count, self.mean, self.m2 = count, mean, m2

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        if self.mean is None:
            self.count, self.mean, self.m2 = 1, x.clone(), torch.zeros_like(x)
            return
        self.count += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.count
        self.m2 = self.m2 + delta * (x - self.mean)

    def merged(self, other: "_Welford") -> "_Welford":
        """Chan et al.'s pairwise combination: the moments of both sets of draws together."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / count)
        return _Welford(count, mean, m2)
