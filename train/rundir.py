"""The run directory (``--out``): checked, claimed and locked before a run writes anything.

A run directory belongs to one run at a time. ``claim_run_directory`` refuses

* an ``--out`` that is empty, names a file, or cannot be created or written;
* a directory another live process is training into (an ``fcntl`` lock on ``<out>/.lock``,
  held until the process exits; the kernel drops it when the process dies, so a killed run
  never leaves a stale lock behind);
* a directory that already holds files, unless ``--resume`` (continue the run there) or
  ``--overwrite`` (delete that run's outputs first) says what to do with them.

``--overwrite`` deletes only what langevin-train writes (``RUN_OUTPUT`` names); a directory that
also holds other files is refused, naming them, so nobody's own files are ever deleted.
"""
from __future__ import annotations

import errno
import os
import re

LOCK_NAME = ".lock"

#: Files a run writes: config.json, metrics.json, losses.csv, checkpoints, plots, and the temp
#: files of atomic writes ("<name>.tmp<pid>") a killed writer may have left.
RUN_OUTPUT = re.compile(r"""^(?:
      config\.json | metrics\.json | losses\.csv | checkpoint(?:_rank\d+)?\.pt
    | (?:density|samples|samples_generator|samples_ebm|learning_curve)(?:_\d+)?\.png
    | \.lock
    )(?:\.tmp\d+)?$""", re.VERBOSE)


class RunDirectoryError(ValueError):
    """--out cannot be used for this run; the message says why and what to do (CLI exit status 2)."""


def is_run_output(name: str) -> bool:
    """True for the names of files langevin-train writes into a run directory."""
    return RUN_OUTPUT.match(name) is not None


def check_out_path(out: str) -> str:
    """Create --out if needed and check it is a writable directory; returns it unchanged."""
    if not isinstance(out, str) or not out.strip():
        raise RunDirectoryError(f"--out={out!r} is empty; give the run directory's path (it is created "
                                "if it does not exist)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunDirectoryError(f"--out={out!r} is a file, not a directory; choose a directory path")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise RunDirectoryError(f"--out={out!r} cannot be created ({_os_reason(err)}); choose a path where "
                                "you may create directories") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"--out={out!r} is not writable by this user; choose another directory")
    return out


def _os_reason(err: OSError) -> str:
    name = errno.errorcode.get(err.errno, type(err).__name__) if err.errno else type(err).__name__
    return f"{name}: {err.strerror or err}"


class RunDirectoryLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<out>/.lock`` (the file keeps the holder's pid)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "RunDirectoryLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirectoryError(f"cannot create the lock file {self.path} ({_os_reason(err)}); "
                                    "choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryError(f"cannot lock {self.path} ({_os_reason(err)})") from None
            holder = self._holder()
            raise RunDirectoryError(
                f"--out={os.path.dirname(self.path)!r} is in use by another langevin-train process"
                f"{f' (pid {holder})' if holder else ''}; two runs cannot share a run directory. Wait for it "
                "to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Unlock (the lock file stays: deleting it would race with a process opening it)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _describe(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def remove_run_outputs(out: str) -> list[str]:
    """Delete the files langevin-train wrote into ``out`` (not the lock file); returns their names."""
    removed = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if name != LOCK_NAME and is_run_output(name) and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def claim_run_directory(out: str, *, resume: bool = False, overwrite: bool = False) -> RunDirectoryLock:
    """Check --out, lock it, and decide what happens to what is already there.

    Empty (or new) directory: the run starts. Non-empty: ``resume`` keeps everything (the trainer
    continues from the checkpoint); ``overwrite`` deletes the previous run's outputs, refusing
    when the directory also holds files langevin-train does not write; neither: RunDirectoryError
    saying how to continue or start over. Returns the held lock; release it (or exit) when done.
    """
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite contradict each other: --resume continues the run in "
                                "--out, --overwrite deletes it and starts over; pass one of them")
    check_out_path(out)
    lock = RunDirectoryLock(out).acquire()
    try:
        present = sorted(n for n in os.listdir(out) if n != LOCK_NAME)
        foreign = [n for n in present if not is_run_output(n)]
        if not present or resume:
            return lock
        if overwrite:
            if foreign:
                raise RunDirectoryError(
                    f"--out={out!r} holds files langevin-train did not write ({_describe(foreign)}); "
                    "--overwrite deletes only a run's own outputs, so it refuses to mix them with a new run. "
                    "Move those files or choose another --out")
            remove_run_outputs(out)
            return lock
        if foreign:
            raise RunDirectoryError(
                f"--out={out!r} is not empty and is not a langevin-train run directory (it holds "
                f"{_describe(foreign)}); choose a new or empty directory")
        raise RunDirectoryError(
            f"--out={out!r} already holds a run ({_describe(present)}). Continue it with --resume, start over "
            "with --overwrite (deletes its checkpoint, metrics and plots), or choose another --out")
    except BaseException:
        lock.release()
        raise
