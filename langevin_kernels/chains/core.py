"""The sampler core shared by DataChain and LatentChain: settings, noise bookkeeping, the
energy gradient, the ULA step and the K-step loop. MALA (mala.py), the divergence guard
(guard.py) and CUDA-graph capture (graphs.py) are mixed in."""
from __future__ import annotations

import math
import types

import torch

from ..adaptation import DualAveraging
from ..compiled import DEFAULT_MAX_BLOCK, CompiledRunner, compile_options
from ..ops import _as_int64, langevin_step, langevin_step_, noise_offset_advance, philox_normal
from ..schedules import resolve_schedule
from .checks import (_broadcast, _check_state, _non_negative_int, _optional_positive, _per_chain, _positive_int,
                     check_clamp)
from .graphs import GraphCapture
from .guard import DivergenceGuard, _check_on_nonfinite
from .mala import ACCEPT_SEED_XOR, MalaSteps
from .stats import ChainStats

try:   # what torch.autograd.grad calls once it has checked and normalised its arguments
    from torch.autograd.graph import _engine_run_backward
except ImportError:   # older torch
    _engine_run_backward = None

_U64 = 1 << 64
_NOT_DIFFERENTIABLE = ("the energy must be a differentiable function of x; it returned a tensor that does not require grad "
                       "(detached, computed in numpy, independent of x, or under torch.no_grad?)")
# Settings fixed at construction: a chain precomputes its per-step schedule from them, so a
# later assignment would be ignored or break a run; build a new chain instead.
_FROZEN = frozenset(("n_steps", "step_size", "step_sizes", "noise_scale", "noise_scales", "prior_weight", "clamp",
                     "grad_clip", "mala", "seed", "capture_graph", "differentiable", "track_stats", "on_nonfinite",
                     "sigma", "compile", "compile_block", "adapt_step_size", "warmup", "target_accept", "friction"))


def _gradient(energy: torch.Tensor, leaf: torch.Tensor, ones: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d(sum of energies)/d(leaf), with the ones as grad_outputs (no sum op, no ones_like per step).

    Plain tensors in eager mode go straight to autograd's engine call: torch.autograd.grad's
    argument handling costs about as much as the rest of a small chain's backward (measured
    139 vs 115 us for energy + gradient of a 64 x 2 double well on the 2-core CI machine).
    Tensor subclasses, tracing and older torch take torch.autograd.grad itself."""
    if (_engine_run_backward is None or type(energy) is not torch.Tensor or type(leaf) is not torch.Tensor
            or torch.compiler.is_compiling()):
        return torch.autograd.grad(energy, leaf, grad_outputs=ones, create_graph=create_graph)[0]
    return _engine_run_backward((energy,), (ones,), create_graph, create_graph, (leaf,), False,
                                accumulate_grad=False)[0]


#: torch >= 2.12: dynamo traces x.detach().requires_grad_() (with trace_autograd_ops); 2.11 rejects it.
DYNAMO_TRACES_REQUIRES_GRAD = torch.__version__ >= (2, 12)


class _LangevinChain(MalaSteps, DivergenceGuard, GraphCapture):
    """Shared machinery of DataChain and LatentChain: steps, MALA, stats, graphs, noise."""

    _compiled_runner = CompiledRunner   # what compile=True runs (KineticChain: its own blocks)
    # How a traced step (compiled blocks, or a user's torch.compile(chain.step)) differentiates
    # the energy: "autograd" (torch.autograd.grad on a fresh leaf, which dynamo traces from torch
    # 2.12) or "func" (torch.func.grad: 2.11's dynamo rejects requires_grad_, and traces this,
    # but it refuses energies that write their buffers, such as BatchNorm in train mode). The
    # compiled runner also switches a chain to "func" when "autograd" fails to compile.
    _traced_gradient = "autograd" if DYNAMO_TRACES_REQUIRES_GRAD else "func"

    def __init__(self, *, n_steps, step_size, noise_scale, prior_weight=0.0, clamp=None, grad_clip=None,
                 mala=False, seed=0, offset=0, capture_graph=False, differentiable=False, track_stats=True,
                 on_nonfinite="raise", compile=False, compile_block=None, adapt_step_size=False, warmup=0,
                 target_accept=0.574):
        self.n_steps = _positive_int("n_steps", n_steps)
        self.on_nonfinite = _check_on_nonfinite(on_nonfinite)
        self.step_sizes = resolve_schedule("step_size", step_size, self.n_steps)
        self.noise_scales = resolve_schedule("noise_scale", noise_scale, self.n_steps)
        self.prior_weight = float(prior_weight)
        self.clamp = check_clamp(clamp)
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
        self._set_adaptation(adapt_step_size, warmup, target_accept)
        self._runner = (self._compiled_runner(self, options, self.compile_block, scan=compile_block is None)
                        if self.compile else None)
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

    def _energy_owner(self) -> tuple:
        """(object, function or None): whose computation the chain samples, for sharing compiled
        blocks per object. A bound method is a new object at every access (``target.energy``),
        so it is named by its instance and function."""
        owner = next((self.__dict__[n] for n in ("energy", "generator") if self.__dict__.get(n) is not None), self)
        if isinstance(owner, types.MethodType):
            return owner.__self__, owner.__func__
        return owner, None

    def _compile_signature(self) -> tuple:
        """The settings a compiled block depends on beyond its inputs (the seed, the step count and
        the schedules are inputs or block lengths, so they are left out)."""
        inputs = {"seed", "n_steps", "step_size", "step_sizes", "noise_scale", "noise_scales"}
        return (type(self),) + tuple((name, repr(self.__dict__.get(name))) for name in sorted(_FROZEN - inputs))

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
        state = {"seed": self.seed, "offset": self._offset}
        if self.adapt_step_size and self.step_sizes_per_chain is not None:
            state["step_sizes_per_chain"] = self.step_sizes_per_chain.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state seed={state['seed']} differs from this chain's seed={self.seed}")
        self.offset = int(state["offset"])
        if "step_sizes_per_chain" in state:
            self.step_sizes_per_chain = state["step_sizes_per_chain"]

    # --- per-chain step sizes (adapted MALA) -------------------------------------------

    def _set_adaptation(self, adapt_step_size, warmup, target_accept):
        self.adapt_step_size = bool(adapt_step_size)
        self.warmup = _non_negative_int("warmup", warmup)
        if not (isinstance(target_accept, (int, float)) and 0.0 < target_accept < 1.0):
            raise ValueError(f"target_accept={target_accept!r} must be a number in (0, 1)")
        self.target_accept = float(target_accept)
        self._step_sizes_per_chain = None
        self._chain_coefficients = None
        if not self.adapt_step_size:
            return
        # Each refusal below names a path that would sample with the wrong kernel, not a limitation of the math.
        if not self.mala:
            raise ValueError("adapt_step_size=True tunes MALA's acceptance rate and needs mala=True")
        if len(set(self.step_sizes)) > 1 or len(set(self.noise_scales)) > 1:
            raise ValueError("adapt_step_size=True needs a constant step_size and noise_scale (numbers, not "
                             "schedules): they set the initial step and the temperature s**2 / (2 a)")
        for flag in ("capture_graph", "differentiable"):
            if getattr(self, flag):
                raise NotImplementedError(f"adapt_step_size=True is not implemented with {flag}=True (warm-up and "
                                          f"per-chain steps run eagerly or, with compile=True, in compiled blocks); "
                                          f"use {flag}=False")
        self._temperature = self.noise_scales[0] ** 2 / (2.0 * self.step_sizes[0])

    @property
    def step_sizes_per_chain(self) -> torch.Tensor | None:
        """The frozen per-chain step sizes a_b ([B], float64) of an adapted chain: None until a run's
        warm-up tunes them. Assign a saved tensor (or load_state_dict) to sample with them and skip warm-up."""
        return self._step_sizes_per_chain

    @step_sizes_per_chain.setter
    def step_sizes_per_chain(self, value) -> None:
        if not self.adapt_step_size:
            raise ValueError("step_sizes_per_chain is used only by chains built with adapt_step_size=True")
        if value is not None:
            value = torch.as_tensor(value, dtype=torch.float64)
            if value.dim() != 1 or not bool((torch.isfinite(value) & (value > 0)).all()):
                raise ValueError(f"step_sizes_per_chain must be a [B] tensor of finite values > 0, got shape "
                                 f"{tuple(value.shape)}")
        self._keep_step_sizes_per_chain(value)

    def _keep_step_sizes_per_chain(self, value) -> None:
        """Store checked (or adapter-made, positive by construction) per-chain steps: no device read."""
        self._step_sizes_per_chain = value
        self._chain_coefficients = None

    @property
    def noise_scales_per_chain(self) -> torch.Tensor | None:
        """s_b = sqrt(2 T a_b), T = noise_scale**2 / (2 step_size): the temperature the chain was built with."""
        a = self._step_sizes_per_chain
        return None if a is None else torch.sqrt(2.0 * self._temperature * a)

    def _coefficients_for(self, x):
        """(a, s) per chain in x's math type on x's device, cached: no conversion per step."""
        math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cached = self._chain_coefficients
        if cached is None or cached[0].device != x.device or cached[0].dtype != math_dtype:
            a = self._step_sizes_per_chain
            if a.shape[0] != x.shape[0]:
                raise ValueError(f"step_sizes_per_chain has {a.shape[0]} entries but the state has {x.shape[0]} "
                                 "chains; one step size per chain")
            cached = tuple(t.to(device=x.device, dtype=math_dtype) for t in (a, self.noise_scales_per_chain))
            self._chain_coefficients = cached
        return cached

    def _warm_up(self, x, base_offset):
        """`warmup` MALA steps that tune each chain's step by dual averaging toward target_accept,
        all on the device (no host read per step); then the averaged steps are frozen.
        Eager also with compile=True: it runs once per chain, and compiling it would cost more
        than it saves (docs/chains.md, "Adapted per-chain MALA in DataChain")."""
        math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        # the number form: no device read to validate a value the chain already checked on the host
        adapter = DualAveraging(float(self.step_sizes[0]), target_accept=self.target_accept,
                                n_chains=x.shape[0], device=x.device)
        advance = noise_offset_advance(x.numel())
        current = self._mala_current(x)
        scale = math.sqrt(2.0 * self._temperature)
        for j in range(self.warmup):
            offset = (base_offset + j * advance) % _U64
            a = adapter.step_size.to(math_dtype)
            s = scale * a.sqrt()
            y = langevin_step(x, current[1], step_size=a, noise_scale=s, seed=self.seed, offset=offset,
                              prior_weight=self.prior_weight)
            normals = philox_normal(x.shape[0], seed=self.accept_seed, offset=offset, device=x.device)
            x, current, _ = self._mala_accept(x, y, current, a, s, normals, adaptation=adapter)
        self._keep_step_sizes_per_chain(adapter.final_step_size.detach())   # exp(finite): > 0, no check
        return x


    # --- energy and gradient -----------------------------------------------------------

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _energy_and_grad(self, x):
        """Per-chain energies [B] and dE/dx; a graph through them only when differentiable."""
        if not torch.is_grad_enabled():   # e.g. a run under torch.no_grad(): dE/dx still needs autograd
            with torch.enable_grad():
                return self._energy_and_grad(x)
        if self._traced_gradient == "func" and not self.differentiable and torch.compiler.is_compiling():
            return self._energy_and_grad_by_func(x)
        if self.differentiable:
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
        else:
            leaf = x.detach().requires_grad_(True)
        energy = self._checked_energy(self._energy(leaf), x)
        if not energy.requires_grad:
            raise ValueError(_NOT_DIFFERENTIABLE)
        grad = _gradient(energy, leaf, self._ones_like(energy), self.differentiable)
        if not self.differentiable:
            energy = energy.detach()
        return energy, grad

    @staticmethod
    def _checked_energy(energy, x):
        """The energy's output, refused unless it is one value per chain of x."""
        if not isinstance(energy, torch.Tensor):
            raise TypeError(f"the energy must return a tensor of per-chain energies, shape [{x.shape[0]}]; "
                            f"got {type(energy).__name__}")
        if energy.shape != (x.shape[0],):
            raise ValueError(f"the energy must return one value per chain, shape [{x.shape[0]}], "
                             f"got shape {tuple(energy.shape)}")
        return energy

    def _energy_and_grad_by_func(self, x):
        """_energy_and_grad as torch.func.grad of the summed energies (chains are independent, so
        the sum's gradient is each chain's own), for tracing without requires_grad_."""
        def total(z):
            energy = self._checked_energy(self._energy(z), x)
            return energy.sum(), energy
        grad, energy = torch.func.grad(total, has_aux=True)(x)
        return energy.detach(), grad   # as the autograd form: no graph through the parameters kept

    def _ones_like(self, energy):
        """A cached ones tensor shaped like the energies (a fresh one while torch.compile traces)."""
        if torch.compiler.is_compiling():
            return torch.ones_like(energy)
        ones = self.__dict__.get("_ones")
        if ones is None or ones.shape != energy.shape or ones.dtype != energy.dtype or ones.device != energy.device:
            ones = self._ones = torch.ones_like(energy, memory_format=torch.contiguous_format)
        return ones

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

    def _op_kwargs(self, k, offset, rng_row, x=None):
        a, s = self.step_sizes[k], self.noise_scales[k]
        if self._step_sizes_per_chain is not None and x is not None:
            a, s = self._coefficients_for(x)
        return dict(step_size=a, noise_scale=s, seed=self.seed, offset=offset, prior_weight=self.prior_weight,
                    rng_state=rng_row)

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
                x, buffers = out
                self._finite_rows = None
                return x, None, (ChainStats(None, self.mala, per_chain=buffers) if self.track_stats else None)
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
        if self.adapt_step_size and self._step_sizes_per_chain is None and self.warmup:
            # The kept run starts where warm-up ended: the guard's replay and reinit see that state as x0.
            x0 = self._warm_up(self._start(x0), self._offset)
            self._offset = (self._offset + self.warmup * noise_offset_advance(x0.numel())) % _U64
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
