"""Train suite: one dual-MCMC training iteration (Method.train_step on a fixed batch).

Cases: toy2d (the preset: batch 256, 20 data-chain and 10 latent-chain steps, MLPs), cifar10
(the cifar10 preset's models and chains on random 3x32x32 batches: the shape of a real
iteration without the data set, divergence guard off; on CPU shrunk to batch 4 and 2 + 2 chain
steps and left out of --quick), celeba64 (the same for its preset on 3x64x64 batches; in --quick
on a GPU only, after cifar10, so a stage that runs out of time keeps cifar10's rows) and,
without --quick, digits.
Variants (speedups are against eager-op):
  eager-op        the trainer with the chains' fused op swapped for the update as EBM code
                  writes it (x - a*(g + lam*x) + s*randn_like(x), clamp); checked to be in use;
  fused           the trainer as shipped (default backend);
  compile         TrainConfig(compile=True): compiled chains (skipped while the field is absent);
  graph           TrainConfig(capture_graph=True) (CUDA; skipped while the field is absent);
  compile+graph   both (CUDA);
  bf16 autocast   fused under torch.autocast(bfloat16) (CUDA).
The variants draw different noise and their models drift apart as they train, so this suite
reports timings only; agreement of fused and eager chains is checked by the chain suite.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys

import numpy as np
import torch

import langevin_kernels as lk

from . import common
from .common import Variant
from .gemm_floor import gemm_floor_variant

CASES = ("toy2d", "cifar10", "celeba64", "digits")
IMAGE_CASES = ("cifar10", "celeba64")   # preset models on random image batches
N_BATCHES = 4
# The image presets' models take seconds per chain step on 2 CPU cores: on CPU their cases are
# shrunk, and left out of --quick (ask for them with --cases cifar10,celeba64).
CPU_CIFAR = dict(batch_size=4, x_steps=2, z_steps=2)
SMOKE = dict(x_steps=1, z_steps=1)
SMOKE_CPU_CIFAR = dict(batch_size=2)


def _divergence_guard_off() -> dict:
    """The override that turns the trainer's divergence guard off, by its name in this build.

    Random batches are far from anything the EBM has seen (with the older max_energy_loss, the
    contrast divided by the preset's T = 4e-6 passed the guard at the first iteration); the suite
    times iterations, it does not train.
    """
    fields = _config_fields()
    name = "max_energy_gap" if "max_energy_gap" in fields else "max_energy_loss"
    return {name: float("inf")} if name in fields else {}


# ----------------------------------------------------------------------------- the eager-op swap

class EagerUpdate:
    """The update as EBM code writes it, with the fused op's keyword signature; counts its calls.

    seed/offset/rng_state are accepted and ignored (the noise is torch's randn_like).
    """

    def __init__(self):
        self.calls = 0

    def out_of_place(self, x, grad, *, step_size, noise_scale, prior_weight=0.0, clamp=None, noise=None, **_):
        self.calls += 1
        if noise is None:
            noise = torch.randn_like(x)
        drift = grad + prior_weight * x if prior_weight else grad
        y = x - step_size * drift + noise_scale * noise
        if clamp is not None:
            lo, hi = clamp
            y = torch.clamp(y, lo, hi)
        return y

    def in_place(self, x, grad, **kwargs):
        return x.copy_(self.out_of_place(x, grad, **kwargs))


def _modules_calling_the_op() -> list:
    """Loaded chain modules that hold lk.langevin_step / langevin_step_ as module attributes."""
    importlib.import_module("langevin_kernels.chains")
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("langevin_kernels.chains"):
            continue
        if getattr(module, "langevin_step", None) is lk.langevin_step or \
                getattr(module, "langevin_step_", None) is lk.langevin_step_:
            found.append(module)
    return found


@contextlib.contextmanager
def eager_chains(update: EagerUpdate):
    """Swap the chains' fused op for `update` while the block runs (module attributes)."""
    modules = _modules_calling_the_op()
    saved = [(m, m.__dict__.get("langevin_step"), m.__dict__.get("langevin_step_")) for m in modules]
    for module in modules:
        if "langevin_step" in module.__dict__:
            module.langevin_step = update.out_of_place
        if "langevin_step_" in module.__dict__:
            module.langevin_step_ = update.in_place
    try:
        yield
    finally:
        for module, step, step_ in saved:
            if step is not None:
                module.langevin_step = step
            if step_ is not None:
                module.langevin_step_ = step_


# ----------------------------------------------------------------------------- trainers

def trainer_unavailable() -> str | None:
    """None when the training layer imports, else why not."""
    try:
        from langevin_kernels.train.config import preset  # noqa: F401
        from langevin_kernels.train.methods import build_method  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (absent or broken: either way, skip with the reason)
        return f"the training layer (langevin_kernels.train) does not import: {type(exc).__name__}: {exc}"
    return None


def _config_fields() -> set[str]:
    from langevin_kernels.train.config import TrainConfig
    return {f.name for f in dataclasses.fields(TrainConfig)}


def case_config(case: str, device: torch.device, *, smoke: bool, **options):
    """The case's TrainConfig (CPU-sized for the image cases on CPU), with `options` as field overrides."""
    from langevin_kernels.train.config import preset
    overrides = dict(device=str(device))
    if case in IMAGE_CASES:
        overrides.update(_divergence_guard_off())
        if device.type == "cpu":
            overrides.update(CPU_CIFAR, **(SMOKE_CPU_CIFAR if smoke else {}))
    if smoke:
        overrides.update(SMOKE)
    return preset(case, **overrides, **options)


def case_label(case: str, device: torch.device, smoke: bool) -> str:
    cfg = case_config(case, device, smoke=smoke)
    shape = f"3x{cfg.image_size}x{cfg.image_size} random batches" if case in IMAGE_CASES else cfg.dataset
    return f"{case} dual iteration (batch {cfg.batch_size}, {cfg.x_steps}+{cfg.z_steps} steps, {shape})"


def batches(case: str, cfg, device: torch.device) -> list[torch.Tensor]:
    """N_BATCHES fixed training batches of the case's data shape."""
    if case == "toy2d":
        from langevin_kernels.train.data import toy_dataset
        rng = np.random.default_rng(0)
        toy = toy_dataset(cfg.dataset)
        return [torch.as_tensor(toy.sample(cfg.batch_size, rng), dtype=torch.float32).to(device)
                for _ in range(N_BATCHES)]
    if case == "digits":
        from langevin_kernels.train.data import load_digits_split
        data = load_digits_split().train_x
        return [data[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device) for i in range(N_BATCHES)]
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=gen, device=device) * 2 - 1
            for _ in range(N_BATCHES)]


def _method(cfg, sample_shape):
    from langevin_kernels.train.methods import build_method
    torch.manual_seed(cfg.seed)         # every variant starts from the same models
    return build_method(cfg, cfg.device, sample_shape)


def _variant(name: str, case: str, device, data, *, smoke: bool, options: dict | None = None,
             context=contextlib.nullcontext, note: str = "", compiled: bool = False) -> Variant:
    """One trainer variant; an option TrainConfig lacks (or refuses) makes it a skip with the reason."""
    options = options or {}
    missing = sorted(set(options) - _config_fields())
    if missing:
        return Variant(name, unavailable=f"TrainConfig has no {', '.join(missing)} field in this build")
    try:
        cfg = case_config(case, device, smoke=smoke, **options)
        method = _method(cfg, tuple(data[0].shape[1:]))
    except (TypeError, ValueError) as exc:
        return Variant(name, unavailable=f"TrainConfig({options}) is refused: {type(exc).__name__}: {exc}")
    def run(i):
        out = method.train_step(data[i % len(data)])
        if compiled:   # a chain that fell back to its uncompiled loop would time as "compile" and lie
            fell_back = {k: c.compile_failed for k, c in method.chains.items() if c.compile_failed}
            if fell_back:
                raise RuntimeError(f"compile=True fell back to the uncompiled loop: {fell_back}")
        return out

    return Variant(name, run, context=context, note=note, compiled=compiled)


def _eager_op_variant(case: str, device, data, *, smoke: bool) -> Variant:
    update = EagerUpdate()
    if not _modules_calling_the_op():
        return Variant("eager-op", unavailable="the chains do not call lk.langevin_step[_] through a module "
                       "attribute of langevin_kernels.chains, so the eager update cannot be swapped in")
    variant = _variant("eager-op", case, device, data, smoke=smoke, context=lambda: eager_chains(update),
                       note="chains' op swapped for x - a*(g + lam*x) + s*randn_like(x)")
    if variant.unavailable:
        return variant
    train_step = variant.run

    def run(i):
        before = update.calls
        out = train_step(i)
        if update.calls == before:     # the swap did not reach the chains: the row would lie
            raise RuntimeError("the chains did not call the swapped-in eager update")
        return out

    variant.run = run
    return variant


def _gemm_floor(case: str, device, data, *, smoke: bool) -> Variant:
    if case in IMAGE_CASES and device.type == "cpu":   # its products are nearly the whole (shrunk) iteration
        return Variant("GEMM floor", unavailable=f"left out for {case} on CPU: its convolutions are nearly the "
                       "whole iteration there, and replaying them doubles the case's time")
    return common.guarded("GEMM floor", lambda: gemm_floor_variant(
        lambda: _method(case_config(case, device, smoke=smoke), tuple(data[0].shape[1:])).train_step(data[0]),
        what="one iteration"))


def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16)


def build_variants(case: str, device, data, *, smoke: bool) -> list[Variant]:
    on_cuda = device.type == "cuda"

    def trainer(name, **kwargs):
        return common.guarded(name, lambda: _variant(name, case, device, data, smoke=smoke, **kwargs))

    variants = [common.guarded("eager-op", lambda: _eager_op_variant(case, device, data, smoke=smoke)),
                _gemm_floor(case, device, data, smoke=smoke),
                trainer("fused", note="Method.train_step, default backend"),
                trainer("compile", options={"compile": True}, compiled=True, note="TrainConfig(compile=True)")]
    if on_cuda:
        variants += [trainer("graph", options={"capture_graph": True}, note="TrainConfig(capture_graph=True)"),
                     trainer("compile+graph", compiled=True, options={"compile": True, "capture_graph": True},
                             note="TrainConfig(compile=True, capture_graph=True)"),
                     trainer("bf16 autocast", context=_autocast,
                             note="fused, train_step under torch.autocast('cuda', bfloat16)")]
    else:
        variants += [Variant("graph", unavailable="CUDA graphs need a CUDA device"),
                     Variant("bf16 autocast", unavailable="the bf16 autocast variant is timed on CUDA only")]
    return variants


def run_suite(device: torch.device, *, quick: bool, check: bool = True, repeats: int = common.MIN_REPEATS,
              cases=None, smoke: bool = False, progress=print, on_rows=None) -> dict:
    """Time one training iteration per case and variant; returns {"rows": [...], "meta": {...}}."""
    if smoke:
        repeats = common.SMOKE_REPEATS
    if not cases:
        cases = (CASES if not quick else ("toy2d", "cifar10", "celeba64") if device.type == "cuda" and not smoke
                 else ("toy2d", "cifar10") if smoke else ("toy2d",))
    cases = list(cases)
    reason = trainer_unavailable()
    rows = []
    for case in cases:
        if reason:
            rows.append(common.Row("train", f"{case} iteration", "fused", unavailable=common.skipped(reason)))
            continue
        label = case_label(case, device, smoke)
        progress(f"[train] {label}")
        data = batches(case, case_config(case, device, smoke=smoke), device)
        case_rows = common.run_case("train", label, build_variants(case, device, data, smoke=smoke), None, device,
                                    len(data), tol=0.0, repeats=repeats, check=False, min_sample_s=1e-3,
                                    baseline="eager-op",
                                    min_repeats=common.SMOKE_REPEATS if smoke else common.MIN_REPEATS)
        for row in case_rows:
            row.extra.update(case=case)
        rows.extend(case_rows)
        if on_rows is not None:
            on_rows(rows)
    configs = {case: case_config(case, device, smoke=smoke).to_dict() for case in cases} if not reason else {}
    return {"rows": rows, "meta": {"cases": cases, "configs": configs}}
