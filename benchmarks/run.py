"""Report command: run benchmark suites, print a markdown table, write JSON and a PNG chart.

    python -m benchmarks.run --suite step|chain|train|samplers|all [--device cpu|cuda] [--quick | --smoke]
                             [--threads N] [--no-check] [--cases a,b] [--out DIR | --update-results]
    python -m benchmarks.run --render FILE.json [FILE.json ...]     # tables of saved results

Writes <out>/<suite>-<device>-<date>[-quick|-smoke].json with the machine record (CPU model or
GPU name, torch/triton/torchebm/jax versions, git commit, thread count) and every row, and a PNG
chart beside it. <out> is runs/bench/ unless --out is given; --update-results writes into
benchmarks/results/ (the files the README quotes), the only way this command writes into the
source tree. The JSON is rewritten after every case, so a run stopped by a time limit keeps the
cases it finished. Variants of a case run side by side in this one process; the numbers to quote
are the ratios (speedup vs the eager baseline); absolute GPU numbers only from a GPU run.
--smoke runs the smallest sizes and chains to check the code paths: its timings mean nothing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time

import torch

from langevin_kernels._optional import pyplot

from .suites import common

SUITES = ("step", "chain", "train", "samplers")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_OUT = os.path.join("runs", "bench")
BASELINE = {"step": "eager", "chain": "eager", "train": "eager-op", "samplers": "lk ula"}


def _suite_module(name: str):
    from .suites import chain, samplers, step, train
    return {"step": step, "chain": chain, "train": train, "samplers": samplers}[name]


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _time(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def samplers_table(rows: list[common.Row]) -> str:
    """The samplers suite's table: mixing per gradient and per second, acceptance, moment bias;
    timing-only rows (compiled kept steps) fill the cost columns alone."""
    head = ["case", "variant", "grads/chain", "min ESS", "ESS/grad", "vs lk ula", "ESS/s", "accept", "in band",
            "max R-hat", "mean bias (sd)", "var rel err", "wall", "us/kept step", "compile", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.unavailable:
            cells = [r.case, r.variant] + ["-"] * (len(head) - 3) + [r.unavailable]
        else:
            e = r.extra
            nonfinite = e.get("nonfinite_chains")
            cells = [r.case, r.variant, e["grads_per_chain"], _fmt(e.get("ess_min"), ".0f"),
                     _fmt(e.get("ess_per_grad"), ".2e"), _fmt(r.speedup_vs_eager, ".2f") + "x" if r.speedup_vs_eager else "-",
                     _fmt(e.get("ess_per_s"), ".0f"), _fmt(e["acceptance"], ".2f"), _fmt(e.get("in_band"), ".0%"),
                     _fmt(e.get("rhat_max"), ".3f"), _fmt(e.get("mean_bias_sd"), ".3f"),
                     _fmt(e.get("var_rel_err"), ".3f"), _time(r.median_s), _fmt(e.get("us_per_kept_step"), ".0f"),
                     "-" if r.compile_s is None else f"{r.compile_s:.1f} s",
                     r.note + (f"; {nonfinite} chains non-finite" if nonfinite else "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[common.Row], suite: str) -> str:
    """One markdown table for a suite's rows; variants that did not run carry their reason."""
    if suite == "samplers":
        return samplers_table(rows)
    step = suite == "step"
    head = ["case", "variant", "median", f"vs {BASELINE[suite]}"]
    head += ["device time", "GB/s", "% of copy"] if step else ["us/step"] if suite == "chain" else []
    head += ["compile", "max err vs ref", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        metrics = 3 if step else 1 if suite == "chain" else 0
        if r.unavailable:
            cells = [r.case, r.variant, "n/a", "-"] + ["-"] * metrics + ["-", "-", r.unavailable]
        else:
            agree = "" if r.agrees is None else (" ok" if r.agrees else " MISMATCH")
            cells = [r.case, r.variant, _time(r.median_s), _fmt(r.speedup_vs_eager, ".2f") + "x"]
            if step:
                cells += [_time(r.device_s), _fmt(r.gbps, ".1f"), _fmt(r.pct_copy, ".0f")]
            elif suite == "chain":
                cells += [_fmt(r.extra.get("us_per_step"), ".1f")]
            err = "-" if r.max_abs_err is None else _fmt(r.max_abs_err, ".1e")
            if "p999_abs_err" in r.extra:
                err += f" (99.9%: {_fmt(r.extra['p999_abs_err'], '.1e')})"
            cells += ["-" if r.compile_s is None else f"{r.compile_s:.1f} s", err + agree, r.note]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(rows: list[common.Row], suite: str, path: str, title: str) -> None:
    """Step: GB/s vs size per variant and dtype. Chain/train: speedup vs the baseline per case."""
    plt = pyplot("the benchmark figures")

    timed = [r for r in rows if r.median_s]
    if suite == "samplers":
        fig = _plot_samplers(plt, timed)
    elif suite == "step":
        dtypes = list(dict.fromkeys(r.extra["dtype"] for r in timed))
        fig, axes = plt.subplots(1, max(1, len(dtypes)), figsize=(6 * max(1, len(dtypes)), 4.5), squeeze=False)
        for ax, dtype in zip(axes[0], dtypes):
            for variant in dict.fromkeys(r.variant for r in timed):
                pts = sorted((r.extra["numel"], r.gbps) for r in timed if r.variant == variant and r.extra["dtype"] == dtype)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=variant)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("elements")
            ax.set_ylabel("effective GB/s (read x, grad; write y)")
            ax.set_title(dtype)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    else:
        cases = list(dict.fromkeys(r.case for r in timed if r.speedup_vs_eager))
        fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(5 * max(1, len(cases)), 4.5), squeeze=False)
        for ax, case in zip(axes[0], cases):
            case_rows = [r for r in timed if r.case == case and r.speedup_vs_eager]
            ratios = [r.speedup_vs_eager for r in case_rows]
            wide = max(ratios) / min(ratios) > 20        # e.g. a whole-run compiled chain: log axis
            left = min(0.5, min(ratios) / 2) if wide else 0.0
            ax.barh([r.variant for r in case_rows], [x - left for x in ratios], left=left)
            for y, (ratio, row) in enumerate(zip(ratios, case_rows)):
                per_step = row.extra.get("us_per_step")
                label = f" {ratio:.2f}x" + (f" ({per_step:.0f} us/step)" if per_step else f" ({_time(row.median_s)})")
                ax.text(ratio, y, label, va="center", fontsize=7)
            if wide:
                ax.set_xscale("log")
            ax.axvline(1.0, color="k", linewidth=0.8)
            ax.set_xlim(left, max(ratios) * (3 if wide else 1.6))
            ax.set_xlabel(f"speedup vs {BASELINE[suite]} (higher is faster{', log' if wide else ''})")
            ax.set_title(case, fontsize=9)
            ax.invert_yaxis()
            ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_samplers(plt, rows: list[common.Row]):
    """Per case: ESS per gradient evaluation (log) of each variant that ran, bias in the label."""
    from matplotlib import ticker
    cases = list(dict.fromkeys(r.case for r in rows))
    fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(5 * max(1, len(cases)), 4.5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        case_rows = [r for r in rows if r.case == case and r.extra.get("ess_per_grad", 0) > 0]
        values = [r.extra["ess_per_grad"] for r in case_rows]
        ax.barh([r.variant for r in case_rows], values)
        for y, row in enumerate(case_rows):
            var_err = row.extra["var_rel_err"]
            var_text = f"{var_err:.0%}" if var_err < 10 else f"{var_err:.0e}x"    # diverged chains: huge
            ax.text(row.extra["ess_per_grad"], y, f" {row.extra['ess_per_grad']:.1e} "
                    f"(bias {row.extra['mean_bias_sd']:.2g} sd, var err {var_text})", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())     # a narrow log range labels its minor ticks
        if values:
            ax.set_xlim(min(values) / 2, max(values) * 30)
        ax.set_xlabel("min-coordinate bulk ESS per gradient evaluation (higher is better, log)")
        ax.set_title(case, fontsize=9)
        ax.invert_yaxis()
        ax.grid(True, axis="x", which="both", alpha=0.3)
    return fig


def _mode(quick: bool, smoke: bool) -> str:
    return "smoke" if smoke else "quick" if quick else "full"


def result_path(out_dir: str, suite: str, device: torch.device, mode: str, ext: str) -> str:
    date = dt.date.today().isoformat()
    suffix = "" if mode == "full" else f"-{mode}"
    return os.path.join(out_dir, f"{suite}-{device.type}-{date}{suffix}.{ext}")


def _suite_kwargs(suite: str, smoke: bool, cases) -> dict:
    """What --smoke and --cases mean for each suite."""
    kwargs = {}
    if cases:
        kwargs["cases"] = cases
    if smoke:
        kwargs["smoke"] = True
    return kwargs


def run(suite: str, device: torch.device, *, quick: bool, smoke: bool = False, check: bool = True,
        repeats: int = common.MIN_REPEATS, cases=None, out_dir: str | None = DEFAULT_OUT, progress=print) -> dict:
    """Run one suite; returns its result dict (and writes JSON + PNG into out_dir unless None).

    The JSON is rewritten after each case (partial results survive a killed run); the PNG is
    drawn at the end.
    """
    started = time.time()
    machine = common.machine_record(device)
    mode = _mode(quick or smoke, smoke)
    json_path = result_path(out_dir, suite, device, mode, "json") if out_dir is not None else None

    def record_of(rows, meta, complete):
        return {"suite": suite, "mode": mode, "quick": quick or smoke, "complete": complete,
                "date": dt.datetime.now().isoformat(timespec="seconds"), "wall_s": round(time.time() - started, 1),
                "machine": machine, "meta": meta, "rows": [r.as_dict() for r in rows]}

    def save(record):
        if json_path is None:
            return
        os.makedirs(out_dir, exist_ok=True)
        with open(json_path + ".tmp", "w") as f:
            json.dump(record, f, indent=1, default=str)
        os.replace(json_path + ".tmp", json_path)

    result = _suite_module(suite).run_suite(device, quick=quick or smoke, check=check, repeats=repeats,
                                            progress=progress, on_rows=lambda rows: save(record_of(rows, {}, False)),
                                            **_suite_kwargs(suite, smoke, cases))
    record = record_of(result["rows"], result["meta"], True)
    save(record)
    if json_path is not None:
        name = machine.get("gpu_name") or machine["cpu_model"]
        plot(result["rows"], suite, result_path(out_dir, suite, device, mode, "png"),
             f"{suite} suite ({mode}) on {name} ({machine['threads']} threads), torch {machine['torch']}")
    record["row_objects"] = result["rows"]
    record["json_path"] = json_path
    return record


def rows_from_json(path: str) -> tuple[dict, list[common.Row]]:
    """(record, rows) of a saved result file."""
    with open(path) as f:
        record = json.load(f)
    return record, [common.Row(**row) for row in record["rows"]]


def render(paths: list[str]) -> str:
    """Markdown of saved result files: a line naming the machine, then the table, per file."""
    parts = []
    for path in paths:
        record, rows = rows_from_json(path)
        machine = record["machine"]
        name = machine.get("gpu_name") or machine["cpu_model"]
        extra = f", copy {record['meta']['copy_bandwidth_gbps']:.0f} GB/s" \
            if record.get("meta", {}).get("copy_bandwidth_gbps") else ""
        parts.append(f"### {record['suite']} ({record.get('mode', 'quick' if record.get('quick') else 'full')}) "
                     f"on {name}, {machine['threads']} threads, torch {machine['torch']}, "
                     f"commit {machine.get('git_commit')}{extra}\n\n{markdown_table(rows, record['suite'])}\n")
    return "\n".join(parts)


def _configure(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    # Each (shape, dtype) gets its own static compile, as a user with fixed shapes gets; allow it.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES + ("all",), default="all")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer sizes, shorter network chains (minutes on 2 CPU cores)")
    speed.add_argument("--smoke", action="store_true", help="smallest sizes and chains: checks the code paths, "
                       "the timings mean nothing (the GPU script's dry run)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for every variant")
    parser.add_argument("--repeats", type=int, default=common.MIN_REPEATS, help="timed samples per variant (>= 10)")
    parser.add_argument("--no-check", action="store_true", help="skip the agreement check on a fixed seed")
    parser.add_argument("--cases", default=None, help="comma-separated case keys of the suite (default: all)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help=f"folder for the JSON and PNG files (default {DEFAULT_OUT})")
    where.add_argument("--update-results", action="store_true",
                       help="write into benchmarks/results/ (the files the README quotes)")
    parser.add_argument("--render", nargs="+", metavar="FILE", help="print the tables of saved result files and exit")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    if args.repeats < common.MIN_REPEATS:
        parser.error(f"--repeats {args.repeats}: at least {common.MIN_REPEATS} samples are needed for a median")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    cases = args.cases.split(",") if args.cases else None
    if cases and args.suite == "all":
        parser.error("--cases needs one --suite (case keys differ between suites)")
    if cases:
        known = _suite_module(args.suite).CASES
        unknown = [c for c in cases if c not in known]
        if unknown:
            parser.error(f"--cases: {', '.join(unknown)} not in the {args.suite} suite; allowed: {', '.join(known)}")
    out_dir = RESULTS_DIR if args.update_results else (args.out or DEFAULT_OUT)
    _configure(args.threads)
    machine = common.machine_record(device)
    print(f"# benchmarks on {machine.get('gpu_name') or machine['cpu_model']}, {machine['threads']} threads, "
          f"torch {machine['torch']}, triton {machine['triton']}, torchebm {machine['torchebm']}, "
          f"jax {machine['jax']}, commit {machine['git_commit']}\n", flush=True)
    mismatches = failures = 0
    for suite in (SUITES if args.suite == "all" else (args.suite,)):
        record = run(suite, device, quick=args.quick, smoke=args.smoke, check=not args.no_check,
                     repeats=args.repeats, cases=cases, out_dir=out_dir,
                     progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(f"## {suite} ({record['mode']}, {record['wall_s']} s) -> {record['json_path']}\n")
        print(markdown_table(record["row_objects"], suite) + "\n", flush=True)
        mismatches += sum(1 for r in record["row_objects"] if r.agrees is False)
        failures += sum(1 for r in record["row_objects"] if (r.unavailable or "").startswith(common.FAILED))
    if mismatches:
        print(f"{mismatches} variant(s) disagree with the reference beyond tolerance (see 'max err')", file=sys.stderr)
    if failures:
        print(f"{failures} variant(s) failed (rows starting with '{common.FAILED}')", file=sys.stderr)
    return 1 if mismatches or failures else 0


if __name__ == "__main__":
    sys.exit(main())
