"""The CPU demo: dual-MCMC teaching on 8 Gaussians (``python -m langevin_kernels.train.demo``).

Trains the toy2d preset for a few minutes on 2 cores and writes, under --out (default runs/demo):
density.png (model density exp(-E/T) next to true, generator and EBM-chain samples),
metrics.json (grid KL/TV, MMD^2, modes covered, realistic ratio), config.json, checkpoint.pt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

DEMO_ITERS = 600


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m langevin_kernels.train.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--iters", type=int, default=DEMO_ITERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .config import preset
    from .rundir import claim_run_directory
    from .trainer import Trainer

    cfg = preset("toy2d", dataset="8gaussians", method="dual", iters=args.iters, seed=args.seed,
                 eval_every=max(1, args.iters // 3), ckpt_every=args.iters, n_eval=2000)
    start = time.time()
    # The demo always starts over: its previous outputs (not other files) are replaced.
    with claim_run_directory(args.out, overwrite=True):
        trainer = Trainer(cfg, args.out, progress=not args.no_progress)
        history = trainer.train()
    final = {k: v for k, v in history[-1].items() if k != "losses"}
    final["wall_seconds"] = round(time.time() - start, 1)
    print(json.dumps(final, indent=2))
    print(f"wrote {args.out}/density.png and {args.out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
