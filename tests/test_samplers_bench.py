"""The samplers benchmark suite (benchmarks/suites/samplers.py) in --smoke mode, and the JAX ports
of the known targets against the torch energies.

Asserted: every case has a row for each of its variants (samplers.variants_for); a variant either produced its statistics
(finite ESS per gradient, an honest gradient count) or says why it did not run - a missing
optional peer (ebmkit, blackjax/jax) or a library feature not in this build is a skip with a
reason, an exception is a failure and a bug. Numbers are not asserted: smoke chains are far too
short to mean anything (docs/benchmarks.md quotes the --quick run).
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # benchmarks/ lives at the top of the checkout

from benchmarks import run as bench_run  # noqa: E402
from benchmarks.suites import common, peers, samplers  # noqa: E402

CPU = torch.device("cpu")
EXPLAINED = ("ebmkit is not installed", "blackjax is not installed", "jax is not installed")


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("samplers")
    return bench_run.run("samplers", CPU, quick=True, smoke=True, out_dir=str(out), progress=lambda m: None)


MH_VARIANTS = ("lk mala", "ebmkit AdaptiveMALA", "blackjax MALA", samplers.ADAPTIVE)


def test_every_target_has_every_variant_run_or_skipped_with_a_reason(smoke_record):
    rows = smoke_record["row_objects"]
    seen = {(r.extra["case"], r.variant) for r in rows}
    assert seen == {(case, variant) for case in samplers.CASES for variant in samplers.variants_for(case)}
    for row in rows:
        if row.unavailable:
            assert row.unavailable.startswith(common.SKIPPED), f"{row.case} / {row.variant}: {row.unavailable}"
            assert any(reason in row.unavailable for reason in EXPLAINED), row.unavailable
            continue
        assert row.extra["grads_per_chain"] > 0 and row.median_s > 0 and row.extra["wall_s"] == row.median_s
        if row.extra.get("timing_only"):
            continue
        assert row.extra["kept_draws"] >= 4
        if row.variant in MH_VARIANTS:
            assert math.isfinite(row.extra["ess_per_grad"]) and row.extra["ess_per_grad"] > 0
            assert 0.0 <= row.extra["acceptance"] <= 1.0
            assert 0.0 <= row.extra["in_band"] <= 1.0


def test_per_chain_scaled_gaussian_compares_per_chain_and_shared_tuning(smoke_record):
    rows = {r.variant: r for r in smoke_record["row_objects"] if r.extra["case"] == samplers.SCALED}
    assert set(rows) == set(samplers.SCALED_VARIANTS)
    for variant in ("lk mala", samplers.ADAPTIVE):
        assert rows[variant].extra["in_band"] is not None
    lo, hi = (float(rows[samplers.ADAPTIVE].extra[k]) for k in ("step_size_min", "step_size_max"))
    assert hi > 10 * lo       # the per-chain steps follow scales three decades apart


def test_compiled_adaptive_mala_reports_kept_step_time_and_compile_seconds(smoke_record):
    rows = {r.variant: r for r in smoke_record["row_objects"] if r.extra["case"] == "gauss"}
    assert rows[samplers.ADAPTIVE].extra["us_per_kept_step"] > 0
    for variant in samplers.COMPILED:
        row = rows[variant]
        assert row.unavailable is None and row.extra["timing_only"]
        assert row.extra["us_per_kept_step"] > 0 and row.compile_s is not None and row.compile_s >= 0
        assert row.extra["warmup_us_per_step"] >= 0
    assert rows[samplers.COMPILED[0]].extra["in_band"] is not None      # track_stats on
    assert rows[samplers.COMPILED[1]].extra["in_band"] is None          # lean: no per-step records


def test_gradients_are_counted_as_each_implementation_evaluates_them(smoke_record):
    warm, keep = samplers.BUDGETS["smoke"]
    for row in smoke_record["row_objects"]:
        if row.unavailable or row.extra.get("timing_only"):
            continue
        grads = row.extra["grads_per_chain"]
        if row.variant == "ebmkit HMC":
            per = samplers.HMC_LEAPFROG + 1       # L leapfrog gradients + the start's, per trajectory
            assert grads == per * (warm // per + keep // per)
            assert row.extra["kept_draws"] == keep // per
        elif row.variant == "ebmkit AdaptiveMALA":
            assert grads == 2 * (warm // 2 + keep // 2) and row.extra["kept_draws"] == keep // 2
        elif row.variant == "lk mala":              # each tuning block re-evaluates its start
            blocks = warm // (samplers.TUNE_BLOCK + 1)
            assert grads == blocks * (samplers.TUNE_BLOCK + 1) + keep
        else:
            assert grads in (warm + keep, warm + keep + 1)


def test_json_png_and_table(smoke_record):
    saved = json.loads(Path(smoke_record["json_path"]).read_text())
    assert saved["suite"] == "samplers" and saved["mode"] == "smoke" and saved["complete"]
    assert saved["meta"]["chains"] == samplers.SMOKE_CHAINS
    assert Path(smoke_record["json_path"].replace(".json", ".png")).exists()
    table = bench_run.render([smoke_record["json_path"]])
    assert "ESS/grad" in table and "| funnel 10-D | lk kinetic |" in table
    assert "| in band |" in table and "| compile |" in table and samplers.NAMES[samplers.SCALED] in table


@pytest.mark.parametrize("key", samplers.TARGETS)
def test_jax_port_of_each_target_equals_the_torch_energy(key):
    if peers.jax_unavailable(CPU):
        pytest.skip(peers.jax_unavailable(CPU))
    target = samplers.TARGETS[key]()
    x = target.sample(5, torch.Generator().manual_seed(1)).float()
    want = target.energy(x)
    got = peers.to_torch(target.jax_energy()(peers.to_jax(x, CPU)), CPU)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
