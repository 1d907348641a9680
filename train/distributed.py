"""DDP under torchrun: one process per rank, each with its own chain noise (seed, rank) streams.

Outside torchrun (no WORLD_SIZE in the environment) this is a no-op: rank 0 of 1, no wrapping.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


@contextlib.contextmanager
def distributed_context(cfg):
    """Yields (rank, world_size, wrap); wrap(module) returns the DDP wrapper under torchrun.

    Backend: nccl for CUDA devices, gloo otherwise. On CUDA each rank uses cuda:LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1, None
        return
    cuda = cfg.device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg.device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()

    def wrap(module):
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(module, device_ids=[torch.device(cfg.device).index] if cuda else None)

    try:
        yield rank, world, wrap
    finally:
        dist.barrier()
        dist.destroy_process_group()
