"""The benchmark suites run, every variant produces a number, and all variants agree on a fixed seed.

Timings are never asserted (CI machines are shared and noisy). What is asserted:
- every variant either produced a median time or was skipped for a reason this machine or this
  build explains (no GPU, no torchebm or jax, an option the chains do not have yet) - a variant
  that *failed* is a bug;
- every variant that ran matches the float32 eager reference driven by the same Philox noise
  within the tolerance of the suite (a wrong coefficient, a wrong torchebm or JAX convention or
  reused noise moves values by ~noise_scale = 0.1 or more, 100x the tolerance and beyond);
- the train suite's eager-op variant really runs the eager update inside the chains;
- results go to runs/bench/ (or --out) and into benchmarks/results/ only with --update-results;
- the report renders, the result files are written and can be rendered again.
The runs use --smoke sizes (a few samples of the smallest cases) to stay fast on 2 cores.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # benchmarks/ lives at the top of the checkout

from benchmarks import run as bench_run  # noqa: E402
from benchmarks.suites import chain, common, peers, train  # noqa: E402

CPU = torch.device("cpu")
# Reasons a variant may legitimately not run on a CPU-only CI machine.
EXPLAINED = ("Triton runs CUDA tensors only", "TRITON_INTERPRET=1", "extension built without CUDA",
             "no CUDA device", "CUDA graphs need a CUDA device", "torchebm is not installed",
             "jax is not installed", "compiled variants are left out", "timed up to 2^",
             "extension langevin_kernels._C not built", "the cuda backend runs CUDA tensors only",
             "is not available in this build", "TrainConfig has no", "has no compile option",
             "timed on CUDA only")


def _assert_rows_sound(rows, *, min_samples=common.SMOKE_REPEATS):
    assert rows
    for row in rows:
        if row.unavailable:
            assert row.unavailable.startswith(common.SKIPPED), f"{row.case} / {row.variant}: {row.unavailable}"
            assert any(reason in row.unavailable for reason in EXPLAINED), \
                f"{row.case} / {row.variant} did not run: {row.unavailable}"
            continue
        assert row.median_s is not None and row.median_s > 0, f"{row.case} / {row.variant} has no time"
        assert row.samples >= min_samples
        if row.agrees is not None:
            assert row.agrees, f"{row.case} / {row.variant}: max err {row.max_abs_err} vs reference"


@pytest.fixture(scope="module", autouse=True)
def _recompiles():
    bench_run._configure(None)


def test_step_suite_writes_json_png_and_renders(tmp_path):
    record = bench_run.run("step", CPU, quick=True, smoke=True, cases=["fp32"], out_dir=str(tmp_path),
                           progress=lambda m: None)
    rows = record["row_objects"]
    _assert_rows_sound(rows)
    assert {"eager", "compile", "fused[cpp]"} <= {r.variant for r in rows if r.median_s}
    assert all(r.agrees for r in rows if r.median_s)        # the step suite checks every variant
    copy_gbps = record["meta"]["copy_bandwidth_gbps"]
    assert copy_gbps > 0
    for row in rows:
        if row.median_s:
            # On CPU the device time is the wall time; bandwidth counts read x + read grad + write y.
            assert row.device_s == row.median_s
            assert row.gbps == pytest.approx(row.extra["bytes"] / row.device_s / 1e9)
            assert row.pct_copy == pytest.approx(100 * row.gbps / copy_gbps)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.startswith("step-cpu-") and f.endswith("-smoke.json") for f in files)
    assert any(f.endswith("-smoke.png") for f in files)
    saved = json.loads(Path(record["json_path"]).read_text())
    assert saved["complete"] and saved["mode"] == "smoke"
    assert saved["machine"]["threads"] == torch.get_num_threads()
    assert saved["machine"]["torch"] == torch.__version__
    table = bench_run.render([record["json_path"]])
    assert "| 2^14 fp32 | eager |" in table and "fused[cpp]" in table and "% of copy" in table


def test_chain_suite_smoke_runs_and_agrees():
    rows = chain.run_suite(CPU, quick=True, smoke=True, cases=["dw-small", "mlp"], steps=20, with_compile=False,
                           progress=lambda m: None)["rows"]
    _assert_rows_sound(rows)
    for case in ("dw-small", "mlp"):
        timed = {r.variant for r in rows if r.median_s and r.extra["case"] == case}
        assert {"eager", "lk[cpp]", "lk[cpp] lean"} <= timed
        # every row that computes the chain agrees (the GEMM floor replays products, no chain)
        assert all(r.agrees for r in rows if r.median_s and r.extra["case"] == case and r.variant != "GEMM floor")
    assert any(r.variant == "GEMM floor" and r.median_s for r in rows if r.extra["case"] == "mlp")
    variants = {r.variant for r in rows}
    assert {"torchebm", "jax", "lk graph", "lk[cpp] compile"} <= variants      # run or skipped with a reason
    for row in rows:
        if row.median_s:
            assert row.extra["us_per_step"] == pytest.approx(1e6 * row.median_s / 20)


def test_gemm_floor_records_every_product_of_forward_and_backward():
    from benchmarks.suites.gemm_floor import gemm_floor_variant, record_products
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 3)

    def three_gradients():
        for _ in range(3):
            leaf = x.detach().requires_grad_(True)
            torch.autograd.grad(net(leaf).sum(), leaf)

    ops = [op for op, _, _ in record_products(three_gradients)]
    # per gradient: 2 forward addmm; backward to the input: 2 mm (no weight gradients are asked for)
    assert ops.count(torch.ops.aten.addmm.default) == 6 and ops.count(torch.ops.aten.mm.default) == 6
    variant = gemm_floor_variant(three_gradients, what="three gradients")
    variant.run(0)                                   # replays on fresh tensors of the recorded layouts
    assert "12 matrix products" in variant.note
    assert gemm_floor_variant(lambda: torch.randn(3).sin(), what="a sine").unavailable


def test_compiled_chain_variant_agrees_or_says_why():
    case = chain.CASES["dw-small"](CPU, True, 5)
    variants = [v for v in chain.build_variants(case, CPU, with_compile=True) if v.name in ("eager", "lk[cpp] compile")]
    reference = chain.run_loop(lambda x, c, n: chain.eager_step(case, x, c, n), case, case.x0s[0], None, case.noises)
    rows = common.run_case("chain", case.name, variants, reference, CPU, len(case.x0s), tol=chain.chain_tolerance(case),
                           repeats=common.SMOKE_REPEATS, check=True, min_sample_s=1e-3,
                           min_repeats=common.SMOKE_REPEATS)
    _assert_rows_sound(rows)
    compiled = rows[1]
    if compiled.median_s:
        assert compiled.agrees and compiled.compile_s is not None
    else:
        assert "DataChain(compile=True)" in compiled.unavailable


def test_double_well_energy_and_its_jax_port_agree():
    x = torch.tensor([[0.0, 1.0], [2.0, -0.5]])
    # E = 2 * sum (x^2 - 1)^2: 2 * (1 + 0) and 2 * (9 + 0.5625)
    assert chain.double_well(x).tolist() == pytest.approx([2.0, 19.125])
    if peers.jax_unavailable(CPU):
        pytest.skip(peers.jax_unavailable(CPU))
    assert peers.to_torch(peers.jax_double_well(peers.to_jax(x, CPU)), CPU).tolist() == pytest.approx([2.0, 19.125])


def test_train_suite_eager_op_really_runs_the_eager_update():
    update = train.EagerUpdate()
    cfg = train.case_config("toy2d", CPU, smoke=True)
    data = train.batches("toy2d", cfg, CPU)
    method = train._method(cfg, tuple(data[0].shape[1:]))
    with train.eager_chains(update):
        method.train_step(data[0])
    # dual-MCMC runs the data chain twice and the latent chain once per iteration, 1 step each (smoke).
    assert update.calls >= 3
    calls = update.calls
    method.train_step(data[1])                               # outside the block: the fused op again
    assert update.calls == calls
    rows = train.run_suite(CPU, quick=True, smoke=True, cases=["toy2d"], progress=lambda m: None)["rows"]
    _assert_rows_sound(rows)
    assert {"eager-op", "fused"} <= {r.variant for r in rows if r.median_s}


def test_torchebm_convention_maps_to_our_noise_scale():
    # torchebm adds sqrt(2 * ns^2) * sqrt(eta) * xi; ours adds s * xi with eta = a.
    a, s = 0.005, 0.1
    ns = peers.torchebm_noise_scale(a, s)
    assert (2 * ns ** 2) ** 0.5 * a ** 0.5 == pytest.approx(s)


def test_results_go_to_runs_unless_update_results(monkeypatch):
    seen = []

    def fake_run(suite, device, *, out_dir, **kwargs):
        seen.append(out_dir)
        return {"mode": "quick", "wall_s": 0.0, "json_path": None, "row_objects": []}

    monkeypatch.setattr(bench_run, "run", fake_run)
    assert bench_run.main(["--suite", "step", "--device", "cpu"]) == 0
    assert bench_run.main(["--suite", "step", "--device", "cpu", "--out", "elsewhere"]) == 0
    assert bench_run.main(["--suite", "step", "--device", "cpu", "--update-results"]) == 0
    assert seen == [bench_run.DEFAULT_OUT, "elsewhere", bench_run.RESULTS_DIR]
    assert not Path(bench_run.DEFAULT_OUT).is_absolute() and bench_run.DEFAULT_OUT.startswith("runs")


def test_bad_cases_are_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_run.main(["--suite", "chain", "--device", "cpu", "--cases", "dw-small,nope"])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_gpu_check_script_parses_and_lists_the_issue_15_stages():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    listed = subprocess.run(["bash", str(script), "--list"], check=True, capture_output=True, text=True).stdout
    for stage in ("build", "gpu-tests", "memcheck", "step", "chain", "train", "resume"):
        assert stage in listed.split(), listed
