"""Child process of the kill-safety test (tests/test_checkpoints.py): a langevin-train run that
SIGKILLs itself during its N-th checkpoint write, at one stage of that write.

    python tests/kill_during_save.py N STAGE [langevin-train arguments...]

STAGE "partial": the temp file is cut to half its bytes, then the kill (a torn write);
"written": the temp file is complete but not yet renamed; "replaced": just after the rename.
The moment is set through ``checkpoints.save_observer``, which the package leaves None.
"""
import os
import signal
import sys

from langevin_kernels.train import checkpoints
from langevin_kernels.train.cli import main


def kill_at(nth: int, stage: str):
    """An observer for checkpoints.save_observer that kills this process at the given moment."""
    saves = {"n": 0}

    def observe(moment: str, tmp: str) -> None:
        if moment == "written":
            saves["n"] += 1  # each write reports "written" once, before "replaced"
        if saves["n"] != nth or moment != ("replaced" if stage == "replaced" else "written"):
            return
        if stage == "partial":
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
                f.flush()
                os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    return observe


if __name__ == "__main__":
    checkpoints.save_observer = kill_at(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))
