"""``langevin-train``: train dual-MCMC teaching or a baseline from the command line.

    langevin-train --config toy2d --dataset 8gaussians --method dual --iters 2000 --out runs/dual8 --seed 0
    langevin-train --config digits --method coop --iters 3000 --out runs/digits_coop
    langevin-train --config cifar10 --data-root /data/cifar --out runs/cifar   # reference settings
    torchrun --nproc-per-node 2 -m langevin_kernels.train --config toy2d ...  # DDP (gloo on CPU)

A non-empty --out is refused unless --resume (continue the run there) or --overwrite (delete it and
start over) says what to do with it; a run directory is locked while a run uses it.

Exit status: 0 done, 2 bad arguments (an unusable --out included), missing or malformed data or an
unusable checkpoint (the message names the file and what to do), 3 training diverged, 130 / 143
interrupted by SIGINT (Ctrl-C) / SIGTERM: the last completed iteration is saved; continue with --resume.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from .config import METHODS, PRESETS, preset
from .data import DataRootError, TOY_DATASETS
from .rundir import claim_run_directory, remove_run_outputs


def _preset_defaults(field: str) -> str:
    """"default by preset: toy2d 2000, digits 2000, ..." for an option the preset fills in."""
    values = {name: getattr(make(), field) for name, make in PRESETS.items()}
    return "default by preset: " + ", ".join(f"{k} {v}" for k, v in values.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="langevin-train", description=__doc__.split("\n")[0].replace("``", ""),
                                epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy2d", choices=list(PRESETS),
                   help="preset: model sizes, chain settings and learning rates (default: toy2d)")
    p.add_argument("--dataset", default=None,
                   help=f"toy2d: one of {', '.join(TOY_DATASETS)}; image configs: cifar10, celeba64, svhn, "
                        f"mnist, imagefolder ({_preset_defaults('dataset')})")
    p.add_argument("--method", default="dual", choices=list(METHODS),
                   help="dual-MCMC teaching or a baseline (default: dual)")
    p.add_argument("--iters", type=int, default=None, help=f"training iterations ({_preset_defaults('iters')})")
    p.add_argument("--out", required=True,
                   help="run directory: config.json, metrics.json, losses.csv, plots, checkpoint.pt (required)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random in the run (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); under torchrun the rank's GPU (default: cpu)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out (checkpoint, metrics, plots) and start over")
    p.add_argument("--data-root", default=None,
                   help="local folder of an image data set (default: none; ./data with --download)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the image data set")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"data points per iteration, per rank under torchrun ({_preset_defaults('batch_size')})")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"iterations between evaluations ({_preset_defaults('eval_every')})")
    p.add_argument("--ckpt-every", type=int, default=None,
                   help=f"iterations between checkpoints ({_preset_defaults('ckpt_every')})")
    p.add_argument("--n-eval", type=int, default=None,
                   help=f"samples per evaluation ({_preset_defaults('n_eval')})")
    p.add_argument("--width-mult", type=float, default=None,
                   help="scale every model's hidden units / channels (toy2d and image configs; default: 1.0, "
                        "the documented architectures)")
    p.add_argument("--fid-weights", default=None, metavar="PATH",
                   help="image configs: a local TorchScript Inception feature network for FID (see train/fid.py); "
                        "default: none, FID skipped and metrics.json says why")
    p.add_argument("--compile", action="store_true",
                   help="run the chains as torch.compile blocks (faster on small states after a compile of 10-60 s)")
    p.add_argument("--capture-graph", action="store_true",
                   help="CUDA: replay each training chain as one captured CUDA graph (the chains are "
                        "launch-bound on a GPU: 7-45x faster per step on an H200, README 'Chains on a GPU')")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads on the CPU (default: torch's choice, all cores)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar; one line per evaluation instead (for logs)")
    return p


def config_from_args(args):
    return preset(args.config, dataset=args.dataset, method=args.method, iters=args.iters, seed=args.seed,
                  device=args.device, batch_size=args.batch_size, eval_every=args.eval_every,
                  ckpt_every=args.ckpt_every, n_eval=args.n_eval, compile=args.compile or None,
                  capture_graph=args.capture_graph or None,
                  width_mult=args.width_mult)


def _check_ranks_resumed_together(trainer) -> None:
    """Under DDP every rank must continue from the same iteration (each has its own checkpoint file)."""
    from .distributed import all_values
    from .checkpoints import CheckpointError

    iterations = all_values(trainer.iteration)
    if len(set(iterations)) > 1:
        err = CheckpointError(f"the ranks' checkpoints are at different iterations ({iterations}, rank by rank); "
                              f"they cannot be resumed together. Start over with --overwrite")
        err.agreed = True  # every rank sees the same list and raises the same error
        raise err


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .distributed import distributed_context, on_all_ranks
    from .trainer import Trainer, TrainingDiverged, TrainingInterrupted

    try:
        cfg = config_from_args(args)
        with distributed_context(cfg) as (rank, world, wrap), contextlib.ExitStack() as held:
            if rank == 0:  # one lock per run directory, held by rank 0 until the run ends
                held.enter_context(on_all_ranks(lambda: claim_run_directory(
                    args.out, resume=args.resume, overwrite=args.overwrite)))
            else:
                on_all_ranks(lambda: None)  # rank 0's verdict on --out, shared

            def start():
                trainer = Trainer(cfg, args.out, data_root=args.data_root, download=args.download,
                                  progress=not args.no_progress, rank=rank, world_size=world, wrap=wrap,
                                  fid_weights=args.fid_weights)
                return trainer, args.resume and trainer.resume()

            trainer, resumed = on_all_ranks(start)
            _check_ranks_resumed_together(trainer)
            if args.resume and not resumed and rank == 0:
                removed = remove_run_outputs(args.out)
                print(f"--resume: no checkpoint in {args.out}; starting from scratch"
                      + (f" (removed the earlier attempt's {', '.join(removed)})" if removed else ""),
                      file=sys.stderr)
            try:
                history = trainer.train()
            finally:
                trainer = None   # its DDP wrappers go before the process group (distributed_context)
    except (ValueError, DataRootError, ImportError) as err:
        # Bad settings or --out, missing or malformed data, an unusable checkpoint (CheckpointError), a
        # missing optional dependency: one line naming the cause, no traceback.
        print(f"langevin-train: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"langevin-train: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:  # a checkpoint of the last completed iteration was saved
        if rank == 0:  # under DDP every rank stopped at the same iteration; one line says so
            print(f"langevin-train: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: nothing new saved
        print("langevin-train: interrupted; nothing saved beyond the last checkpoint", file=sys.stderr)
        return 130
    if rank == 0 and history:
        final = {k: v for k, v in history[-1].items() if k != "losses"}
        print(f"done: {args.out}/metrics.json  {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
