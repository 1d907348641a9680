"""Train suite: one dual-MCMC training iteration (Trainer.step), fused vs eager update.

"eager" runs the same trainer with the chains' fused op replaced by the update as EBM code
writes it (x - a*(g + lam*x) + s*randn_like(x), clamp): the difference between the rows is
what fusing the update saves in a real iteration. The two draw different noise, so this suite
reports timings only; agreement of fused and eager chains is checked by the chain suite.
Skipped with the reason when the trainer (langevin_kernels.train) is not importable.
"""
from __future__ import annotations

import contextlib
import tempfile

import torch

from . import common
from .common import Variant


def _eager_update(x, grad, *, step_size, noise_scale, seed=0, offset=0, prior_weight=0.0, clamp=None,
                  noise=None, rng_state=None):
    """Out-of-place eager update with the op's keyword signature (seed/offset unused: torch RNG)."""
    if noise is None:
        noise = torch.randn_like(x)
    y = x - step_size * (grad + prior_weight * x) + noise_scale * noise if prior_weight else \
        x - step_size * grad + noise_scale * noise
    if clamp is not None:
        y = torch.clamp(y, clamp[0], clamp[1])
    return y


def _eager_update_(x, grad, **kwargs):
    return x.copy_(_eager_update(x, grad, **kwargs))


@contextlib.contextmanager
def eager_chains():
    """Swap the chains' fused op for the eager update while the block runs."""
    from langevin_kernels import chains
    saved = chains.langevin_step, chains.langevin_step_
    chains.langevin_step, chains.langevin_step_ = _eager_update, _eager_update_
    try:
        yield
    finally:
        chains.langevin_step, chains.langevin_step_ = saved


def trainer_unavailable() -> str | None:
    try:
        from langevin_kernels.train.config import preset  # noqa: F401
        from langevin_kernels.train.trainer import Trainer  # noqa: F401
        from langevin_kernels import chains  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (absent or half-written: either way, skip with the reason)
        return f"the trainer (langevin_kernels.train) is not importable yet: {type(exc).__name__}: {exc}"
    return None


def _trainer(config: str, device, out_dir: str):
    from langevin_kernels.train.config import preset
    from langevin_kernels.train.trainer import Trainer
    return Trainer(preset(config, device=str(device)), out_dir, progress=False)


def run_suite(device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
              progress=print) -> dict:
    configs = ["toy2d"] if quick else ["toy2d", "digits"]
    reason = trainer_unavailable()
    rows = []
    for config in configs:
        case = f"{config} iteration"
        progress(f"[train] {case}")
        if reason:
            rows.append(common.Row("train", case, "fused", unavailable=reason))
            rows.append(common.Row("train", case, "eager", unavailable=reason))
            continue
        with tempfile.TemporaryDirectory() as out_dir:
            try:
                trainers = {"eager": _trainer(config, device, out_dir + "/eager"),
                            "fused": _trainer(config, device, out_dir + "/fused")}
            except Exception as exc:  # noqa: BLE001
                rows.append(common.Row("train", case, "fused", unavailable=f"failed: {type(exc).__name__}: {exc}"))
                continue
            variants = [
                Variant("eager", lambda i: trainers["eager"].step(), context=eager_chains,
                        note="chains' op swapped for x - a*(g + lam*x) + s*randn_like(x)"),
                Variant("fused", lambda i: trainers["fused"].step(), note="Trainer.step(), default backend"),
            ]
            rows.extend(common.run_case("train", case, variants, None, device, 1, tol=0.0, repeats=repeats,
                                        check=False, min_sample_s=1e-3))
    return {"rows": rows, "meta": {"configs": configs}}

