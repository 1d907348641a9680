"""CUDA-graph capture of a whole run (``capture_graph=True``; docs/chains.md, "CUDA graphs")."""
from __future__ import annotations

import torch

from ..ops import _as_int64, noise_offset_advance
from .stats import ChainStats

_U64 = 1 << 64


class GraphCapture:
    """Capture and replay of a chain's K-step run (mixed into the sampler core)."""

    def reset_graph(self) -> None:
        """Forget a captured CUDA graph (the next run captures again)."""
        self._graph = None
        self._graph_key = None
        self._rng_state = None

    def _graph_extra_key(self):
        return ()

    def _before_replay(self) -> None:
        """Hook: bring state the graph reads but x0 does not carry into its static buffers."""

    def _after_replay(self) -> None:
        """Hook: host-side bookkeeping of what the replayed run did."""

    def _run_captured(self, x0, return_trajectory, thin, name):
        if x0.device.type != "cuda":
            raise ValueError(f"capture_graph=True needs CUDA tensors, but {name} is on {x0.device}; "
                             "use capture_graph=False on this device")
        key = (tuple(x0.shape), x0.dtype, x0.device, return_trajectory, thin) + self._graph_extra_key()
        if self._graph is None or self._graph_key != key:
            self._capture(x0, key, return_trajectory, thin)
        self._static_x0.copy_(x0)
        self._before_replay()
        self._graph.replay()
        self._after_replay()
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
                out[2].table   # noqa: B018  (a property: reduced inside the graph, so every replay refreshes it)
            rng_state[:, 1] += self.n_steps * advance
        self._graph, self._graph_key, self._static_out = graph, key, out
        self._rng_state = rng_state
        self._rng_state[:, 1].fill_(_as_int64("offset", self._offset))
