"""Checkpoint I/O: atomic writes (never a torn file), stale temp files, safe loading, resume checks.

Every file a run writes whole (checkpoint.pt, config.json, metrics.json) goes through
``atomic_write``: a temp file "<name>.tmp<pid>" in the same directory, fsync, ``os.replace``.
"""
from __future__ import annotations

import collections
import json
import os
import re

import torch

from .config import DUAL_ONLY_KEYS

CHECKPOINT = "checkpoint.pt"
TMP_MARK = ".tmp"  # temp files are "<final name>.tmp<pid>" in the final file's directory

#: None, or a callable ``observer(stage, tmp_path)`` that ``atomic_save`` calls at two moments of
#: every checkpoint write: "written" (the temp file is complete and fsynced, not yet renamed) and
#: "replaced" (just after the rename). Nothing in the package sets it; the kill-safety tests set
#: it in a child process to kill that process at an exact moment (tests/kill_during_save.py).
save_observer = None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write, observer=None) -> None:
    """write(file) into "<path>.tmp<pid>", flush + fsync, os.replace onto path, fsync the directory.

    A reader (or a resumed run after a kill or power loss) sees either the old complete file or the
    new complete one, never a torn one; a kill leaves at most a stale temp file, which
    remove_stale_temps() deletes and nothing ever reads.
    """
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if observer:
            observer("written", tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if observer:
        observer("replaced", tmp)
    _fsync_dir(os.path.dirname(path))


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, then os.replace (never a torn file)."""
    atomic_write(path, lambda f: torch.save(obj, f), save_observer)


def write_json(obj, path: str) -> None:
    """json.dumps(obj) written atomically to path."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def remove_stale_temps(path: str) -> list[str]:
    """Delete "<path>.tmp<pid>" files left by killed writers (not those of live processes); returns them."""
    directory, name = os.path.split(path)
    removed = []
    try:
        entries = os.listdir(directory or ".")
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.startswith(name + TMP_MARK):
            continue
        pid = entry[len(name + TMP_MARK):]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another live process is writing it right now
        try:
            os.remove(os.path.join(directory, entry))
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, not ours, or from a different configuration."""


#: Config keys that may change when a run is resumed (run length, device, compilation and
#: evaluation settings; max_energy_gap, and its old name max_energy_loss, only decide when to
#: stop). Every other key must equal the checkpoint's.
RESUMABLE_KEYS = frozenset({"iters", "device", "eval_every", "ckpt_every", "n_eval", "grid_n", "eval_x_steps",
                            "eval_x_step", "eval_x_noise", "max_energy_gap", "max_energy_loss",
                            "compile", "capture_graph"})
CHECKPOINT_KEYS = ("iteration", "config", "method", "source", "history", "torch_rng", "python_rng")


def fix_hint(path: str) -> str:
    return (f"Delete it (rm {path}) to start this run from scratch, run without --resume, or choose "
            f"another --out.")


#: What a checkpoint may hold: exactly what ``torch.load(weights_only=True)`` admits without extra
#: allow-listed globals. The trainer saves nothing else (``check_plain`` enforces it on save), so a
#: file that needs any other Python object to load was not written by langevin-train.
PLAIN_TYPES = (dict, collections.OrderedDict, list, tuple, str, int, float, bool, type(None))  # + tensors


def check_plain(obj, where: str = "checkpoint") -> None:
    """TypeError naming the first value (by its key path) that is not a tensor or of a PLAIN_TYPES type
    (exactly: numpy.float64 subclasses float but pickles as a numpy object)."""
    if isinstance(obj, torch.Tensor):
        return
    if type(obj) not in PLAIN_TYPES:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                        "tensors, numbers, strings, None, lists, tuples and dicts (what torch.load(weights_only="
                        "True) reads), so convert it (e.g. numpy scalars with .item())")
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_plain(key, f"{where} key")
            check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")


def _unpickling_reason(err: Exception) -> str:
    """The informative line of a torch.load failure (the weights-only message starts with boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or [""])[0][:200]


def load_checkpoint(path: str, map_location=None) -> dict:
    """torch.load a trainer checkpoint safely (weights_only=True: tensors and plain data, never code).

    CheckpointError naming the file when it is not a checkpoint, and when it holds other Python
    objects: unpickling those can run code chosen by whoever wrote the file, so it is refused.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle ...
        reason = _unpickling_reason(err)
        code = re.search(r"GLOBAL ([\w.]+)", str(err))
        if code:
            raise CheckpointError(
                f"checkpoint {path} refused: it holds the Python object {code.group(1)}, and loading that could "
                f"run code chosen by whoever wrote the file (langevin-train checkpoints hold only tensors and "
                f"plain data). Nothing from it was executed. {fix_hint(path)}") from None
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {reason}); it is truncated, "
            f"corrupt or not written by langevin-train. {fix_hint(path)}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a training checkpoint "
                              f"(a dict with {', '.join(CHECKPOINT_KEYS)}). {fix_hint(path)}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint: missing "
                              f"{missing or ['config (a dict)']}. {fix_hint(path)}")
    return state


def config_differences(saved: dict, requested: dict) -> dict:
    """{key: (saved, requested)} for the keys outside RESUMABLE_KEYS whose values differ; for a
    method other than dual-MCMC, also outside DUAL_ONLY_KEYS (settings it never reads)."""
    ignored = RESUMABLE_KEYS
    if saved.get("method") == requested.get("method") != "dual":
        ignored = ignored | DUAL_ONLY_KEYS
    out = {}
    for key in sorted(set(saved) | set(requested)):
        if key in ignored:
            continue
        a, b = saved.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            out[key] = (saved.get(key, "<absent>"), requested.get(key, "<absent>"))
    return out
