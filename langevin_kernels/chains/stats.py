"""Per-step diagnostics of a chain run (docs/chains.md, "Statistics")."""
from __future__ import annotations

import torch

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
                 per_chain: tuple | None = None):
        # The run keeps its per-step per-chain values (energy, grad norm, and for MALA the
        # accept decisions and bad proposals): no reduction per step. They come either as a
        # list of per-step tuples (`steps`) or, from the plain ULA loop, as two [n_steps, B]
        # buffers the steps wrote into (`per_chain`; compiled runs add MALA's [n_steps, B]
        # accept decisions and bad proposals, or None). The [n_steps, 4] table is reduced from
        # them on first use.
        self._steps = steps
        self._per_chain = per_chain
        self._table = table
        self._chain_acceptance = None
        self.mala = mala
        self.reinitialized = int(reinitialized)

    @property
    def table(self) -> torch.Tensor:
        """[n_steps, 4] device tensor, columns as STAT_NAMES."""
        if self._table is None:
            if self._per_chain is not None:
                energies, norms, accepted, bad = (*self._per_chain, None, None)[:4]
            else:
                energies, norms, accepted, bad = (torch.stack(part) if part[0] is not None else None
                                                  for part in zip(*self._steps))
            if bad is None:   # ULA: the energy and gradient at the state each step started from
                bad = ~(torch.isfinite(energies) & torch.isfinite(norms))
            acceptance = (accepted.float().mean(1) if accepted is not None
                          else torch.full(energies.shape[:1], float("nan"), device=energies.device))
            self._table = torch.stack([energies.float().mean(1), norms.float().mean(1), acceptance,
                                       bad.sum(1).float()], dim=1)
            if accepted is not None:   # kept: the per-step decisions are dropped below
                self._chain_acceptance = accepted.float().mean(0)
            self._steps = self._per_chain = None
        return self._table

    def __getattr__(self, name):
        if name in STAT_NAMES:
            if name == "acceptance" and not self.mala:
                return None
            return self.table[:, STAT_NAMES.index(name)]
        raise AttributeError(name)

    @property
    def acceptance_per_chain(self) -> torch.Tensor | None:
        """[B] fraction of the run's steps each chain accepted (device tensor), None for ULA."""
        _ = self.table   # reduces the per-step records, keeping each chain's acceptance
        return self._chain_acceptance

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
