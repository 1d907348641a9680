"""The CPU demo: dual-MCMC teaching on 8 Gaussians (``python -m langevin_kernels.train.demo``).

Trains the toy2d preset with DEMO_SETTINGS (half-width networks, batch 128, learning rates 2e-3,
data-chain steps s = n = 0.2 at T = 1: the same method and chain lengths, cheaper per iteration,
and compiled chains, so 5000 iterations fit in about 70 s on one thread) and writes, under --out (default runs/demo): density.png (model density exp(-E/T) next to true,
generator and EBM-chain samples), learning_curve.png (grid KL and MMD^2 against iteration),
metrics.json (grid KL/TV, MMD^2, modes covered, realistic ratio), losses.csv, config.json,
checkpoint.pt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

DEMO_ITERS = 5000   # the generator's samples gather at the modes from about 4500 on (README)
#: toy2d preset overrides of the demo, chosen by measurement (README, "What make demo shows").
# compile=True: the chains as compiled scans, 71 s against 89 s uncompiled for the whole demo on one
# thread, cold inductor cache included (2026-12-04, README).
DEMO_SETTINGS = dict(batch_size=128, width_mult=0.5, lr_energy=2e-3, lr_generator=2e-3, lr_encoder=2e-3, n_eval=2000,
                     x_step=0.2, x_noise=0.2, compile=True)
DEMO_EVALUATIONS = 10  # points of the learning curve (about 1 s each)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m langevin_kernels.train.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--iters", type=int, default=DEMO_ITERS)
    p.add_argument("--seed", type=int, default=0)
    # One thread: these tiny states gain nothing from a second (3000 iterations: 69 s on 1, 78 s on 2).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .config import preset
    from .rundir import claim_run_directory
    from .trainer import Trainer

    cfg = preset("toy2d", dataset="8gaussians", method="dual", iters=args.iters, seed=args.seed,
                 eval_every=max(1, args.iters // DEMO_EVALUATIONS), ckpt_every=args.iters, **DEMO_SETTINGS)
    start = time.time()
    # The demo always starts over: its previous outputs (not other files) are replaced.
    with claim_run_directory(args.out, overwrite=True):
        trainer = Trainer(cfg, args.out, progress=not args.no_progress)
        history = trainer.train()
    final = {k: v for k, v in history[-1].items() if k != "losses"}
    final["wall_seconds"] = round(time.time() - start, 1)
    print(json.dumps(final, indent=2))
    print(f"wrote {args.out}/density.png, {args.out}/learning_curve.png and {args.out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
