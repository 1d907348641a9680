"""Samplers built on the fused op (docs/chains.md): DataChain and LatentChain.

    chain = lk.DataChain(energy, n_steps=60, step_size=0.005, noise_scale=0.1, clamp=(-1, 1))
    x = chain.run(x0)                       # 60 fused steps; chain.offset advances
    chain.stats.to_dict()                   # per-step diagnostics, read to the host only here
    z = lk.LatentChain(g, sigma=0.3, n_steps=20, step_size=1e-3, noise_scale=0.045).run(z0, x_obs)

Every step is ``x <- clamp(x - a * (clip(dE/dx) + lam * x) + s * xi)`` with dE/dx from
``torch.autograd.grad`` on the user's per-chain energies (shape [B], batch = dim 0).

Noise. A chain owns (seed, offset). Step k of a run that starts at offset O draws
``xi = lk.philox_normal(x.numel(), seed=seed, offset=O + k * A).reshape(x.shape)`` with
``A = lk.noise_offset_advance(x.numel())``, and the chain's offset becomes O + K * A after a
K-step run, so no two steps of a chain ever share noise. ``chain.offset`` can be read and
set (checkpoints). MALA's accept test uses a second, disjoint stream: at step k the B chains
draw ``n = lk.philox_normal(B, seed=seed ^ ACCEPT_SEED_XOR, offset=O + k * A)`` and accept
when ``log Phi(n) < log alpha`` (Phi(n) is uniform on (0, 1)); B <= numel, so these draws never
overlap between steps either.

CUDA graphs (``capture_graph=True``, CUDA tensors, static shapes): the K-step run is captured
once and replayed. Seeds and offsets live in an int64 device tensor ``[[seed, O], [seed ^
ACCEPT_SEED_XOR, O]]`` passed as the op's ``rng_state``; step k passes the constant offset
k * A, and the captured work ends with ``rng_state[:, 1] += K * A``, so each replay draws
fresh noise and equals the uncaptured chain with the same seed and offset. The graph reads
the energy's parameters where they lie: in-place updates (optimizer.step) are seen, new
parameter tensors need ``chain.reset_graph()``.

Divergence guard (``on_nonfinite``). A chain (row of the state) is non-finite when any entry
of its state is NaN or inf. At the end of ``run()`` -- after the loop, outside any captured
CUDA graph, one host sync per run, never one per step -- the final state is checked:
``"raise"`` (default) raises :class:`NonFiniteChainError` naming the chains (and, with
``track_stats=True``, the step after which each first went non-finite, tracked on the device);
``"reinit"`` replaces those chains' final state with a fresh start (DataChain: ``reinit_fn(n)``
or the chains' x0 rows; LatentChain: N(0, I) prior draws from the chain's own Philox stream
keyed ``seed ^ REINIT_SEED_XOR`` at the run's start offset) and records the count in
``chain.stats.reinitialized``; ``"ignore"`` returns the state as it is (no check, no sync).
``chain.step`` is never checked.

torch.compile: ``torch.compile(chain.step, fullgraph=True)`` compiles the energy, its
gradient and one fused step into one graph; dynamo traces ``torch.autograd.grad`` only with
``torch._dynamo.config.trace_autograd_ops = True``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable

import torch

from .ops import _as_int64, langevin_step, langevin_step_, noise_offset_advance, philox_normal
from .compiled import DEFAULT_MAX_BLOCK, CompiledRunner, compile_options
from .schedules import resolve_schedule

ACCEPT_SEED_XOR = 0x9E3779B97F4A7C15  # golden-ratio constant: the accept stream's key differs from the noise key
REINIT_SEED_XOR = 0xD1B54A32D192ED03  # key of LatentChain's re-initialisation draws (on_nonfinite="reinit")
ON_NONFINITE = ("raise", "reinit", "ignore")
_MAX_LISTED = 10  # chains named in a NonFiniteChainError message before "... and N more"
_U64 = 1 << 64
_NOT_DIFFERENTIABLE = ("the energy must be a differentiable function of x; it returned a tensor that does not require grad "
                       "(detached, computed in numpy, independent of x, or under torch.no_grad?)")
# Settings fixed at construction: a chain precomputes its per-step schedule from them, so a
# later assignment would be ignored or break a run; build a new chain instead.
_FROZEN = frozenset(("n_steps", "step_size", "step_sizes", "noise_scale", "noise_scales", "prior_weight", "clamp",
                     "grad_clip", "mala", "seed", "capture_graph", "differentiable", "track_stats", "on_nonfinite",
                     "sigma", "compile", "compile_block"))
STAT_NAMES = ("energy_mean", "grad_norm_mean", "acceptance", "nonfinite_chains")


class ChainStats:
    """Per-step diagnostics of the last run, kept on the chain's device.

    Attributes are device tensors of length n_steps (no host sync until ``to_dict``):
    ``energy_mean`` (mean energy, prior included: ULA at the state the step started from, MALA at
    the state after the step),
    ``grad_norm_mean`` (mean per-chain norm of dE/dx before clipping), ``acceptance``
    (MALA: fraction of chains that accepted; None for ULA), ``nonfinite_chains`` (chains
    whose energy or gradient was not finite: ULA at the state the step started from,
    MALA at the proposal, which is then rejected). ``reinitialized`` (host int): chains whose
    final state was non-finite and was replaced by a fresh start (``on_nonfinite="reinit"``).
    """

    def __init__(self, steps, mala: bool, reinitialized: int = 0, table: torch.Tensor | None = None,
                 per_chain: tuple[torch.Tensor, torch.Tensor] | None = None):
        # The run keeps its per-step per-chain values (energy, grad norm, and for MALA the
        # accept decisions and bad proposals): no reduction per step. They come either as a
        # list of per-step tuples (`steps`) or, from the plain ULA loop, as two [n_steps, B]
        # buffers the steps wrote into (`per_chain`). The [n_steps, 4] table is reduced from
        # them on first use.
        self._steps = steps
        self._per_chain = per_chain
        self._table = table
        self.mala = mala
        self.reinitialized = int(reinitialized)

    @property
    def table(self) -> torch.Tensor:
        """[n_steps, 4] device tensor, columns as STAT_NAMES."""
        if self._table is None:
            if self._per_chain is not None:
                (energies, norms), accepted, bad = self._per_chain, None, None
            else:
                energies, norms, accepted, bad = (torch.stack(part) if part[0] is not None else None
                                                  for part in zip(*self._steps))
            if bad is None:   # ULA: the energy and gradient at the state each step started from
                bad = ~(torch.isfinite(energies) & torch.isfinite(norms))
            acceptance = (accepted.float().mean(1) if accepted is not None
                          else torch.full(energies.shape[:1], float("nan"), device=energies.device))
            self._table = torch.stack([energies.float().mean(1), norms.float().mean(1), acceptance,
                                       bad.sum(1).float()], dim=1)
            self._steps = self._per_chain = None
        return self._table

    def __getattr__(self, name):
        if name in STAT_NAMES:
            if name == "acceptance" and not self.mala:
                return None
            return self.table[:, STAT_NAMES.index(name)]
        raise AttributeError(name)

    @property
    def acceptance_rate(self) -> torch.Tensor | None:
        """Mean acceptance over all steps (device scalar), None for ULA."""
        return self.table[:, 2].mean() if self.mala else None

    def to_dict(self) -> dict:
        """The diagnostics as host lists (one device-to-host copy)."""
        rows = self.table.detach().cpu()
        out = {name: rows[:, i].tolist() for i, name in enumerate(STAT_NAMES)}
        out["nonfinite_chains"] = [int(v) for v in out["nonfinite_chains"]]
        out["reinitialized"] = self.reinitialized
        if self.mala:
            out["acceptance_rate"] = float(rows[:, 2].mean())
        else:
            out["acceptance"] = None
        return out


class NonFiniteChainError(RuntimeError):
    """Chains whose state was non-finite (NaN/inf) at the end of ``run()`` (``on_nonfinite="raise"``).

    Attributes (nothing of the run is lost):
        chains: int64 CPU tensor, indices (dim 0 of the state) of the non-finite chains.
        first_step: int64 CPU tensor aligned with ``chains``: the number of steps after which each
            chain's state was first non-finite (0: x0 itself), or None when not tracked
            (``track_stats=False``).
        state: the final state of all chains, non-finite rows included (as ``run`` would return it).
        trajectory: the trajectory when ``return_trajectory=True``, else None.
        n_chains: the number of chains in the batch.
    The chain's offset and stats were updated as for a normal run, so the chain can go on.
    """

    def __init__(self, message: str, *, chains: torch.Tensor, state: torch.Tensor, n_chains: int,
                 first_step: torch.Tensor | None = None, trajectory: torch.Tensor | None = None):
        super().__init__(message)
        self.chains = chains
        self.first_step = first_step
        self.state = state
        self.trajectory = trajectory
        self.n_chains = int(n_chains)


def _listed(values) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


# ----------------------------------------------------------------------------- checks

def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")
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


def _check_on_nonfinite(value) -> str:
    if not isinstance(value, str) or value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite={value!r} is not allowed; allowed values: "
                         + ", ".join(repr(v) for v in ON_NONFINITE))
    return value


def _nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Bool [B]: chains with any NaN/inf entry (device op, no sync)."""
    return ~torch.isfinite(_per_chain(x)).all(1)


def _per_chain(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


def _broadcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def log_q_ratio(x, y, grad_x, grad_y, step_size: float, noise_scale: float) -> torch.Tensor:
    """log q(x|y) - log q(y|x) per chain for q(y|x) = N(y; x - a G(x), s^2 I).

    grad_x, grad_y are the full drifts G (clipped energy gradient plus prior term). With
    d = y - x the difference of the two Gaussian exponents is
    sum[(G_x + G_y) * ((a / s^2) d - (a^2 / (2 s^2)) (G_y - G_x))]: one elementwise
    expression and one per-chain reduction (a single kernel once compiled), and no
    cancellation of ``y - x + a G_x`` against itself when s is small.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # the sums need more than 8-11 mantissa bits
        x, y, grad_x, grad_y = (t.float() for t in (x, y, grad_x, grad_y))
    a, s2 = step_size, noise_scale * noise_scale
    terms = (grad_x + grad_y) * ((a / s2) * (y - x) - (a * a / (2 * s2)) * (grad_y - grad_x))
    return _per_chain(terms).sum(1)


# ----------------------------------------------------------------------------- the sampler

class _LangevinChain:
    """Shared machinery of DataChain and LatentChain: steps, MALA, stats, graphs, noise."""

    def __init__(self, *, n_steps, step_size, noise_scale, prior_weight=0.0, clamp=None, grad_clip=None,
                 mala=False, seed=0, offset=0, capture_graph=False, differentiable=False, track_stats=True,
                 on_nonfinite="raise", compile=False, compile_block=None):
        self.n_steps = _positive_int("n_steps", n_steps)
        self.on_nonfinite = _check_on_nonfinite(on_nonfinite)
        self.step_sizes = resolve_schedule("step_size", step_size, self.n_steps)
        self.noise_scales = resolve_schedule("noise_scale", noise_scale, self.n_steps)
        self.prior_weight = float(prior_weight)
        self.clamp = self._check_clamp(clamp)
        self.grad_clip = _optional_positive("grad_clip", grad_clip)
        self.mala = bool(mala)
        _as_int64("seed", seed)
        self.seed = int(seed)
        self.capture_graph = bool(capture_graph)
        self.differentiable = bool(differentiable)
        self.track_stats = bool(track_stats)
        if self.mala and min(self.noise_scales) <= 0:
            k = self.noise_scales.index(min(self.noise_scales))
            raise ValueError(f"mala=True needs noise_scale > 0 at every step (the proposal density), "
                             f"but step {k} has noise_scale={self.noise_scales[k]}")
        options = compile_options(compile)
        self.compile = options is not None
        self.compile_block = (DEFAULT_MAX_BLOCK if compile_block is None
                              else _positive_int("compile_block", compile_block))
        if self.compile and self.differentiable:
            raise ValueError("compile=True cannot be combined with differentiable=True (compiled blocks keep no "
                             "autograd graph across steps); use compile=False")
        self._runner = CompiledRunner(self, options, self.compile_block) if self.compile else None
        if self.capture_graph and self.differentiable:
            raise ValueError("capture_graph=True cannot be combined with differentiable=True: a replayed "
                             "CUDA graph keeps no autograd graph")
        self._offset = 0
        self.offset = offset
        self.stats: ChainStats | None = None
        self.last_nonfinite: torch.Tensor | None = None
        self._finite_rows = None
        self.reset_graph()
        self._frozen = True

    def __setattr__(self, name, value):
        if name in _FROZEN and self.__dict__.get("_frozen", False):
            raise AttributeError(f"{type(self).__name__}.{name} is fixed at construction (the run's schedule is "
                                 f"built from it); build a new chain with {name}={value!r} instead")
        super().__setattr__(name, value)

    @staticmethod
    def _check_clamp(clamp):
        if clamp is None:
            return None
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
        lo, hi = clamp
        if lo is not None and hi is not None and float(lo) > float(hi):
            raise ValueError(f"clamp=({lo}, {hi}) has lo > hi; need lo <= hi")
        return (None if lo is None else float(lo), None if hi is None else float(hi))

    # --- noise bookkeeping -------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Noise offset where the next run starts (uint64); save it to resume a chain exactly."""
        return self._offset

    @offset.setter
    def offset(self, value) -> None:
        _as_int64("offset", value)
        self._offset = int(value)
        if getattr(self, "_rng_state", None) is not None:
            self._rng_state[:, 1].fill_(_as_int64("offset", self._offset))

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling so far (first calls of each compiled block shape; 0 uncompiled)."""
        return 0.0 if self._runner is None else self._runner.compile_seconds

    @property
    def compile_failed(self) -> str | None:
        """Why compile=True fell back to the uncompiled loop (None: it did not)."""
        return None if self._runner is None else self._runner.failed

    @property
    def accept_seed(self) -> int:
        """Seed of MALA's accept-test stream (seed XOR ACCEPT_SEED_XOR)."""
        return self.seed ^ ACCEPT_SEED_XOR

    def state_dict(self) -> dict:
        return {"seed": self.seed, "offset": self._offset}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state seed={state['seed']} differs from this chain's seed={self.seed}")
        self.offset = int(state["offset"])

    def reset_graph(self) -> None:
        """Forget a captured CUDA graph (the next run captures again)."""
        self._graph = None
        self._graph_key = None
        self._rng_state = None

    # --- energy and gradient -----------------------------------------------------------

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _energy_and_grad(self, x):
        """Per-chain energies [B] and dE/dx; a graph through them only when differentiable."""
        with torch.enable_grad():
            if self.differentiable:
                leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            else:
                leaf = x.detach().requires_grad_(True)
            energy = self._energy(leaf)
            if not isinstance(energy, torch.Tensor):
                raise TypeError(f"the energy must return a tensor of per-chain energies, shape [{x.shape[0]}]; "
                                f"got {type(energy).__name__}")
            if energy.shape != (x.shape[0],):
                raise ValueError(f"the energy must return one value per chain, shape [{x.shape[0]}], "
                                 f"got shape {tuple(energy.shape)}")
            if not energy.requires_grad:
                raise ValueError(_NOT_DIFFERENTIABLE)
            (grad,) = torch.autograd.grad(energy.sum(), leaf, create_graph=self.differentiable)
        if not self.differentiable:
            energy = energy.detach()
        return energy, grad

    def _clip(self, grad):
        """(clipped grad, per-chain norms before clipping); norms are None when unused."""
        if self.grad_clip is None and not (self.track_stats or self.mala):
            return grad, None
        # 16-bit gradients are summed in float32 (the norm of a large chain would overflow float16)
        wide = torch.float64 if grad.dtype == torch.float64 else torch.float32
        norms = torch.linalg.vector_norm(_per_chain(grad), dim=1, dtype=wide if grad.dtype != wide else None)
        if self.grad_clip is not None:
            scale = (self.grad_clip / norms.clamp_min(1e-30)).clamp(max=1.0)
            grad = grad * _broadcast(scale, grad).to(grad.dtype)
        return grad, norms

    def _with_prior(self, energy, x):
        if self.prior_weight == 0.0:
            return energy
        return energy + 0.5 * self.prior_weight * _per_chain(x).pow(2).sum(1).to(energy.dtype)

    def _diagnostics(self, energy, norms, accepted, bad=None):
        """This step's per-chain record (energy incl. prior, grad norm, MALA's accept decisions and
        non-finite proposals); nothing is reduced here (ChainStats.table does it once). Called only
        with track_stats, so untracked runs skip even the prior term's energy."""
        if self.differentiable:   # otherwise neither carries a graph (cheaper than detaching)
            energy, norms = energy.detach(), norms.detach()
        return energy, norms, accepted, bad

    # --- one step ----------------------------------------------------------------------

    def _op_kwargs(self, k, offset, rng_row):
        return dict(step_size=self.step_sizes[k], noise_scale=self.noise_scales[k], seed=self.seed,
                    offset=offset, prior_weight=self.prior_weight, rng_state=rng_row)

    def _ula_step(self, x, k, offset, rng_state, stat_rows=None):
        """One ULA step; returns (x, this step's record or None).

        stat_rows: ([B] energy row, [B] grad-norm row) of the run's stat buffers (_stat_buffers),
        written in place instead of returning a record: the update op itself computes the grad
        norms (no reduction op of their own), and the run keeps two buffers instead of
        2 * n_steps small tensors, whose lifetimes would fragment the CPU heap."""
        energy, grad = self._energy_and_grad(x)
        norm_row = None
        if stat_rows is None:
            grad, norms = self._clip(grad)
            diag = self._diagnostics(self._with_prior(energy, x), norms, None) if self.track_stats else None
        else:
            energy_row, norm_row = stat_rows
            energy_row.copy_(self._with_prior(energy, x))
            diag = None
        rng_row = None if rng_state is None else rng_state[0]
        if self.differentiable:
            x = langevin_step(x, grad, clamp=self.clamp, **self._op_kwargs(k, offset, rng_row))
        else:
            langevin_step_(x, grad, step_size=self.step_sizes[k], noise_scale=self.noise_scales[k],
                           seed=self.seed, offset=offset, prior_weight=self.prior_weight, clamp=self.clamp,
                           rng_state=rng_row, grad_norm_out=norm_row)
        return x, diag

    def _stat_buffers(self, x):
        """[n_steps, B] energy and grad-norm buffers of a plain ULA run with stats, or None where
        steps return records instead (MALA, grad clip, autograd through the chain)."""
        if not self.track_stats or self.mala or self.differentiable or self.grad_clip is not None:
            return None
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        return tuple(torch.empty(self.n_steps, x.shape[0], dtype=wide, device=x.device) for _ in range(2))

    def _mala_current(self, x):
        """(total energy, clipped grad, norms) at x: what a MALA step carries between steps."""
        energy, grad = self._energy_and_grad(x)
        grad, norms = self._clip(grad)
        return self._with_prior(energy, x), grad, norms

    def _mala_step(self, x, k, offset, rng_state, current):
        # The proposal is the unclamped op (a proper Gaussian); the clamp box becomes the
        # target's support instead: proposals outside it are rejected in _mala_accept.
        y = langevin_step(x, current[1], **self._op_kwargs(k, offset, None if rng_state is None else rng_state[0]))
        normals = philox_normal(x.shape[0], seed=self.accept_seed, offset=offset, device=x.device,
                                rng_state=None if rng_state is None else rng_state[1])
        return self._mala_accept(x, y, current, self.step_sizes[k], self.noise_scales[k], normals)

    def _mala_accept(self, x, y, current, a, s, normals):
        """MALA's accept test of proposal y from x with the accept stream's normals; returns
        (state, what the next step carries, this step's record). Shared with compiled blocks."""
        energy_x, grad_x, norms_x = current
        energy_y, grad_y, norms_y = self._mala_current(y)
        lam = self.prior_weight
        drift_x, drift_y = (grad_x + lam * x, grad_y + lam * y) if lam else (grad_x, grad_y)
        log_alpha = energy_x.float() - energy_y.float() + log_q_ratio(x, y, drift_x, drift_y, a, s).float()
        # NaN/inf energies make log_alpha NaN or -inf: the comparison rejects them.
        accept = torch.special.log_ndtr(normals) < log_alpha
        if self.clamp is not None:
            accept = accept & self._inside_box(y)
        x = torch.where(_broadcast(accept, x), y, x)
        current = (torch.where(accept, energy_y, energy_x), torch.where(_broadcast(accept, grad_x), grad_y, grad_x),
                   torch.where(accept, norms_y, norms_x))
        diag = None
        if self.track_stats:
            bad = ~(torch.isfinite(energy_y) & torch.isfinite(norms_y))
            diag = self._diagnostics(current[0], current[2], accept, bad)
        return x, current, diag

    def _inside_box(self, y):
        lo, hi = self.clamp
        inside = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        if lo is not None:
            inside = inside & (_per_chain(y) >= lo).all(1)
        if hi is not None:
            inside = inside & (_per_chain(y) <= hi).all(1)
        return inside

    def step(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        """Step k of the chain applied to x (noise at offset ``chain.offset + k * advance``).

        Returns the new state; x and the chain's offset are left unchanged. This is the unit
        that ``torch.compile(chain.step, fullgraph=True)`` compiles.
        """
        _check_state("x", x)
        if not 0 <= k < self.n_steps:
            raise ValueError(f"k={k} must be a step index in [0, n_steps={self.n_steps})")
        x = x if self.differentiable else x.detach().clone(memory_format=torch.contiguous_format)
        offset = (self._offset + k * noise_offset_advance(x.numel())) % _U64
        if self.mala:
            x, _, _ = self._mala_step(x, k, offset, None, self._mala_current(x))
        else:
            x, _ = self._ula_step(x, k, offset, None)
        return x

    # --- runs --------------------------------------------------------------------------

    def _loop(self, x, base_offset, rng_state, return_trajectory, thin, track_finite=False):
        """The K steps from state x; returns (x, trajectory or None, stats or None).

        With ``track_finite`` (only when an error names the failing step: the run is replayed
        from x0 with the same noise) it leaves in ``self._finite_rows`` the per-chain finiteness
        of the state before step 0 and after every step (n_steps + 1 bool device tensors [B]).
        """
        if self._runner is not None and self._runner.failed is None and not (return_trajectory or track_finite):
            out = self._runner.run(x, base_offset, rng_state)
            if out is not None:
                x, steps = out
                self._finite_rows = None
                return x, None, (ChainStats(steps, self.mala) if self.track_stats else None)
        advance = noise_offset_advance(x.numel())
        states = [x.clone()] if return_trajectory else None
        diags = []
        finite = [torch.isfinite(_per_chain(x)).all(1)] if track_finite else None
        current = self._mala_current(x) if self.mala else None
        buffers = self._stat_buffers(x)
        rows = None if buffers is None else list(zip(buffers[0].unbind(0), buffers[1].unbind(0)))
        for k in range(self.n_steps):
            offset = (base_offset + k * advance) % _U64
            if self.mala:
                x, current, diag = self._mala_step(x, k, offset, rng_state, current)
            else:
                x, diag = self._ula_step(x, k, offset, rng_state, None if rows is None else rows[k])
            if finite is not None:
                finite.append(torch.isfinite(_per_chain(x)).all(1))
            diags.append(diag)
            if return_trajectory and (k + 1) % thin == 0:
                states.append(x.clone())
        stats = ChainStats(diags, self.mala, per_chain=buffers) if self.track_stats else None
        self._finite_rows = finite
        return x, (torch.stack(states) if return_trajectory else None), stats

    def _start(self, x0):
        if self.differentiable:
            return x0
        return x0.detach().clone(memory_format=torch.contiguous_format)

    def _run(self, x0, return_trajectory, thin, name="x0"):
        _check_state(name, x0)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{type(self).__name__}.run needs autograd for dE/dx and cannot run under "
                               "torch.inference_mode(); run it outside (it uses no autograd graph beyond each step)")
        thin = _positive_int("thin", thin)
        base_offset = self._offset
        if self.capture_graph:
            x, traj, table = self._run_captured(x0, return_trajectory, thin, name)
        else:
            x, traj, table = self._loop(self._start(x0), self._offset, None, return_trajectory, thin)
            self._offset = (self._offset + self.n_steps * noise_offset_advance(x0.numel())) % _U64
        self.stats = table
        if self.on_nonfinite != "ignore":
            x = self._guard(x, traj, x0, base_offset)
        return (x, traj) if return_trajectory else x

    # --- divergence guard --------------------------------------------------------------

    def _reinit_rows(self, idx: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, base_offset: int):
        """Fresh states [len(idx), *x.shape[1:]] for the chains idx (on_nonfinite="reinit")."""
        raise NotImplementedError

    def _reinit_source(self) -> str:
        raise NotImplementedError

    def _guard(self, x, traj, x0, base_offset):
        """The end-of-run check of on_nonfinite: one host sync (the nonzero) when all is well."""
        self.last_nonfinite = torch.nonzero(_nonfinite_rows(x).cpu()).flatten()  # the one host sync
        if self.last_nonfinite.numel() == 0:
            return x
        idx = self.last_nonfinite.to(x.device)
        kind, batch = type(self).__name__, x.shape[0]
        if self.on_nonfinite == "reinit":
            fresh = self._reinit_rows(idx, x, x0, base_offset).to(dtype=x.dtype, device=x.device)
            if not self.differentiable:
                fresh = fresh.detach()
            x = x.index_put((idx,), fresh)   # out of place: autograd-safe with differentiable=True
            still = torch.nonzero(_nonfinite_rows(fresh)).flatten().cpu()
            if still.numel():
                bad = self.last_nonfinite[still]
                raise NonFiniteChainError(
                    f"{kind}.run: on_nonfinite='reinit' could not repair {bad.numel()} of {batch} chains "
                    f"{_listed(bad)}: their re-initialisation ({self._reinit_source()}) is non-finite too",
                    chains=bad, state=x, n_chains=batch, trajectory=traj)
            if self.stats is not None:
                self.stats.reinitialized = idx.numel()
            return x
        chains = self.last_nonfinite
        first = None
        if self.track_stats:   # replay the run (same noise) with per-step checks: no cost when all is well
            with torch.no_grad() if not self.differentiable else contextlib.nullcontext():
                self._loop(self._start(x0), base_offset, None, False, 1, track_finite=True)
            went_bad = ~torch.stack(self._finite_rows).cpu()[:, chains]   # [n_steps + 1, len(chains)]
            first = went_bad.to(torch.int64).argmax(0)
            self._finite_rows = None
        where = ""
        if first is not None:
            where = "; first non-finite after step " + _listed(first) + " (0 = already in the initial state)"
        raise NonFiniteChainError(
            f"{kind}.run: {chains.numel()} of {batch} chains went non-finite (NaN/inf in the state): chains "
            f"{_listed(chains)}{where}. The exception's .state holds the final state; pass "
            f"on_nonfinite='reinit' to restart such chains or 'ignore' to return them as they are",
            chains=chains, first_step=first, state=x, n_chains=batch, trajectory=traj)

    # --- CUDA graphs -------------------------------------------------------------------

    def _graph_extra_key(self):
        return ()

    def _run_captured(self, x0, return_trajectory, thin, name):
        if x0.device.type != "cuda":
            raise ValueError(f"capture_graph=True needs CUDA tensors, but {name} is on {x0.device}; "
                             "use capture_graph=False on this device")
        key = (tuple(x0.shape), x0.dtype, x0.device, return_trajectory, thin) + self._graph_extra_key()
        if self._graph is None or self._graph_key != key:
            self._capture(x0, key, return_trajectory, thin)
        self._static_x0.copy_(x0)
        self._graph.replay()
        self._offset = (self._offset + self.n_steps * noise_offset_advance(x0.numel())) % _U64
        x, traj, stats = self._static_out
        return (x.clone(), None if traj is None else traj.clone(),
                None if stats is None else ChainStats(None, self.mala, table=stats.table.clone()))

    def _capture(self, x0, key, return_trajectory, thin):
        self.reset_graph()
        advance = noise_offset_advance(x0.numel())
        self._static_x0 = x0.detach().clone(memory_format=torch.contiguous_format)
        rng_state = torch.tensor([[_as_int64("seed", self.seed), 0], [_as_int64("seed", self.accept_seed), 0]],
                                 dtype=torch.int64, device=x0.device)
        # Warm up on a side stream (lazy initialisation of autograd and kernels must not
        # happen during capture); its results and noise are discarded.
        side = torch.cuda.Stream(device=x0.device)
        side.wait_stream(torch.cuda.current_stream(x0.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._loop(self._static_x0.clone(), 0, rng_state, return_trajectory, thin)
        torch.cuda.current_stream(x0.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._loop(self._static_x0.clone(), 0, rng_state, return_trajectory, thin)
            if out[2] is not None:
                out[2].table   # reduced inside the graph: every replay refreshes it
            rng_state[:, 1] += self.n_steps * advance
        self._graph, self._graph_key, self._static_out = graph, key, out
        self._rng_state = rng_state
        self._rng_state[:, 1].fill_(_as_int64("offset", self._offset))


class DataChain(_LangevinChain):
    """Langevin sampler of exp(-energy(x)) on the fused op (ULA, or MALA with ``mala=True``).

    Args:
        energy: callable, x [B, ...] -> per-chain energies [B] (E = -log density + const).
        n_steps: steps per ``run``.
        step_size: drift coefficient a (plain Langevin with step delta: a = delta**2/2):
            a number, a sequence of n_steps numbers, or a schedule (lk.Linear, ...).
        noise_scale: noise standard deviation s, same forms (s = sqrt(2a) samples exp(-E);
            other ratios sample exp(-E/T), T = s**2 / (2a)).
        clamp: None or (lo, hi): every state is clamped (ULA); with MALA the box is the
            target's support and proposals leaving it are rejected.
        grad_clip: None or c > 0: each chain's gradient is scaled to norm <= c.
        mala: Metropolis-adjusted proposals q(y|x) = N(x - a G(x), s^2 I) with per-chain
            accept/reject on the device; rejected chains keep their state.
        seed, offset: the chain's noise stream (see the module docstring); ``chain.offset``
            advances by n_steps * ceil(numel/4) per run.
        capture_graph: capture the whole run in a CUDA graph once and replay it (CUDA only).
        differentiable: keep the autograd graph through the steps (out-of-place op,
            create_graph=True): the result is differentiable w.r.t. x0 and the energy's parameters.
        track_stats: record per-step diagnostics in ``chain.stats`` (a few tiny reductions).
        on_nonfinite: what ``run`` does with chains whose final state has a NaN/inf entry,
            checked once at the end of the run (one host sync; outside a captured graph):
            ``"raise"`` (default): raise :class:`NonFiniteChainError` with the chains' indices
            (``.chains``), the final state (``.state``) and, when ``track_stats``, the step after
            which each first went non-finite (``.first_step``); ``"reinit"``: replace those
            chains' final state by ``reinit_fn(n)`` (n fresh states [n, *x0.shape[1:]]) or, without
            reinit_fn, by their rows of x0, and count them in ``chain.stats.reinitialized``
            (NonFiniteChainError if the replacement is non-finite too); ``"ignore"``: no check.
            ``chain.last_nonfinite`` holds the indices found by the last check.
            With ``differentiable=True`` the replacement is out of place and differentiable (x0
            rows: identity); the gradient reaching x0 or the parameters through a replaced chain's
            discarded steps can still be NaN (its zero cotangent times a NaN Jacobian).
        reinit_fn: callable n -> n fresh states, used with ``on_nonfinite="reinit"`` only.
        compile: False, True, or a dict of ``torch.compile`` options: run the K steps as compiled
            blocks of ``compile_block`` unrolled steps (default up to 20; energy, gradient, update,
            MALA test, clamp, clip and stats in one graph each; same noise stream, results equal to
            float rounding). The first run of a shape compiles (``chain.compile_seconds``); later
            runs and optimizer steps on the energy's parameters reuse the graph. An energy that
            cannot be compiled gives a RuntimeWarning and the chain runs uncompiled
            (``chain.compile_failed`` says why). Runs with ``return_trajectory=True`` run uncompiled.
    """

    def __init__(self, energy: Callable[[torch.Tensor], torch.Tensor], *, n_steps, step_size, noise_scale,
                 clamp=None, grad_clip=None, mala=False, seed=0, offset=0, capture_graph=False,
                 differentiable=False, track_stats=True, on_nonfinite="raise",
                 reinit_fn: Callable[[int], torch.Tensor] | None = None, compile=False, compile_block=None):
        if not callable(energy):
            raise TypeError(f"energy must be callable (x -> per-chain energies [B]), got {type(energy).__name__}")
        if reinit_fn is not None and not callable(reinit_fn):
            raise TypeError(f"reinit_fn must be None or callable (n -> n fresh states), got {type(reinit_fn).__name__}")
        self.energy = energy
        super().__init__(n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, clamp=clamp,
                         grad_clip=grad_clip, mala=mala, seed=seed, offset=offset, capture_graph=capture_graph,
                         differentiable=differentiable, track_stats=track_stats, on_nonfinite=on_nonfinite,
                         compile=compile, compile_block=compile_block)
        if reinit_fn is not None and self.on_nonfinite != "reinit":
            raise ValueError(f"reinit_fn is used only with on_nonfinite='reinit', but on_nonfinite={on_nonfinite!r}")
        self.reinit_fn = reinit_fn

    def _energy(self, x):
        return self.energy(x)

    def _reinit_source(self):
        return "reinit_fn" if self.reinit_fn is not None else "their rows of x0; pass reinit_fn"

    def _reinit_rows(self, idx, x, x0, base_offset):
        if self.reinit_fn is None:
            return x0[idx.to(x0.device)]
        fresh = self.reinit_fn(int(idx.numel()))
        want = (int(idx.numel()), *x.shape[1:])
        if not isinstance(fresh, torch.Tensor) or tuple(fresh.shape) != want:
            got = tuple(fresh.shape) if isinstance(fresh, torch.Tensor) else type(fresh).__name__
            raise ValueError(f"reinit_fn({want[0]}) must return a tensor of shape {want}, got {got}")
        return fresh

    def run(self, x0: torch.Tensor, return_trajectory: bool = False, thin: int = 1):
        """Run n_steps steps from x0 (not modified); returns x, or (x, trajectory) where
        trajectory[j] is the state after j * thin steps (trajectory[0] = x0)."""
        return self._run(x0, return_trajectory, thin)


class LatentChain(_LangevinChain):
    """Langevin sampler of the generator posterior p(z | x) for x = g(z) + N(0, sigma^2 I), z ~ N(0, I).

    The energy is ||x - g(z)||^2 / (2 sigma^2) per chain (gradient by autograd through the
    generator); the prior's gradient z is fused into the op with prior_weight=1. Options as
    in :class:`DataChain` (no clamp, no reinit_fn): with ``on_nonfinite="reinit"`` a non-finite
    chain restarts from a draw of the N(0, I) prior, taken from the chain's own Philox stream
    ``lk.philox_normal(z0.numel(), seed=seed ^ REINIT_SEED_XOR, offset=O)`` at the run's start
    offset O (its row of that draw), so reruns from the same (seed, offset) are reproducible.
    """

    def __init__(self, generator: Callable[[torch.Tensor], torch.Tensor], *, sigma: float, n_steps, step_size,
                 noise_scale, grad_clip=None, mala=False, seed=0, offset=0, capture_graph=False,
                 differentiable=False, track_stats=True, on_nonfinite="raise", compile=False, compile_block=None):
        if not callable(generator):
            raise TypeError(f"generator must be callable (z -> x), got {type(generator).__name__}")
        sigma = _optional_positive("sigma", sigma)
        if sigma is None:
            raise ValueError("sigma=None: the observation noise sigma must be a number > 0")
        self.generator, self.sigma = generator, sigma
        self._observed = None
        super().__init__(n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, prior_weight=1.0,
                         grad_clip=grad_clip, mala=mala, seed=seed, offset=offset, capture_graph=capture_graph,
                         differentiable=differentiable, track_stats=track_stats, on_nonfinite=on_nonfinite,
                         compile=compile, compile_block=compile_block)

    @property
    def reinit_seed(self) -> int:
        """Key of the prior draws that restart non-finite chains (seed XOR REINIT_SEED_XOR)."""
        return self.seed ^ REINIT_SEED_XOR

    def _reinit_source(self):
        return "N(0, I) prior draws"

    def _reinit_rows(self, idx, z, z0, base_offset):
        prior = philox_normal(z.numel(), seed=self.reinit_seed, offset=base_offset, device=z.device)
        return prior.reshape(z.shape)[idx]

    def _energy(self, z):
        generated = self.generator(z)
        if not isinstance(generated, torch.Tensor) or generated.shape != self._observed.shape:
            got = tuple(generated.shape) if isinstance(generated, torch.Tensor) else type(generated).__name__
            raise ValueError(f"generator(z) returned shape {got} but the observations x have shape "
                             f"{tuple(self._observed.shape)}; they must match (broadcasting one against the "
                             "other would sample the wrong posterior)")
        residual = _per_chain(self._observed - generated)
        return residual.pow(2).sum(1) / (2.0 * self.sigma ** 2)

    def _graph_extra_key(self):
        return (tuple(self._observed.shape), self._observed.dtype)

    def _bind(self, z0, x):
        _check_state("x", x)
        if x.shape[0] != z0.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but z0 has {z0.shape[0]} chains; one observation per chain")
        if not self.capture_graph:
            self._observed = x if self.differentiable else x.detach()
        elif self._observed is None or self._observed.shape != x.shape or self._observed.dtype != x.dtype \
                or self._observed.device != x.device:
            self._observed = x.detach().clone()   # the captured graph reads this buffer
            self.reset_graph()
        else:
            self._observed.copy_(x)

    def step(self, z: torch.Tensor, k: int = 0, x: torch.Tensor | None = None) -> torch.Tensor:
        """Step k on z for observations x (the last bound ones if None); see DataChain.step."""
        if x is not None:
            self._bind(z, x)
        if self._observed is None:
            raise ValueError("no observations bound: pass x")
        return super().step(z, k)

    def run(self, z0: torch.Tensor, x: torch.Tensor, return_trajectory: bool = False, thin: int = 1):
        """Run n_steps steps from z0 towards p(z | x); returns z (or (z, trajectory))."""
        _check_state("z0", z0)
        self._bind(z0, x)
        return self._run(z0, return_trajectory, thin, name="z0")


def sample(energy: Callable[[torch.Tensor], torch.Tensor], n: int, shape, *, n_steps: int, step_size, noise_scale,
           init: str = "normal", seed: int = 0, device="cpu", dtype=torch.float32, **chain_options) -> torch.Tensor:
    """n samples of exp(-energy) by a short-run chain from noise: one call, no chain object.

    ``shape`` is one sample's shape (the state is [n, *shape]); ``init`` is "normal" (N(0, I))
    or "uniform" (U(-1, 1)), drawn from the package's Philox stream keyed ``seed ^ REINIT_SEED_XOR``
    so that a call is reproducible from ``seed`` alone. Other keyword arguments go to
    :class:`DataChain` (clamp, mala, grad_clip, on_nonfinite, ...). For persistent chains, or
    to read ``chain.stats``, build a DataChain instead.
    """
    n = _positive_int("n", n)
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    if init not in ("normal", "uniform"):
        raise ValueError(f"init={init!r} is not allowed; allowed values: 'normal', 'uniform'")
    numel = n * math.prod(shape)
    draws = philox_normal(numel, seed=int(seed) ^ REINIT_SEED_XOR, offset=0, device=device).reshape(n, *shape)
    if init == "uniform":   # the normal CDF maps N(0, 1) draws to U(0, 1)
        draws = 2.0 * torch.special.ndtr(draws) - 1.0
    chain = DataChain(energy, n_steps=n_steps, step_size=step_size, noise_scale=noise_scale, seed=seed,
                      **chain_options)
    return chain.run(draws.to(dtype))
