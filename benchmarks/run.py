"""Report command: run benchmark suites, print a markdown table, write JSON and a PNG chart.

    python -m benchmarks.run --suite step|chain|train|all [--device cpu|cuda] [--quick]
                             [--threads N] [--no-check] [--out DIR]

Writes <out>/<suite>-<device>-<date>.json (and -quick.json for --quick runs) with the machine
record (CPU model or GPU name, torch/triton versions, git commit, thread count) and every row,
and a PNG chart beside it. Variants of a case run side by side in this one process; the numbers
to quote are the ratios (speedup vs eager); absolute GPU numbers only from a GPU run.
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

from .suites import common

SUITES = ("step", "chain", "train")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _suite_module(name: str):
    from .suites import chain, step, train
    return {"step": step, "chain": chain, "train": train}[name]


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


def markdown_table(rows: list[common.Row], suite: str) -> str:
    """One markdown table for a suite's rows; unavailable variants carry their reason."""
    step = suite == "step"
    head = ["case", "variant", "median", "speedup vs eager"]
    head += ["GB/s", "% of copy"] if step else ["per step"]
    head += ["compile", "max err vs ref", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.unavailable:
            cells = [r.case, r.variant, "n/a", "-"] + (["-", "-"] if step else ["-"]) + ["-", "-", r.unavailable]
        else:
            agree = "" if r.agrees is None else (" ok" if r.agrees else " MISMATCH")
            cells = [r.case, r.variant, _time(r.median_s), _fmt(r.speedup_vs_eager, ".2f") + "x"]
            if step:
                cells += [_fmt(r.gbps, ".2f"), _fmt(r.pct_copy, ".0f")]
            else:
                per_step = r.extra.get("ms_per_step")
                cells += ["-" if per_step is None else _time(per_step / 1e3)]
            cells += ["-" if r.compile_s is None else f"{r.compile_s:.1f} s",
                      (_fmt(r.max_abs_err, ".1e") + agree) if r.max_abs_err is not None else "-", r.note]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(rows: list[common.Row], suite: str, path: str, title: str) -> None:
    """Step: GB/s vs size per variant and dtype. Chain/train: median time per variant per case."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.median_s]
    if suite == "step":
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
        cases = list(dict.fromkeys(r.case for r in timed))
        fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(5 * max(1, len(cases)), 4.5), squeeze=False)
        for ax, case in zip(axes[0], cases):
            case_rows = [r for r in timed if r.case == case]
            ax.barh([r.variant for r in case_rows], [r.median_s * 1e3 for r in case_rows])
            ax.set_xlabel("median ms per run")
            ax.set_title(case, fontsize=9)
            ax.invert_yaxis()
            ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def result_path(out_dir: str, suite: str, device: torch.device, quick: bool, ext: str) -> str:
    date = dt.date.today().isoformat()
    return os.path.join(out_dir, f"{suite}-{device.type}-{date}{'-quick' if quick else ''}.{ext}")


def run(suite: str, device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
        out_dir: str | None = RESULTS_DIR, progress=print) -> dict:
    """Run one suite; returns its result dict (and writes JSON + PNG into out_dir unless None)."""
    started = time.time()
    result = _suite_module(suite).run_suite(device, quick=quick, check=check, repeats=repeats, progress=progress)
    machine = common.machine_record(device)
    record = {"suite": suite, "quick": quick, "date": dt.datetime.now().isoformat(timespec="seconds"),
              "wall_s": round(time.time() - started, 1), "machine": machine, "meta": result["meta"],
              "rows": [r.as_dict() for r in result["rows"]]}
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(result_path(out_dir, suite, device, quick, "json"), "w") as f:
            json.dump(record, f, indent=1, default=str)
        name = machine.get("gpu_name") or machine["cpu_model"]
        plot(result["rows"], suite, result_path(out_dir, suite, device, quick, "png"),
             f"{suite} suite on {name} ({machine['threads']} threads), torch {machine['torch']}")
    record["row_objects"] = result["rows"]
    return record


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
    parser.add_argument("--quick", action="store_true", help="small sizes and short chains (< 3 min on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for every variant")
    parser.add_argument("--repeats", type=int, default=common.MIN_REPEATS, help="timed samples per variant (>= 10)")
    parser.add_argument("--no-check", action="store_true", help="skip the agreement check on a fixed seed")
    parser.add_argument("--out", default=RESULTS_DIR, help="folder for the JSON and PNG files")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    _configure(args.threads)
    machine = common.machine_record(device)
    print(f"# benchmarks on {machine.get('gpu_name') or machine['cpu_model']}, {machine['threads']} threads, "
          f"torch {machine['torch']}, triton {machine['triton']}, torchebm {machine['torchebm']}, "
          f"commit {machine['git_commit']}\n", flush=True)
    mismatches = 0
    for suite in (SUITES if args.suite == "all" else (args.suite,)):
        record = run(suite, device, quick=args.quick, check=not args.no_check, repeats=args.repeats,
                     out_dir=args.out, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(f"## {suite} ({'quick, ' if args.quick else ''}{record['wall_s']} s)\n")
        print(markdown_table(record["row_objects"], suite) + "\n", flush=True)
        mismatches += sum(1 for r in record["row_objects"] if r.agrees is False)
    if mismatches:
        print(f"{mismatches} variant(s) disagree with the reference beyond tolerance (see 'max err')", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
