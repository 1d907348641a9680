"""A checkpoint written on a device and resumed through the CLI continues the run exactly.

    python -m benchmarks.resume_check --device cuda --out DIR [--iters 20] [--json FILE]

Runs `langevin-train` (toy2d, dual-MCMC) three times in subprocesses: A straight to --iters;
B to half of it, then B again with --resume to --iters. Passes when B's resumed run started
from the checkpoint (its history holds the evaluation written before the restart), ended at
--iters, and its final models equal A's: on one device with the same kernels the two runs do the
same arithmetic in the same order, so any difference (reported as the max absolute difference
over all parameters) means resume lost or changed state. Writes DIR/resume.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

# Same device, same kernels, same order of operations: the runs are bit-identical unless the
# checkpoint dropped state (RNG, optimiser moments, chain offsets) or a kernel is
# non-deterministic; the small margin only absorbs the latter's last-place differences.
MAX_DIFF = 1e-5


def _train(out: str, device: str, iters: int, half: int, resume: bool) -> dict:
    command = [sys.executable, "-m", "langevin_kernels.train", "--config", "toy2d", "--method", "dual",
               "--iters", str(iters), "--ckpt-every", str(half), "--eval-every", str(half), "--n-eval", "500",
               "--device", device, "--seed", "0", "--out", out, "--no-progress"]
    if resume:
        command.append("--resume")
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    return {"command": " ".join(command[1:]), "rc": done.returncode, "seconds": round(time.time() - start, 1),
            "stderr_tail": done.stderr[-2000:]}


def _checkpoint(run_dir: str) -> dict:
    # Our own file (RNG states and history beside the tensors): a full load is intended.
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)


def max_model_difference(a: dict, b: dict) -> float:
    """Max |a - b| over every model parameter and buffer of two checkpoints."""
    worst = 0.0
    for name, state in a["method"]["models"].items():
        for key, value in state.items():
            other = b["method"]["models"][name][key]
            if torch.is_tensor(value) and value.is_floating_point():
                worst = max(worst, (value.double() - other.double()).abs().max().item())
    return worst


def run(device: str, out: str, iters: int) -> dict:
    half = iters // 2
    straight, resumed = os.path.join(out, "straight"), os.path.join(out, "resumed")
    steps = {"straight": _train(straight, device, iters, half, False),
             "first half": _train(resumed, device, half, half, False),
             "resume": _train(resumed, device, iters, half, True)}
    result = {"device": device, "iters": iters, "steps": steps, "max_diff_allowed": MAX_DIFF}
    failed = [name for name, step in steps.items() if step["rc"] != 0]
    if failed:
        result.update(passed=False, reason=f"langevin-train failed in: {', '.join(failed)}")
        return result
    a, b = _checkpoint(straight), _checkpoint(resumed)
    evaluated = [entry["iteration"] for entry in b["history"]]
    result.update(iteration_straight=a["iteration"], iteration_resumed=b["iteration"], resumed_history=evaluated,
                  max_model_diff=max_model_difference(a, b))
    problems = []
    if b["iteration"] != iters:
        problems.append(f"the resumed run ended at iteration {b['iteration']}, not {iters}")
    if evaluated[:1] != [half]:
        problems.append(f"the resumed run's history {evaluated} does not start with the evaluation at {half} "
                        f"written before the restart: it did not resume")
    if not result["max_model_diff"] <= MAX_DIFF:
        problems.append(f"final models differ by {result['max_model_diff']:.3g} > {MAX_DIFF}")
    result.update(passed=not problems, reason="; ".join(problems) or "resumed run equals the straight run")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resume_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True, help="folder for the two run directories and resume.json")
    parser.add_argument("--iters", type=int, default=20, help="even, >= 2")
    parser.add_argument("--json", default=None, help="where to write the result (default OUT/resume.json)")
    args = parser.parse_args(argv)
    if args.iters < 2 or args.iters % 2:
        parser.error(f"--iters {args.iters}: need an even number >= 2 (the checkpoint is written at half)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    os.makedirs(args.out, exist_ok=True)
    result = run(args.device, args.out, args.iters)
    with open(args.json or os.path.join(args.out, "resume.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=1))
    for name, step in result["steps"].items():
        print(f"{name}: rc={step['rc']} in {step['seconds']} s: {step['command']}")
        if step["rc"]:
            print(step["stderr_tail"])
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
