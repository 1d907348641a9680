"""DDP under torchrun: one process per rank, each with its own chain noise (seed, rank) streams.

Outside torchrun (no WORLD_SIZE in the environment) this is a no-op: rank 0 of 1, no wrapping.

Every rank must stop together: a rank that raises while the others wait in a collective (a DDP
gradient all-reduce, a barrier) hangs the job. So failures are agreed on: ``on_all_ranks`` runs
a setup step and, if it fails on any rank, raises on every rank; ``any_rank`` is the flag
all-reduce the training loop uses for divergence and interrupts. Errors raised that way carry
``agreed = True``, and only then does the context end with a barrier.
"""
from __future__ import annotations

import contextlib
import gc
import os
import pickle
import traceback

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _flag_device() -> torch.device:
    """gloo reduces CPU tensors, nccl CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' ``value`` (a MAX all-reduce of one int), the same on every rank;
    every rank must call it at the same point. Without a process group: ``value``."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one; every rank must call it at the
    same point. Without a process group: ``flag``."""
    return bool(max_over_ranks(1 if flag else 0))


def all_values(value) -> list:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` without a process group."""
    if not is_distributed():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_messages(message: str | None) -> list[tuple[int, str]]:
    """(rank, message) for every rank whose ``message`` is not None, all ranks' view the same.

    One flag all-reduce when no rank has a message; the messages are gathered only when one has.
    """
    if not is_distributed():
        return [] if message is None else [(0, message)]
    if not any_rank(message is not None):
        return []
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    return [(r, m) for r, m in enumerate(gathered) if m is not None]


def _portable(err: BaseException):
    """(exception class, message) if the class pickles by reference, else (RuntimeError, message)."""
    cls = type(err)
    try:
        pickle.dumps(cls)
    except Exception:
        cls = RuntimeError
    return cls, str(err)


def _rebuild(cls, message: str) -> BaseException:
    try:
        err = cls(message)
    except Exception:
        err = RuntimeError(message)
    return err


def on_all_ranks(fn):
    """Return fn(); when it raises on any rank, raise on every rank.

    The failing rank re-raises its own exception; the others raise the same class with the lowest
    failing rank's message prefixed by "rank R: ". Without a process group: plain fn().
    """
    if not is_distributed():
        return fn()
    try:
        result, failure = fn(), None
    except Exception as err:
        result, failure = None, err
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, None if failure is None else _portable(failure))
    failed = [(r, item) for r, item in enumerate(gathered) if item is not None]
    if not failed:
        return result
    if failure is not None:
        failure.agreed = True
        raise failure
    rank, (cls, message) = failed[0]
    err = _rebuild(cls, f"rank {rank}: {message}")
    err.agreed = True
    raise err


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

    agreed = True
    try:
        yield rank, world, wrap
    except BaseException as err:
        # A failure every rank saw (agreed) ends with everyone at the barrier; any other one would
        # leave this rank at a barrier the others never reach, so it skips the barrier.
        agreed = getattr(err, "agreed", False)
        # The traceback's finished frames hold the trainer and its DDP wrappers; freed only after
        # the group is destroyed, a wrapper's destructor could block the process's exit.
        traceback.clear_frames(err.__traceback__)
        raise
    finally:
        gc.collect()   # DDP wrappers the caller dropped, before the group they use goes away
        if agreed:
            dist.barrier()
        dist.destroy_process_group()
