"""The run directory (--out): nothing a previous run left is overwritten unless asked, two runs never
share one directory, and an unusable --out is a one-line error with exit status 2."""
import os
import subprocess
import sys

import pytest

from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.rundir import LOCK_NAME, RunDirectoryLock, is_run_output
from langevin_kernels.train.checkpoints import CHECKPOINT

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--config", "toy2d", "--iters", "2", "--batch-size", "16", "--n-eval", "64", "--no-progress"]


def _run(out, *extra):
    return cli_main(RUN + ["--out", str(out), *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("langevin-train: error: "), err
    return err


@pytest.fixture
def finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out) == 0
    capsys.readouterr()
    (out / "density_0000999.png").write_bytes(b"a plot of an older, longer run")
    return out


def test_non_empty_out_without_resume_is_refused(finished_run, capsys):
    before = {p: (finished_run / p).read_bytes() for p in os.listdir(finished_run) if p != LOCK_NAME}
    assert _run(finished_run) == 2
    err = _one_error_line(capsys)
    assert str(finished_run) in err and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err  # how to continue, how to start over
    after = {p: (finished_run / p).read_bytes() for p in os.listdir(finished_run) if p != LOCK_NAME}
    assert after == before  # nothing touched


def test_overwrite_starts_over_and_removes_old_outputs(finished_run, capsys):
    old_config = (finished_run / "config.json").stat().st_mtime_ns
    assert _run(finished_run, "--overwrite", "--seed", "5") == 0
    assert not (finished_run / "density_0000999.png").exists()  # no stale plots mixed with the new ones
    assert (finished_run / "config.json").stat().st_mtime_ns != old_config
    assert '"seed": 5' in (finished_run / "config.json").read_text()


def test_resume_continues_in_a_non_empty_out(finished_run):
    assert cli_main(RUN[:2] + ["--iters", "3"] + RUN[4:] + ["--out", str(finished_run), "--resume"]) == 0
    assert '"iteration": 3' in (finished_run / "metrics.json").read_text()


def test_overwrite_never_deletes_foreign_files(finished_run, capsys):
    (finished_run / "notes.txt").write_text("mine")
    assert _run(finished_run, "--overwrite") == 2
    err = _one_error_line(capsys)
    assert "notes.txt" in err and "did not write" in err
    assert (finished_run / "notes.txt").read_text() == "mine" and (finished_run / CHECKPOINT).exists()


def test_foreign_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert _run(out) == 2
    err = _one_error_line(capsys)
    assert "not a langevin-train run directory" in err and "thesis.tex" in err
    assert os.listdir(out) == ["thesis.tex"] or sorted(os.listdir(out)) == sorted(["thesis.tex", LOCK_NAME])


def test_resume_and_overwrite_together_are_refused(finished_run, capsys):
    assert _run(finished_run, "--resume", "--overwrite") == 2
    assert "contradict" in _one_error_line(capsys)


def test_empty_existing_directory_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _run(out) == 0 and (out / CHECKPOINT).exists()


@pytest.mark.parametrize("kind", ["empty string", "a file", "under a file", "unwritable"])
def test_unusable_out_exit_2_with_a_message(tmp_path, capsys, kind):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out, expect = {"empty string": ("", "is empty"),
                   "a file": (str(a_file), "is a file, not a directory"),
                   "under a file": (str(a_file / "run"), "cannot be created"),
                   # /proc refuses new entries even to root, so this holds on any Linux machine.
                   "unwritable": ("/proc/langevin-train-test/run", "cannot be created")}[kind]
    assert cli_main(RUN + ["--out", out]) == 2
    err = _one_error_line(capsys)
    assert f"--out={out!r}" in err and expect in err
    assert a_file.read_text() == "x"


_HOLD_LOCK = """
import sys, time
from langevin_kernels.train.rundir import claim_run_directory
claim_run_directory(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_two_runs_cannot_share_out_and_a_killed_holder_frees_it(tmp_path, capsys):
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _run(out) == 2
        err = _one_error_line(capsys)
        assert "in use by another langevin-train process" in err and f"pid {holder.pid}" in err
        assert not (out / "config.json").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait(timeout=60)
    assert _run(out, "--resume") == 0  # the lock of a killed run is never stale
    assert (out / CHECKPOINT).exists()


def test_lock_released_when_a_run_ends(tmp_path):
    out = tmp_path / "run"
    assert _run(out) == 0
    lock = RunDirectoryLock(str(out)).acquire()  # another open file description: would fail if still held
    assert lock.held
    lock.release()


def test_resume_without_checkpoint_clears_the_earlier_attempt(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "density_0000500.png").write_bytes(b"from an attempt killed before its first checkpoint")
    (out / "log.txt").write_text("the sweep's log, not a run output")
    assert _run(out, "--resume") == 0
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "density_0000500.png" in err
    assert not (out / "density_0000500.png").exists() and (out / "log.txt").exists()


def test_run_output_names():
    for name in ["config.json", "metrics.json", "losses.csv", "checkpoint.pt", "checkpoint_rank3.pt",
                 "density.png", "density_0000100.png", "samples_0002000.png", "checkpoint.pt.tmp1234", LOCK_NAME]:
        assert is_run_output(name), name
    for name in ["notes.txt", "log.txt", "checkpoint.pt.bak", "my_density.png", "config.json~"]:
        assert not is_run_output(name), name
