"""Dual-MCMC teaching and its baselines, sharing one set of pieces (docs/training.md).

Each method owns its models, optimisers and chains and exposes ``train_step(x_data) -> losses``
and ``sample(n) -> {"ebm": ..., "generator": ...}``. The Langevin updates are always
``langevin_kernels.chains.DataChain`` / ``LatentChain`` runs; nothing here re-implements them.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from langevin_kernels.chains import DataChain, LatentChain, NonFiniteChainError
from langevin_kernels.losses import contrastive_divergence_loss

from langevin_kernels.models import (ConvEncoder, DigitsEncoder, DigitsEnergy, DigitsGenerator, EncoderMLP, EnergyMLP,
                      GeneratorMLP, ResNetEnergy, SNGANGenerator, gaussian_nll, reparameterize)
from .config import TrainConfig
from .distributed import gather_messages, is_distributed


class Diverged(RuntimeError):
    """A loss or chain went non-finite or exploded; the trainer adds the iteration.

    Under DDP it is raised on every rank at the same check point (``Method.agree``), so no rank
    is left waiting in a gradient all-reduce for one that stopped."""


def data_shape(cfg: TrainConfig) -> tuple[int, ...]:
    """The shape of one data point the config's models take: (2,), (1, 8, 8) or (3, S, S)."""
    if cfg.config == "toy2d":
        return (2,)
    if cfg.config == "digits":
        return (1, 8, 8)
    return (3, cfg.image_size, cfg.image_size)


def build_models(cfg: TrainConfig) -> dict[str, nn.Module]:
    """Energy, generator and encoder for the config's data kind."""
    def width(default: int) -> int:  # cfg.width_mult scales every model's hidden units / channels
        return max(4, round(default * cfg.width_mult))

    if cfg.config == "toy2d":
        return {"energy": EnergyMLP(hidden=width(128)), "generator": GeneratorMLP(cfg.latent_dim, hidden=width(128)),
                "encoder": EncoderMLP(latent_dim=cfg.latent_dim, hidden=width(128))}
    if cfg.config == "digits":
        return {"energy": DigitsEnergy(), "generator": DigitsGenerator(cfg.latent_dim),
                "encoder": DigitsEncoder(cfg.latent_dim)}
    size = cfg.image_size
    return {"energy": ResNetEnergy(size, channels=width(128)),
            "generator": SNGANGenerator(cfg.latent_dim, size, channels=width(256)),
            "encoder": ConvEncoder(cfg.latent_dim, size, channels=width(64))}


def build_chain(cfg: TrainConfig, kind: str, model, *, n_steps: int, s: float, n: float, seed: int,
                on_nonfinite: str = "raise", training: bool = False) -> DataChain | LatentChain:
    """Every chain the methods run is built here (docs/training.md notation: a step
    ``x <- x - (s^2 / 2) dE/dx + n * noise``, so step_size = s^2 / 2 and noise_scale = n).

    kind "data": a DataChain on the energy ``model`` (clamp cfg.x_clamp); kind "latent": a
    LatentChain on the generator ``model`` (sigma cfg.latent_sigma). Statistics are off (the
    trainer does not read them). ``compile=True`` (cfg.compile, --compile) runs each chain as
    compiled blocks (docs/chains.md, "Compiled chains"). ``cfg.capture_graph`` captures the
    ``training`` chains only, the ones that run every iteration with one shape: an evaluation's
    fresh chain runs once, and capturing it (two warm-up runs, then the capture) costs more than
    it saves.
    """
    options = dict(n_steps=n_steps, step_size=s * s / 2, noise_scale=n, seed=seed, track_stats=False,
                   on_nonfinite=on_nonfinite)
    if cfg.compile:
        options["compile"] = True
    if cfg.capture_graph and training:
        options["capture_graph"] = True
    if kind == "data":
        make, options = DataChain, dict(options, clamp=cfg.x_clamp)
    elif kind == "latent":
        make, options = LatentChain, dict(options, sigma=cfg.latent_sigma)
    else:
        raise ValueError(f"kind={kind!r} is not a chain kind; allowed: 'data', 'latent'")
    return make(model, **options)


def _sse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example sum of squared errors [B] (sums over pixels/coordinates)."""
    return (a - b).pow(2).flatten(1).sum(1)


class Method:
    """Shared pieces: models, optimisers, schedulers, the EBM loss and chain bookkeeping.

    ``models`` holds the raw modules (chains call these); ``wrapped`` holds what the losses
    call (DistributedDataParallel wrappers under torchrun, the raw modules otherwise). Each loss
    runs one forward per model so DDP sees exactly one forward per backward.
    """

    uses = ("energy",)

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int = 0, wrap=None, *,
                 sample_shape=None):
        """sample_shape: one data point's shape, as the data source reports it; None takes the
        config's (``data_shape``). A shape the config's models cannot take is a ValueError."""
        self.cfg, self.device, self.rank = cfg, device, rank
        expected = data_shape(cfg)
        if sample_shape is not None and tuple(sample_shape) != expected:
            raise ValueError(f"sample_shape={tuple(sample_shape)} does not fit config={cfg.config!r}, whose models "
                             f"take data points of shape {expected}")
        self.sample_shape = expected
        all_models = build_models(cfg)
        self.models = {k: all_models[k].to(device) for k in self.uses}
        wrap = wrap or (lambda m: m)
        self.wrapped = {k: wrap(m) for k, m in self.models.items()}
        lrs = {"energy": cfg.lr_energy, "generator": cfg.lr_generator, "encoder": cfg.lr_encoder}
        wds = {"energy": 0.0, "generator": cfg.wd_generator, "encoder": cfg.wd_encoder}
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=lrs[k], betas=cfg.betas, weight_decay=wds[k])
                           for k, m in self.models.items()}
        self.schedulers = {k: torch.optim.lr_scheduler.ExponentialLR(o, gamma=cfg.lr_decay)
                           for k, o in self.optimizers.items()}
        # Training randomness that is not chain noise (z, reparameterisation, chain inits).
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed * 1000 + rank + 17)
        self.chains: dict[str, DataChain | LatentChain] = {}
        self.temperature = 1.0

    # --- chains ---------------------------------------------------------------------------

    def chain_seed(self, index: int) -> int:
        """Distinct noise key per (run seed, rank, chain): ranks never share a stream."""
        return (self.cfg.seed << 24) + (self.rank << 8) + index

    def data_chain(self, n_steps: int, s: float, n: float, index: int) -> DataChain:
        """A training data chain on the EBM with its own noise key (chain_seed(index))."""
        return build_chain(self.cfg, "data", self.models["energy"], n_steps=n_steps, s=s, n=n,
                           seed=self.chain_seed(index), training=True)

    @contextlib.contextmanager
    def chain_mode(self):
        """Inside chains, models keep train mode when cfg.bn_parity (the reference never calls
        .eval(): BatchNorm uses batch statistics and updates its running averages); otherwise they
        run in eval mode (running statistics, untouched) and return to train mode afterwards."""
        if self.cfg.bn_parity:
            yield
            return
        for m in self.models.values():
            m.eval()
        try:
            yield
        finally:
            for m in self.models.values():
                m.train()

    def run_chain(self, name: str, x0: torch.Tensor, *extra) -> torch.Tensor:
        """A training chain's run; non-finite chains (the chains' default on_nonfinite="raise") -> Diverged."""
        problem, x = None, None
        try:
            with self.chain_mode():
                x = self.chains[name].run(x0, *extra)
        except NonFiniteChainError as err:
            idx = err.chains.tolist()
            shown = ", ".join(map(str, idx[:10])) + (", ..." if len(idx) > 10 else "")
            problem = (f"the {name} produced non-finite values (chain '{name}': {len(idx)} of "
                       f"{err.n_chains} chains, indices [{shown}])")
        self.agree(problem)
        return x

    def agree(self, problem: str | None) -> None:
        """A divergence check point: raise Diverged if ``problem`` (or, under DDP, any rank's) is set.

        Every rank passes every check point in the same order (None when all is well), so under DDP
        all ranks raise together, naming the ranks that diverged, instead of one rank stopping while
        the others wait for it in the next gradient all-reduce.
        """
        if not is_distributed():
            if problem is not None:
                raise Diverged(problem)
            return
        problems = gather_messages(problem)
        if problems:
            raise Diverged("; ".join(f"on rank {r}: {m}" for r, m in problems))

    # --- shared losses ----------------------------------------------------------------------

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.device)

    def uniform_init(self, n: int, shape) -> torch.Tensor:
        u = torch.rand(n, *shape, generator=self.gen, device=self.device)
        return self.cfg.init_low + (self.cfg.init_high - self.cfg.init_low) * u

    def energy_update(self, x_data: torch.Tensor, x_neg: torch.Tensor, chain: str) -> dict[str, float]:
        """L_E = [mean E(data) - mean E(neg)] / T + reg * mean(E_data^2 + E_neg^2); one Adam step.

        Divergence: L_E not finite, or the raw energy gap |mean E(data) - mean E(neg)| above
        cfg.max_energy_gap. The gap is judged before the 1/T of the loss: at the image presets'
        T ~ 1e-5 a healthy gap of 0.04 is a contrast of 1e4, which says nothing about divergence.
        """
        energies = self.wrapped["energy"](torch.cat([x_data, x_neg.detach()]))
        e_data, e_neg = energies[: len(x_data)], energies[len(x_data):]
        loss = contrastive_divergence_loss(e_data, e_neg, temperature=self.temperature,
                                           energy_reg=self.cfg.energy_reg)
        value, gap_value = float(loss.detach()), float((e_data.mean() - e_neg.mean()).detach())
        problem = None
        if not math.isfinite(value) or abs(gap_value) > self.cfg.max_energy_gap:
            problem = (f"energy loss L_E={value:.4g} (energy gap mean E(data) - mean E(samples)={gap_value:.4g}, "
                       f"max_energy_gap={self.cfg.max_energy_gap:.4g}) on samples of the {chain}")
        self.agree(problem)
        self._step("energy", loss)
        return {"loss_E": value, "E_data": float(e_data.detach().mean()), "E_neg": float(e_neg.detach().mean())}

    def check_finite(self, losses: dict[str, torch.Tensor], where: str) -> None:
        """Divergence check point for generator / encoder losses: the first non-finite one is named."""
        problem = next((f"{name}={float(v.detach()):.4g} on samples of the {where}"
                        for name, v in losses.items() if not torch.isfinite(v)), None)
        self.agree(problem)

    def _step(self, *names_and_loss) -> None:
        *names, loss = names_and_loss
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            self.optimizers[name].step()

    # --- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"models": {k: m.state_dict() for k, m in self.models.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "chains": {k: c.state_dict() for k, c in self.chains.items()},
                "generator_rng": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for group in ("models", "optimizers", "schedulers", "chains"):
            for k, obj in getattr(self, group).items():
                obj.load_state_dict(state[group][k])
        self.gen.set_state(state["generator_rng"])

    def train_step(self, x_data: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        """Evaluation samples from fresh chains with a fixed seed (training state untouched)."""
        raise NotImplementedError

    def eval_chain(self, seed: int) -> DataChain:
        c = self.cfg
        steps, s, n = (c.eval_x_steps, c.eval_x_step, c.eval_x_noise) if c.eval_x_steps else \
            (c.x_steps, c.x_step, c.x_noise)
        return build_chain(c, "data", self.models["energy"], n_steps=steps, s=s, n=n, seed=seed,
                           on_nonfinite="ignore")


class GeneratorInitialised(Method):
    """Methods whose data chain starts at generator samples (dual, coop, vaebm-teach)."""

    uses = ("energy", "generator")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.temperature = c.temperature()
        self.chains["data chain"] = self.data_chain(c.x_steps, c.x_step, c.x_noise, 0)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.chain_mode():
            return self.models["generator"](z)

    def sample(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn(n, self.cfg.latent_dim, generator=gen, device=self.device)
        x_gen = self.generate(z)
        return {"generator": x_gen, "ebm": self.eval_chain(seed).run(x_gen)}


class DualMCMC(GeneratorInitialised):
    """Dual-MCMC teaching (docs/training.md): EBM, generator and inference model."""

    uses = ("energy", "generator", "encoder")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.chains["latent chain"] = build_chain(c, "latent", self.models["generator"], n_steps=c.z_steps,
                                                  s=c.z_step, n=c.z_noise, seed=self.chain_seed(1), training=True)

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        """z~ = latent chain from the encoder's reparameterised sample (steps 3)."""
        with torch.no_grad():
            mu, logvar = self.models["encoder"](x)
            z0 = reparameterize(mu, logvar, self.randn(*mu.shape))
        return self.run_chain("latent chain", z0, x)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        c, b = self.cfg, len(x)
        z = self.randn(b, c.latent_dim)
        x_revised = self.run_chain("data chain", self.generate(z))
        z_post = self.posterior(x)
        # Generator: learn from data (posterior samples) + MCMC teaching by the EBM.
        out = self.wrapped["generator"](torch.cat([z_post, z]))
        loss_g = _sse(x, out[:b]).mean() + c.teach_weight * _sse(out[b:], x_revised).mean()
        # Inference model: learn from the latent chain + teaching on the EBM's samples.
        mu, logvar = self.wrapped["encoder"](torch.cat([x, x_revised]))
        nll = gaussian_nll(torch.cat([z_post, z]), mu, logvar)
        loss_i = nll[:b].mean() + c.infer_teach_weight * nll[b:].mean()
        self.check_finite({"generator loss L_G": loss_g, "encoder loss L_I": loss_i}, "data chain / latent chain")
        self._step("generator", loss_g)
        self._step("encoder", loss_i)
        # EBM: a fresh data chain from the updated generator, same z.
        x_neg = self.run_chain("data chain", self.generate(z))
        losses = self.energy_update(x, x_neg, "data chain")
        return {**losses, "loss_G": float(loss_g.detach()), "loss_I": float(loss_i.detach())}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """g(z~) with z~ from the encoder + a fresh latent chain (fixed seed)."""
        c = self.cfg
        mu, logvar = self.models["encoder"](x)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        z0 = reparameterize(mu, logvar, torch.randn(mu.shape, generator=gen, device=self.device))
        chain = build_chain(c, "latent", self.models["generator"], n_steps=c.z_steps, s=c.z_step, n=c.z_noise,
                            seed=seed, on_nonfinite="ignore")
        return self.models["generator"](chain.run(z0, x))


class Cooperative(GeneratorInitialised):
    """Cooperative learning: the generator learns only from the EBM's revised samples."""

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        z = self.randn(len(x), self.cfg.latent_dim)
        x_revised = self.run_chain("data chain", self.generate(z))
        losses = self.energy_update(x, x_revised, "data chain")
        loss_g = _sse(self.wrapped["generator"](z), x_revised).mean()
        self.check_finite({"generator loss L_G": loss_g}, "data chain")
        self._step("generator", loss_g)
        return {**losses, "loss_G": float(loss_g.detach())}


class VAEBMTeach(GeneratorInitialised):
    """Variational MCMC teaching: a VAE initialises the chain and fits its revised samples by ELBO."""

    uses = ("energy", "generator", "encoder")

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        c = self.cfg
        z = self.randn(len(x), c.latent_dim)
        x_revised = self.run_chain("data chain", self.generate(z))
        losses = self.energy_update(x, x_revised, "data chain")
        mu, logvar = self.wrapped["encoder"](x_revised)
        z_q = reparameterize(mu, logvar, self.randn(*mu.shape))
        recon = _sse(self.wrapped["generator"](z_q), x_revised) / (2 * c.sigma ** 2)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        loss_vae = (recon + c.kl_weight * kl).mean()
        self.check_finite({"VAE loss": loss_vae}, "data chain")
        self._step("generator", "encoder", loss_vae)
        return {**losses, "loss_VAE": float(loss_vae.detach())}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return self.models["generator"](self.models["encoder"](x)[0])


class ShortRun(Method):
    """Short-run EBM: non-persistent chains from uniform noise, data perturbed by small noise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.temperature = (c.sr_noise / c.sr_step) ** 2
        self.chains["data chain"] = self.data_chain(c.sr_steps, c.sr_step, c.sr_noise, 0)

    def _perturb(self, x):
        return x + self.cfg.data_noise * self.randn(*x.shape) if self.cfg.data_noise else x

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        x0 = self.uniform_init(len(x), x.shape[1:])
        x_neg = self.run_chain("data chain", x0)
        return self.energy_update(self._perturb(x), x_neg, "data chain")

    def sample(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator(device=self.device).manual_seed(seed)
        shape = self.sample_shape
        x0 = self.cfg.init_low + (self.cfg.init_high - self.cfg.init_low) * torch.rand(
            n, *shape, generator=gen, device=self.device)
        c = self.cfg
        chain = build_chain(c, "data", self.models["energy"], n_steps=c.sr_steps, s=c.sr_step, n=c.sr_noise,
                            seed=seed, on_nonfinite="ignore")
        return {"ebm": chain.run(x0)}


class Persistent(ShortRun):
    """Persistent chains from a replay buffer with re-initialisation (ebm-anatomy / JEM style)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from langevin_kernels.replay import ReplayBuffer

        c = self.cfg
        self.chains["data chain"] = self.data_chain(c.pcd_steps, c.sr_step, c.sr_noise, 0)
        self.buffer = ReplayBuffer(c.buffer_size, self.sample_shape, reinit_prob=c.reinit_prob,
                                   init_fn=lambda n: self.uniform_init(n, self.sample_shape),
                                   device=self.device, seed=self.chain_seed(2))

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        x0, idx = self.buffer.sample(len(x))
        x_neg = self.run_chain("data chain", x0)
        self.buffer.update(idx, x_neg)
        return self.energy_update(self._perturb(x), x_neg, "data chain")

    def sample(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        """n buffer states, every row equally likely (training state untouched), for any n: each row
        n // capacity times, plus n % capacity distinct rows drawn uniformly (seeded by ``seed``)."""
        cap = self.buffer.capacity
        gen = torch.Generator(device=self.device).manual_seed(seed)
        full, rest = divmod(n, cap)
        idx = torch.cat([torch.arange(cap, device=self.device).repeat(full),
                         torch.randperm(cap, generator=gen, device=self.device)[:rest]])
        return {"ebm": self.buffer.storage[idx].clone()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])


METHOD_CLASSES = {"dual": DualMCMC, "coop": Cooperative, "shortrun": ShortRun, "persistent": Persistent,
                  "vaebm-teach": VAEBMTeach}


def build_method(cfg: TrainConfig, device, sample_shape, rank: int = 0, wrap=None) -> Method:
    """The method named by cfg.method; sample_shape is one data point's shape (from the data)."""
    return METHOD_CLASSES[cfg.method](cfg, torch.device(device), rank, wrap, sample_shape=sample_shape)
