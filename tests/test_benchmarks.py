"""The benchmark suites run, every variant produces a number, and all variants agree on a fixed seed.

Timings are never asserted (CI machines are shared and noisy). What is asserted:
- every variant either produced a median time or is unavailable for a reason this machine
  explains (no GPU, no torchebm, compile skipped by --quick) - a variant that *failed* is a bug;
- every variant that ran matches the float32 eager reference driven by the same Philox noise
  within the tolerance of benchmarks.suites.common.tolerance (a wrong coefficient, a wrong
  torchebm convention mapping or reused noise moves values by ~noise_scale = 0.1, 1000x more);
- the report renders and the result files are written.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # benchmarks/ lives at the top of the checkout

from benchmarks import run as bench_run  # noqa: E402
from benchmarks.suites import chain, common, peers, step  # noqa: E402

CPU = torch.device("cpu")
# Reasons a variant may legitimately not run on a CPU-only CI machine.
EXPLAINED = ("Triton runs CUDA tensors only", "TRITON_INTERPRET=1", "extension built without CUDA",
             "no CUDA device", "CUDA graphs need a CUDA device", "torchebm is not installed",
             "skipped by --quick", "timed up to 2^", "extension langevin_kernels._C not built",
             "the cuda backend runs CUDA tensors only")


def _assert_rows_sound(rows):
    assert rows
    for row in rows:
        if row.unavailable:
            assert any(reason in row.unavailable for reason in EXPLAINED), \
                f"{row.case} / {row.variant} did not run: {row.unavailable}"
            continue
        assert row.median_s is not None and row.median_s > 0, f"{row.case} / {row.variant} has no time"
        assert row.samples >= common.MIN_REPEATS
        assert row.agrees, f"{row.case} / {row.variant}: max err {row.max_abs_err} vs reference"


@pytest.fixture(scope="module", autouse=True)
def _recompiles():
    bench_run._configure(None)


@pytest.mark.slow
def test_quick_step_suite_runs_and_agrees():
    rows = step.run_suite(CPU, quick=True, progress=lambda m: None)["rows"]
    _assert_rows_sound(rows)
    names = {r.variant for r in rows if r.median_s}
    assert {"eager", "compile", "fused[cpp]"} <= names
    # Bandwidth counts read x + read grad + write y for every timed row.
    for row in rows:
        if row.median_s:
            assert row.gbps == pytest.approx(row.extra["bytes"] / row.median_s / 1e9)


@pytest.mark.slow
def test_quick_chain_suite_runs_and_agrees():
    rows = chain.run_suite(CPU, quick=True, progress=lambda m: None)["rows"]
    _assert_rows_sound(rows)
    mlp = {r.variant for r in rows if r.median_s and r.case.startswith("mlp")}
    assert {"eager", "compile", "fused[cpp]"} <= mlp


def test_torchebm_convention_maps_to_our_noise_scale():
    # torchebm adds sqrt(2 * ns^2) * sqrt(eta) * xi; ours adds s * xi with eta = a.
    a, s = 0.005, 0.1
    ns = peers.torchebm_noise_scale(a, s)
    assert (2 * ns ** 2) ** 0.5 * a ** 0.5 == pytest.approx(s)


def test_report_writes_json_png_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(step, "sizes", lambda device, quick: [14])
    record = bench_run.run("step", CPU, quick=True, out_dir=str(tmp_path), progress=lambda m: None)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.startswith("step-cpu-") and f.endswith("-quick.json") for f in files)
    assert any(f.endswith("-quick.png") for f in files)
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["machine"]["threads"] == torch.get_num_threads()
    assert saved["machine"]["torch"] == torch.__version__
    table = bench_run.markdown_table(record["row_objects"], "step")
    assert "| 2^14 fp32 | eager |" in table and "fused[cpp]" in table
