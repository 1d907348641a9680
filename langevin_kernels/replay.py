"""Persistent-chain replay buffer (docs/chains.md), living on the chains' device.

    buffer = lk.ReplayBuffer(10_000, (2,), reinit_prob=0.05,
                             init_fn=lambda n: torch.rand(n, 2) * 2 - 1, device="cuda")
    x0, idx = buffer.sample(128)          # 5% of rows replaced by fresh init_fn states
    x = chain.run(x0)
    buffer.update(idx, x)                 # write the chains back

Indices are drawn without replacement within a batch (so ``update`` writes each row once
and the result does not depend on write order), and the reinitialisation mask is drawn per
row; both come from a torch.Generator on the buffer's device seeded by ``seed``. Sampling never
copies to the host or synchronises: fresh states are made for the whole batch and selected with
``torch.where`` rather than counting the reinitialised rows. ``update`` refuses NaN/inf states
(a diverged chain would otherwise poison the buffer for good), which costs one device-to-host
read per update; ``check_finite=False`` skips it where the chains already check (for example
``on_nonfinite="raise"``, their default).
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch


class ReplayBuffer:
    """A capacity x shape tensor of persistent chain states with random reinitialisation.

    Args:
        capacity: number of stored states.
        shape: shape of one state (without the batch dimension).
        reinit_prob: probability in [0, 1] that a sampled row is replaced by a fresh state.
        init_fn: n -> tensor [n, *shape] of fresh states (also fills the buffer initially);
            its output is moved to ``device`` and ``dtype`` if needed.
        device, dtype: where and how the states are stored.
        seed: seed of the buffer's own generator (indices and reinitialisation draws).
        check_finite: ``update`` raises ValueError on NaN/inf states (default True; one
            device-to-host read per update).
    """

    def __init__(self, capacity: int, shape, *, reinit_prob: float, init_fn: Callable[[int], torch.Tensor],
                 device="cpu", dtype=torch.float32, seed: int = 0, check_finite: bool = True):
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} must be an int >= 1")
        if isinstance(reinit_prob, bool) or not isinstance(reinit_prob, numbers.Real) or not 0 <= reinit_prob <= 1:
            raise ValueError(f"reinit_prob={reinit_prob!r} must be a number in [0, 1]")
        if not callable(init_fn):
            raise TypeError(f"init_fn must be callable (n -> states [n, *shape]), got {type(init_fn).__name__}")
        self.capacity, self.shape = int(capacity), tuple(int(d) for d in shape)
        self.reinit_prob, self.init_fn = float(reinit_prob), init_fn
        self.check_finite = bool(check_finite)
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.storage = self._fresh(self.capacity)

    def __len__(self) -> int:
        return self.capacity

    def _fresh(self, n: int) -> torch.Tensor:
        states = self.init_fn(n)
        if not isinstance(states, torch.Tensor) or tuple(states.shape) != (n, *self.shape):
            got = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
            raise ValueError(f"init_fn({n}) must return a tensor of shape {(n, *self.shape)}, got {got}")
        return states.to(device=self.device, dtype=self.dtype)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(states [batch, *shape], their indices [batch]); a fraction reinit_prob is fresh."""
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or not 1 <= batch <= self.capacity:
            raise ValueError(f"batch={batch!r} must be an int in [1, capacity={self.capacity}]")
        idx = torch.randperm(self.capacity, generator=self.generator, device=self.device)[:batch]
        states = self.storage[idx]
        if self.reinit_prob > 0:
            reinit = torch.rand(batch, generator=self.generator, device=self.device) < self.reinit_prob
            states = torch.where(reinit.view(-1, *([1] * len(self.shape))), self._fresh(batch), states)
        return states, idx

    def update(self, idx: torch.Tensor, states: torch.Tensor) -> None:
        """Write states (detached) back at idx (the indices ``sample`` returned).

        With ``check_finite`` (the default) states holding NaN or inf are refused with a
        ValueError naming the rows, and the buffer is left unchanged.
        """
        if tuple(states.shape) != (idx.shape[0], *self.shape):
            raise ValueError(f"states has shape {tuple(states.shape)}; expected {(idx.shape[0], *self.shape)} "
                             "(one state per index)")
        if self.check_finite:
            self._refuse_nonfinite(idx, states)
        self.storage[idx] = states.detach().to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _refuse_nonfinite(idx: torch.Tensor, states: torch.Tensor) -> None:
        bad = ~torch.isfinite(states.detach().reshape(len(states), -1)).all(1)
        if not bool(bad.any()):
            return
        rows = bad.nonzero().flatten()
        shown = rows[:10].tolist()
        more = ", ..." if len(rows) > 10 else ""
        raise ValueError(
            f"ReplayBuffer.update: states has {len(rows)} of {len(states)} rows with NaN or inf (rows {shown}{more}, "
            f"buffer indices {idx.detach().reshape(-1)[rows[:10].to(idx.device)].tolist()}{more}); the chain that "
            "produced them diverged, and writing them would keep those rows broken. Nothing was written. Use a "
            "smaller step size or a clamp, run the chain with on_nonfinite='reinit', or pass check_finite=False "
            "to store them anyway")

    def state_dict(self) -> dict:
        return {"storage": self.storage, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        storage = state["storage"]
        if tuple(storage.shape) != (self.capacity, *self.shape):
            raise ValueError(f"storage has shape {tuple(storage.shape)}; this buffer holds "
                             f"{(self.capacity, *self.shape)}")
        self.storage = storage.to(device=self.device, dtype=self.dtype).clone()
        self.generator.set_state(state["generator"])
