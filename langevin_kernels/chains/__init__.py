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
from .kinetic import VELOCITY_SEED_XOR, KineticChain
from .guard import ON_NONFINITE, NonFiniteChainError
from .mala import ACCEPT_SEED_XOR, log_q_ratio
from .samplers import REINIT_SEED_XOR, DataChain, LatentChain, sample
from .stats import STAT_NAMES, ChainStats

__all__ = ["ACCEPT_SEED_XOR", "REINIT_SEED_XOR", "ON_NONFINITE", "STAT_NAMES", "ChainStats", "DataChain",
           "KineticChain", "VELOCITY_SEED_XOR", "LatentChain", "NonFiniteChainError", "log_q_ratio", "sample"]
