"""The divergence guard (``on_nonfinite``): the end-of-run check of the final state, its
error type, and the replay that names the step where each bad chain went non-finite."""
from __future__ import annotations

import contextlib

import torch

from .checks import _per_chain

ON_NONFINITE = ("raise", "reinit", "ignore")
_MAX_LISTED = 10  # chains named in a NonFiniteChainError message before "... and N more"


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



def _check_on_nonfinite(value) -> str:
    if not isinstance(value, str) or value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite={value!r} is not allowed; allowed values: "
                         + ", ".join(repr(v) for v in ON_NONFINITE))
    return value


def _nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Bool [B]: chains with any NaN/inf entry (device op, no sync)."""
    return ~torch.isfinite(_per_chain(x)).all(1)



class DivergenceGuard:
    """The guard's part of a chain (mixed into the sampler core): `_guard` runs after the loop."""

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
