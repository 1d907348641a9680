"""A CPU stand-in for torch.cuda.set_sync_debug_mode("error") in tests.

On a GPU, reading a tensor's value on the host (bool(t), t.item(), float(t), nonzero) waits for
the device. The code paths that promise not to wait can be checked without a GPU by running
them on CPU tensors under this mode, which raises at every aten op that hands a tensor value to
the host. It sees what goes through the dispatcher: a CPU tensor's .tolist() or .numpy() does
not, so this is a lower bound on the reads the GPU test (test_adaptive_mala's CUDA twin) finds.
"""
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result (or output size) is a tensor value read back to the host
HOST_READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "equal", "masked_select", "_unique2",
              "unique_consecutive", "unique_dim"}


class HostReadError(RuntimeError):
    pass


class _ForbidHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in HOST_READS:
            raise HostReadError(f"{func} reads a tensor value on the host (a device sync on a GPU)")
        return func(*args, **(kwargs or {}))


def forbid_host_reads() -> TorchDispatchMode:
    """A mode (`with forbid_host_reads():`) that raises HostReadError at the first aten op in
    the block that would make a GPU wait."""
    return _ForbidHostReads()
