"""compile=True for DataChain / LatentChain / KineticChain: K steps as a few compiled calls.

What a chain costs per step at the sizes EBM users run is mostly host work: the energy's
forward and backward as separate eager ops, the op call, Python. torch.compile removes it
only if many steps share one compiled call. Two forms do that:

- scanned (CPU states, plain ULA, no ``compile_block``): one graph loops over the steps of a
  noise draw with torch's scan operator, so the step is traced and compiled once and a short run
  is one call (the loop runs in inductor's C++ wrapper);
- unrolled blocks (MALA, KineticChain, CUDA states, an explicit ``compile_block``, and energies
  the scan cannot trace): the run is cut into blocks of S steps (``compile_block``, default up
  to 20), each one graph.

Either graph holds energy + gradient + update (+ MALA's accept test, clamp, grad clip and
statistics), which inductor fuses. The update is written as tensor math inside the graph, so it
fuses with the gradient's last kernel; its noise is the package's Philox stream, drawn outside
the graph by one ``philox_normal`` call for up to NOISE_DRAW_NUMBERS normals (a short run's
whole noise; exactly the normals the uncompiled chain draws, step by step), so compiled and
uncompiled runs agree to float rounding. A run's only Python work is per draw or block (a warm
graph is called without torch._dynamo.config.patch, which costs more than a small block's
kernel). Offsets, step sizes and noise are tensors, so neither a new offset, a schedule, adapted
MALA's per-chain steps ([S, B] instead of [S]; its warm-up runs eagerly), nor an optimizer step
on the energy's parameters recompiles; a new state shape, dtype or length does (once each).
"""
from __future__ import annotations

import logging
import time
import types
import warnings
import weakref

import torch

from .chains.checks import _broadcast
from .ops import noise_offset_advance, philox_normal

try:   # torch's loop operator: a scanned step is traced and compiled once, not unrolled
    from torch._higher_order_ops.scan import scan as scan_op
except ImportError:   # older torch: unrolled blocks only
    scan_op = None

log = logging.getLogger("langevin_kernels")
DEFAULT_MAX_BLOCK = 20
# Normals drawn per philox_normal call (16 MB of float32): whole short runs in one call, and at
# least one block per call for large states.
NOISE_DRAW_NUMBERS = 1 << 22
# Dynamo settings while a block is traced: autograd.grad inside the graph, and a recompile
# limit that raises (then the chain warns and runs uncompiled) instead of silently running
# the block's Python step by step.
# (An older torch without a setting gets the rest; without trace_autograd_ops tracing fails, and
# the chain warns and runs uncompiled.)
TRACING = {name: True for name in ("trace_autograd_ops", "fail_on_recompile_limit_hit")
           if hasattr(torch._dynamo.config, name)}
# Inductor options per device type, beneath the user's own (a compile dict's "options" entry wins;
# none are added with a "mode", which torch.compile takes instead of options, or another
# backend). On the CPU the C++ wrapper does a call's host work (its intermediate buffers and
# record views, a network energy's matrix-product calls) in C++ instead of Python: 64 x 2
# double well 4.8 -> 3.9 us/step, 256 x 2 through a 2-128-128-128-1 MLP 443 -> 318 us/step
# (20-step blocks, 2 threads), the same cold compile time (20 s, 26-29 s). CUDA keeps inductor's
# Python wrapper: not yet measured there, and a captured run replays no host work at all.
DEVICE_OPTIONS = {"cpu": {"cpp_wrapper": True}}


def block_length(n_steps: int, max_block: int) -> int:
    """Steps per compiled block: a divisor of n_steps near max_block when there is one (one graph
    for the whole run), else max_block (a second graph compiles for the remainder)."""
    if n_steps <= max_block:
        return n_steps
    for s in range(max_block, max(max_block // 2, 1) - 1, -1):
        if n_steps % s == 0:
            return s
    return max_block


def compile_options(value) -> dict | None:
    """compile=False/True/dict -> None or torch.compile keyword arguments (fullgraph forced;
    static shapes unless the dict says otherwise: a chain compiles one graph per state shape,
    and inductor's code for static shapes is the faster)."""
    if value is False or value is None:
        return None
    if value is True:
        return {"fullgraph": True, "dynamic": False}
    if isinstance(value, dict):
        return {"dynamic": False, **value, "fullgraph": True}
    raise TypeError(f"compile must be True, False or a dict of torch.compile options, got {value!r}")


# Copies of the block functions' code, per energy object and configuration. Dynamo keeps its
# compiled graphs, and a limit of 8 per function, per code object: with one code object for every
# chain, a process that compiled 8 chain variants (energies, options, shapes, block lengths) ran
# every further chain's blocks uncompiled, said only in torch's log. Chains of one energy and one
# configuration (a trainer's evaluation chains, built afresh each time) share a copy and so its
# graphs; other chains get their own. A copy that still reaches the limit raises (TRACING), and
# the chain warns and runs uncompiled.
_BLOCK_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def device_compile_options(options: dict, device_type: str) -> dict:
    """torch.compile keyword arguments for blocks on one device type: the chain's options over
    DEVICE_OPTIONS (see there)."""
    defaults = DEVICE_OPTIONS.get(device_type)
    if not defaults or "mode" in options or options.get("backend", "inductor") != "inductor":
        return options
    return {**options, "options": {**defaults, **options.get("options", {})}}


def concatenate_records(records: list) -> tuple:
    """The per-piece (block or scan) [n, B] records of a run as [n_steps, B] buffers; a run of one
    piece (a short scanned run) keeps its own, uncopied."""
    return tuple(None if part[0] is None else part[0] if len(part) == 1 else torch.cat(part)
                 for part in zip(*records))


def _shared_block_function(runner, kind, device_type):
    """The copy of the runner's graph function (kind: "block" or "scan") for its energy object,
    configuration and device type."""
    chain = runner.chain
    owner, method = chain._energy_owner()
    key = (type(runner), kind, method, chain._compile_signature(), repr(sorted(runner.options.items())), device_type)
    function = getattr(type(runner), "_" + kind)
    try:
        copies = _BLOCK_COPIES.setdefault(owner, {})
    except TypeError:   # an energy object without weak references: a copy of its own
        copies = {}
    if key not in copies:
        copies[key] = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                                         function.__defaults__, function.__closure__)
    return copies[key]


class CompiledRunner:
    """Runs a chain's K steps through compiled graphs (owned by the chain; see module docstring)."""

    NOISE_ARG = 1   # position of the [S, ...] noise among the graph functions' arguments
    SCANS = True    # whether _scan applies (KineticRunner: blocks only)

    def __init__(self, chain, options: dict, max_block: int, scan: bool = False):
        self.chain = chain
        self.max_block = max_block
        self.options = options
        self.compiled: dict = {}            # (kind, device type) -> torch.compile of the shared function
        self.failed: str | None = None      # why compilation failed (the chain then runs uncompiled)
        # why the scanned form is not used (None: it is, on CPU states); then unrolled blocks run
        self.scan_failed: str | None = None
        if not (scan and self.SCANS):
            self.scan_failed = "unrolled blocks were asked for (compile_block)"
        elif chain.mala:   # 64 x 2 double well: 23 us/step scanned against 11 as 20-step blocks
            self.scan_failed = "MALA runs as unrolled blocks"
        elif scan_op is None:
            self.scan_failed = "this torch has no scan operator"
        self.compile_seconds = 0.0
        self._seen: set = set()
        self._plans: dict = {}
        self._rows: dict = {}

    def _compiled(self, kind: str, device_type: str):
        """torch.compile of _block or _scan (kind) for one device type, bound to this runner, on a
        code object shared only with runners of the same energy, configuration and device type
        (_shared_block_function; a code object's graphs belong to one set of compile options)."""
        compiled = self.compiled.get((kind, device_type))
        if compiled is None:
            function = _shared_block_function(self, kind, device_type)
            compiled = self.compiled[kind, device_type] = torch.compile(
                types.MethodType(function, self), **device_compile_options(self.options, device_type))
            compiled.shared_function = function
        return compiled

    # --- the graphs --------------------------------------------------------------------

    def _step(self, x, current, a, s, noise, accept_normal, by_func=False):
        """One step inside a graph: (x, what MALA carries or None, the step's record or None).
        by_func: the ULA gradient by torch.func.grad whatever the chain's traced form (a scan body)."""
        chain = self.chain
        if chain.mala:
            return self._mala(x, current, a, s, noise, accept_normal)
        energy, grad = chain._energy_and_grad_by_func(x) if by_func else chain._energy_and_grad(x)
        grad, norms = chain._clip(grad)
        record = chain._diagnostics(chain._with_prior(energy, x), norms, None) if chain.track_stats else None
        return self._update(x, grad, a, s, noise, chain.clamp), None, record

    def _block(self, x, noise, accept_normals, step_sizes, noise_scales):
        """len(noise) steps from x, unrolled, with step_sizes / noise_scales [S] (shared) or [S, B]
        (per chain); returns x and, with stats, the [S, B] per-chain records
        (energy, grad norm, and for MALA accept decisions and bad proposals; None where unused).

        (Writing the records into rows of caller-provided buffers instead was tried: the
        functionalized row writes made inductor's kernel recompute, 100x slower.)"""
        records = [] if self.chain.track_stats else None
        current = self.chain._mala_current(x) if self.chain.mala else None
        for j in range(noise.shape[0]):
            x, current, record = self._step(x, current, step_sizes[j], noise_scales[j], noise[j],
                                             None if accept_normals is None else accept_normals[j])
            if records is not None:
                records.append(record)
        if records is None:
            return x, None
        return x, [torch.stack(part) if part[0] is not None else None for part in zip(*records)]

    def _scan(self, x, noise, accept_normals, step_sizes, noise_scales):
        """The ULA steps of _block as one loop in the graph (torch's scan operator): the step is
        traced and compiled once, so neither the compile time nor the code grows with the step
        count, and one call runs a whole noise draw. The gradient is torch.func.grad's: the
        operator's body cannot hold autograd.grad. Same arguments and results as _block
        (accept_normals is unused: MALA runs as blocks, measured faster)."""
        track_stats = self.chain.track_stats

        def body(x, inputs):
            noise, a, s = inputs
            x, _, record = self._step(x, None, a, s, noise, None, by_func=True)
            # without records a zero per step: inductor's lowering of a scan with no per-step outputs fails
            return x, ((record[0], record[1]) if track_stats else (x.new_zeros(()),))

        x, records = scan_op(body, x, (noise, step_sizes, noise_scales))
        return x, ([records[0], records[1], None, None] if track_stats else None)

    def _update(self, x, grad, a, s, noise, clamp):
        """The op's formula in its math dtype (float32, float64 for float64 states)."""
        math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if a.dim():   # adapted MALA's per-chain [B] (a_b, s_b), over each chain's elements
            a, s = _broadcast(a, x), _broadcast(s, x)
        xm = x.to(math_dtype)
        y = xm - a.to(math_dtype) * (grad.to(math_dtype) + self.chain.prior_weight * xm) + s.to(math_dtype) * noise
        if clamp is not None:
            y = y.clamp(min=clamp[0], max=clamp[1])
        return y.to(x.dtype)

    def _mala(self, x, current, a, s, noise, accept_normal):
        y = self._update(x, current[1], a, s, noise, None)   # unclamped proposal, as in the uncompiled step
        return self.chain._mala_accept(x, y, current, a, s, accept_normal)

    # --- the run -----------------------------------------------------------------------

    def _plan(self, x):
        """Per (state shape, dtype, device): the blocks [(first step, length)], the noise draws
        [(first step, length)] (each covers whole blocks, and is what one scan call runs), and
        their step-size and noise-scale tensors. Built once: a run then does no Python work per
        step, only per block or draw."""
        key = (tuple(x.shape), x.dtype, x.device)
        plan = self._plans.get(key)
        if plan is None:
            chain = self.chain
            n_steps, S = chain.n_steps, block_length(chain.n_steps, self.max_block)
            math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            a_all = torch.tensor(chain.step_sizes, dtype=math_dtype, device=x.device)
            s_all = torch.tensor(chain.noise_scales, dtype=math_dtype, device=x.device)
            blocks = [(k0, min(S, n_steps - k0)) for k0 in range(0, n_steps, S)]
            row = 4 * noise_offset_advance(x.numel())      # normals per step in the stream
            per_draw = max(1, NOISE_DRAW_NUMBERS // (row * S))
            draws = [(blocks[b][0], sum(n for _, n in blocks[b:b + per_draw])) for b in range(0, len(blocks), per_draw)]
            plan = self._plans[key] = types.SimpleNamespace(
                blocks=blocks, draws=draws, per_draw=per_draw,
                block_schedule=[(a_all[k0:k0 + n], s_all[k0:k0 + n]) for k0, n in blocks],
                draw_schedule=[(a_all[k0:k0 + n], s_all[k0:k0 + n]) for k0, n in draws])
        return plan

    def _per_chain_schedule(self, x, pieces):
        """The frozen per-chain (a_b, s_b) of an adapted MALA chain as [n, B] rows per piece (blocks
        or draws), or None (the shared schedule). Rebuilt when the chain's per-chain values change:
        they are graph inputs, so new values (a warm-up, an assignment, load_state_dict) never recompile."""
        if self.chain._step_sizes_per_chain is None:
            return None
        coefficients = self.chain._coefficients_for(x)   # cached by the chain until its values change
        key = tuple(pieces)
        cached = self._rows.get(key)
        if cached is None or cached[0] is not coefficients:
            longest = max(n for _, n in pieces)
            a, s = (t.expand(longest, -1).contiguous() for t in coefficients)
            cached = self._rows[key] = (coefficients, [(a[:n], s[:n]) for _, n in pieces])
        return cached[1]

    def _draws(self, seed, offset, n_steps, numel, keep, device, rng_row):
        """[n_steps, keep] normals: row j = philox_normal(keep, seed, offset + j * advance)."""
        advance = noise_offset_advance(numel)
        flat = philox_normal(4 * advance * n_steps, seed=seed, offset=offset, device=device, rng_state=rng_row)
        return flat.view(n_steps, 4 * advance)[:, :keep]

    def run(self, x, base_offset, rng_state):
        """The chain's K steps from x (a fresh tensor); (x, stats buffers or None) or None when
        the energy could not be compiled (the caller then runs the uncompiled loop).

        Each noise draw (up to NOISE_DRAW_NUMBERS normals; the stream is contiguous: step k's
        normals start at offset + k * advance) is run by one scan call on CPU states, else (or
        when the scan cannot be compiled) by its blocks; the [S, B] records are concatenated
        once at the end into [n_steps, B] buffers for ChainStats."""
        chain = self.chain
        plan = self._plan(x)
        scanned = self.scan_failed is None and x.device.type == "cpu"
        advance, numel, batch = noise_offset_advance(x.numel()), x.numel(), x.shape[0]
        rows = (None, None) if rng_state is None else (rng_state[0], rng_state[1])
        records = [] if chain.track_stats else None
        for d, (k0, span) in enumerate(plan.draws):
            offset = (base_offset + k0 * advance) % (1 << 64)
            noise = self._draws(chain.seed, offset, span, numel, numel, x.device, rows[0])
            accept = self._draws(chain.accept_seed, offset, span, numel, batch, x.device, rows[1]) if chain.mala else None
            if scanned:
                out = self._call("scan", x, noise.view(span, *x.shape), accept, *self._schedule(x, plan, True)[d])
                if out is not None:
                    x = out[0]
                    if records is not None:
                        records.append(out[1])
                    continue
                scanned = False   # the scan could not be compiled: this draw and the rest run as blocks
            schedule = self._schedule(x, plan, False)
            for b in range(d * plan.per_draw, min((d + 1) * plan.per_draw, len(plan.blocks))):
                j, n = plan.blocks[b][0] - k0, plan.blocks[b][1]
                out = self._call("block", x, noise[j:j + n].view(n, *x.shape),
                                 None if accept is None else accept[j:j + n], *schedule[b])
                if out is None:
                    return None
                x = out[0]
                if records is not None:
                    records.append(out[1])
        if records is None:
            return x, None
        return x, concatenate_records(records)

    def _schedule(self, x, plan, scanned):
        """(a, s) per draw (scanned) or per block: adapted MALA's frozen per-chain rows, else the shared schedule."""
        pieces = plan.draws if scanned else plan.blocks
        return self._per_chain_schedule(x, pieces) or (plan.draw_schedule if scanned else plan.block_schedule)

    def _call(self, kind, *args):
        """One block or scan (kind) through its compiled graph; None when it could not be compiled.
        Called under no_grad (the graph turns grad mode on around the energy itself): with grad
        mode on at entry and parameters that require grad (a trainer's energy), AOT autograd would
        build and partition a joint forward and backward graph that nothing uses (a 20-step MLP
        block: 105 s to compile vs 23 s)."""
        x = args[0]
        # a graph each per length, and per schedule rank (shared [S] or per-chain [S, B] steps)
        key = (kind, tuple(x.shape), x.dtype, x.device, args[self.NOISE_ARG].shape[0],
               tuple(t.dim() for t in args if isinstance(t, torch.Tensor)))
        if key in self._seen:
            try:   # a warm graph: no config patch (it costs more than a small block's kernel)
                with torch.no_grad():
                    return self._compiled(kind, x.device.type)(*args)
            except Exception:  # noqa: BLE001 - a guard failed (e.g. the energy's module changed mode) and
                pass           # dynamo retraces: autograd.grad needs TRACING, so compile again below
        return self._compile_and_call(kind, key, args)

    def _compile_and_call(self, kind, key, args):
        compiled = self._compiled(kind, args[0].device.type)
        # A scan that could not be compiled is not tried again by later chains of the same energy and
        # configuration (a trainer's fresh evaluation chains; torch < 2.13, whose C++ wrapper cannot lower it).
        refused = getattr(compiled.shared_function, "scan_refused", None)
        if refused:
            self.scan_failed = refused
            return None
        t0 = time.perf_counter()
        failures = []
        while True:
            try:
                with torch._dynamo.config.patch(**TRACING), torch.no_grad():
                    out = compiled(*args)
                break
            except Exception as exc:   # noqa: BLE001 - any tracing/compile failure: the other gradient, then uncompiled
                failures.append(f"{self.chain._traced_gradient} gradient: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}")
                if kind == "scan":   # the caller runs blocks instead
                    self.scan_failed = compiled.shared_function.scan_refused = failures[-1]
                    log.info("%s: the scanned run could not be compiled (%s); compiling unrolled blocks instead",
                             type(self.chain).__name__, self.scan_failed)
                    return None
                if self.chain._traced_gradient == "func":   # (compile refuses differentiable chains)
                    self.failed = "; ".join(failures)
                    warnings.warn(f"{type(self.chain).__name__}(compile=True): the energy could not be compiled "
                                  f"({self.failed}); running uncompiled from now on", RuntimeWarning, stacklevel=5)
                    return None
                self.chain._traced_gradient = "func"   # e.g. an autograd form inductor cannot lower
                log.info("%s: %s; compiling with torch.func.grad instead", type(self.chain).__name__, failures[-1])
        self._seen.add(key)
        seconds = time.perf_counter() - t0
        self.compile_seconds += seconds
        log.info("%s: compiled a %d-step %s for %s %s in %.1f s", type(self.chain).__name__,
                 key[4], kind, key[1], key[2], seconds)
        return out


class KineticRunner(CompiledRunner):
    """compile=True for KineticChain: blocks of fused BAOAB steps on the pair (x, v).

    The same scheme as the first-order runner (noise drawn outside the graph from the chain's
    stream, coefficients as tensors so neither a new offset nor a schedule recompiles); the
    block carries the velocity beside x, and the first step's kick includes the half-kick a
    persistent velocity still owes from the previous run (KineticChain's docstring)."""

    NOISE_ARG = 2
    SCANS = False

    def _block(self, x, v, noise, step_sizes, kicks, c1s, c2s):
        chain = self.chain
        records = [] if chain.track_stats else None
        for j in range(noise.shape[0]):
            energy, grad = chain._energy_and_grad(x)
            grad, norms = chain._clip(grad)
            if records is not None:
                records.append(chain._diagnostics(energy, norms, None))
            x, v = self._kinetic(x, v, grad, step_sizes[j], kicks[j], c1s[j], c2s[j], noise[j])
        if records is None:
            return x, v, None
        return x, v, [torch.stack(part) if part[0] is not None else None for part in zip(*records)]

    def _kinetic(self, x, v, grad, h, kick, c1, c2, noise):
        """reference.kinetic_step's formula in its math dtype, then the clamp's reflecting wall."""
        math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        xm, vm = x.to(math_dtype), v.to(math_dtype)
        h, kick, c1, c2 = (t.to(math_dtype) for t in (h, kick, c1, c2))
        v1 = vm - kick * grad.to(math_dtype)
        x1 = xm + (0.5 * h) * v1
        v2 = c1 * v1 + c2 * noise.to(math_dtype)
        x2 = x1 + (0.5 * h) * v2
        if self.chain.clamp is not None:
            lo, hi = self.chain.clamp
            clamped = x2.clamp(min=lo, max=hi)
            v2 = torch.where(clamped != x2, -v2, v2)
            x2 = clamped
        return x2.to(x.dtype), v2.to(v.dtype)

    def _plan(self, x):
        """As the first-order plan, with per-block (h, kick, c1, c2) for both first kicks: a fresh
        velocity's (h_0 / 2) and a persistent one's (h_{K-1} / 2 + h_0 / 2)."""
        key = (tuple(x.shape), x.dtype, x.device)
        plan = self._plans.get(key)
        if plan is None:
            chain = self.chain
            n_steps, S = chain.n_steps, block_length(chain.n_steps, self.max_block)
            hs = torch.tensor(chain.step_sizes, dtype=torch.float64)
            kicks = 0.5 * (hs + torch.cat([hs.new_zeros(1), hs[:-1]]))
            owed_kicks = kicks.clone()
            owed_kicks[0] += 0.5 * hs[-1]
            c1s = torch.exp(-chain.friction * hs)
            c2s = torch.sqrt(-torch.expm1(-2.0 * chain.friction * hs))
            math_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            to = dict(dtype=math_dtype, device=x.device)
            blocks = [(k0, min(S, n_steps - k0)) for k0 in range(0, n_steps, S)]
            schedules = {owed: [tuple(t[k0:k0 + n].to(**to) for t in (hs, kk, c1s, c2s)) for k0, n in blocks]
                         for owed, kk in ((False, kicks), (True, owed_kicks))}
            row = 4 * noise_offset_advance(x.numel())
            plan = self._plans[key] = (blocks, schedules, max(1, NOISE_DRAW_NUMBERS // (row * S)))
        return plan

    def run(self, x, base_offset, rng_state):
        """The chain's K steps from x with chain.velocity; updates the chain's velocity and owed
        kick, returns (x, stats buffers or None), or None when the energy could not be compiled."""
        chain = self.chain
        blocks, schedules, per_draw = self._plan(x)
        if chain._owed_on_device is None:
            schedule = schedules[chain._owed_kick != 0.0]
        else:   # a captured run: the owed kick is read on the device, so every replay sees its own
            schedule = list(schedules[False])
            h, kicks, c1, c2 = schedule[0]
            schedule[0] = (h, torch.cat([kicks[:1] + chain._owed_on_device.to(kicks.dtype), kicks[1:]]), c1, c2)
        v = chain.velocity
        records = [] if chain.track_stats else None
        for b, (k0, n) in enumerate(blocks):
            if b % per_draw == 0:
                last = blocks[min(b + per_draw, len(blocks)) - 1]
                span, offset = last[0] + last[1] - k0, (base_offset + k0 * noise_offset_advance(x.numel())) % (1 << 64)
                noise = self._draws(chain.seed, offset, span, x.numel(), x.numel(), x.device,
                                    None if rng_state is None else rng_state[0])
                first = k0
            j = k0 - first
            out = self._call("block", x, v, noise[j:j + n].view(n, *x.shape), *schedule[b])
            if out is None:
                return None
            x, v, block_records = out
            if records is not None:
                records.append(block_records)
        chain.velocity.copy_(v)   # in place: under capture_graph the velocity is the graph's static buffer
        chain._owed_kick = 0.5 * chain.step_sizes[-1]
        if records is None:
            return x, None
        return x, concatenate_records(records)
