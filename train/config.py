"""Training configurations: one dataclass, four presets (toy2d, digits, cifar10, celeba64).

Chain settings follow the notation of docs/training.md: a data-chain step is
``x <- x - (s_x^2 / 2) dE/dx + n_x * noise`` (op step_size a = s_x^2/2, noise_scale n_x), which
samples exp(-E/T) with T = (n_x / s_x)^2; the EBM loss is divided by T. The image presets carry
the reference hyper-parameters of dual-MCMC teaching (docs/training.md); toy2d carries the
project's calibration on the 2-D toys; digits is ours (a small CPU problem).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

METHODS = ("dual", "coop", "shortrun", "persistent", "vaebm-teach")
#: Settings that only dual-MCMC reads (its latent chain and its two teaching weights): a checkpoint
#: of another method resumes whatever their values, since they cannot have changed what it trained
#: (tests/test_checkpoints.py trains every other method with them changed and compares).
DUAL_ONLY_KEYS = frozenset({"latent_sigma", "z_steps", "z_step", "z_noise", "teach_weight", "infer_teach_weight"})
CONFIGS = ("toy2d", "digits", "cifar10", "celeba64")
IMAGE_SIZES = (32, 64)   # what the image models support (models/images.py)
MAX_SEED = 2 ** 31       # chain seeds are (seed << 24) + ...: must stay an int64


@dataclass
class TrainConfig:
    """Everything a run needs; saved as <run>/config.json."""

    config: str = "toy2d"
    dataset: str = "8gaussians"
    method: str = "dual"
    iters: int = 2000
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    image_size: int = 0           # 0 for toys and digits
    latent_dim: int = 2
    width_mult: float = 1.0       # hidden units / channels of every model times this (toy2d and image
                                  # models; 1: the documented architectures). Small values make tests fast.
    sigma: float = 0.1            # generator observation noise (L_G is the reference's plain SSE)
    latent_sigma: float = 0.3     # sigma the LatentChain uses (image presets: sigma / sqrt(2), the reference's;
                                  # toy2d 0.3, measured: docs/training.md, "Where the values come from")
    # data chain (EBM), docs/training.md (dual-MCMC, step 2)
    x_steps: int = 20
    x_step: float = 0.1           # s_x: drift a = s_x^2 / 2
    x_noise: float = 0.1          # n_x
    x_clamp: tuple[float, float] | None = None
    # latent chain (generator posterior), step 3
    z_steps: int = 10
    z_step: float = 0.1
    z_noise: float = 0.1
    # losses
    teach_weight: float = 1.0     # S in L_G (toy2d 1, measured; the other presets set their own)
    infer_teach_weight: float = 0.1
    energy_reg: float = 0.1       # weight of mean(E_data^2 + E_neg^2), same for every method
    kl_weight: float = 2.0        # vaebm-teach ELBO
    max_energy_gap: float = 1e4   # |mean E(data) - mean E(samples)| beyond this is divergence (energy
                                  # units, before the loss's 1/T: the same meaning for every preset)
    # optimisers
    lr_energy: float = 1e-3
    lr_generator: float = 1e-3
    lr_encoder: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    wd_generator: float = 0.0
    wd_encoder: float = 0.0
    lr_decay: float = 1.0         # multiplied into every lr once per epoch
    epoch_size: int = 0           # iterations per "epoch" for lr_decay (0: data set size / batch)
    # shortrun / persistent chains (start from U[init_low, init_high])
    init_low: float = -4.5
    init_high: float = 4.5
    sr_steps: int = 100
    sr_step: float = 0.1          # as s_x: drift sr_step^2 / 2
    sr_noise: float = 0.1
    data_noise: float = 0.0       # std of the noise added to data for shortrun / persistent
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    pcd_steps: int = 20
    # evaluation and output
    eval_every: int = 500
    ckpt_every: int = 500
    n_eval: int = 5000
    grid_n: int = 200
    eval_x_steps: int = 0         # 0: the training chain settings
    eval_x_step: float = 0.0
    eval_x_noise: float = 0.0
    compile: bool = False         # chains run as compiled blocks (torch.compile): compile once, faster per step
    capture_graph: bool = False   # CUDA: the training chains replay one captured CUDA graph per run
    bn_parity: bool = True        # True: models stay in train mode inside chains and chain inits (reference);
                                  # False: eval mode there (BatchNorm running statistics)

    def temperature(self) -> float:
        """T = (n_x / s_x)^2 of the training data chain."""
        return (self.x_noise / self.x_step) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of a dict such as config.json (its "run" entry, the provenance, is ignored)."""
        d = _renamed_keys({k: v for k, v in d.items() if k != "run"})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(names)}")
        d = dict(d)
        for key in ("x_clamp", "betas"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d).validate()

    def validate(self) -> "TrainConfig":
        """Check every field's type and range; raise ValueError naming the field, its value and the
        allowed range. Returns self (so ``preset`` / ``from_dict`` can chain it)."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        c = self
        _one_of("config", c.config, CONFIGS)
        _one_of("method", c.method, METHODS)
        from .data import IMAGE_DATASETS, TOY_DATASETS  # no import cycle: data does not import config
        datasets = {"toy2d": TOY_DATASETS, "digits": ("digits",)}.get(c.config, IMAGE_DATASETS)
        _one_of("dataset", c.dataset, datasets, f" with config={c.config!r}")
        if c.config in ("toy2d", "digits"):
            _one_of("image_size", c.image_size, (0,), f" with config={c.config!r} (the data fixes the shape)")
        else:
            _one_of("image_size", c.image_size, IMAGE_SIZES, f" with config={c.config!r}")
        try:
            import torch
            torch.device(c.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"device={c.device!r} is not a device; allowed: 'cpu', 'cuda', 'cuda:N'") from None
        if c.capture_graph and torch.device(c.device).type != "cuda":
            raise ValueError(f"capture_graph=True needs a CUDA device (CUDA graphs), got device={c.device!r}; "
                             "use capture_graph=False there")
        if not 0 <= c.seed < MAX_SEED:
            raise ValueError(f"seed={c.seed!r} is out of range; allowed: 0 <= seed < 2**31")
        for name in ("iters", "batch_size", "latent_dim", "x_steps", "z_steps", "sr_steps", "pcd_steps",
                     "buffer_size", "eval_every", "ckpt_every"):
            _at_least(name, getattr(c, name), 1)
        _at_least("n_eval", c.n_eval, 2)      # MMD and Frechet distances need two samples
        _at_least("grid_n", c.grid_n, 2)
        for name in ("epoch_size", "eval_x_steps"):
            _at_least(name, getattr(c, name), 0)
        positive = ["sigma", "latent_sigma", "x_step", "x_noise", "z_step", "z_noise", "sr_step", "sr_noise",
                    "lr_energy", "lr_generator", "lr_encoder"]
        if c.eval_x_steps:  # otherwise the evaluation chain uses the training settings
            positive += ["eval_x_step", "eval_x_noise"]
        for name in positive:
            value = getattr(c, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} is out of range; allowed: a finite number > 0")
        for name in ("teach_weight", "infer_teach_weight", "energy_reg", "kl_weight", "wd_generator",
                     "wd_encoder", "data_noise"):
            value = getattr(c, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} is out of range; allowed: a finite number >= 0")
        if not c.max_energy_gap >= 0:  # inf allowed (never abort on size), 0 aborts at once
            raise ValueError(f"max_energy_gap={c.max_energy_gap!r} is out of range; allowed: a number >= 0")
        if not (math.isfinite(c.width_mult) and c.width_mult > 0):
            raise ValueError(f"width_mult={c.width_mult!r} is out of range; allowed: a finite number > 0")
        if c.config == "digits" and c.width_mult != 1:
            raise ValueError(f"width_mult={c.width_mult!r} is not allowed with config='digits' (its models have "
                             "one fixed size); allowed: 1.0")
        if not 0 < c.lr_decay <= 1:
            raise ValueError(f"lr_decay={c.lr_decay!r} is out of range; allowed: 0 < lr_decay <= 1")
        if not 0 <= c.reinit_prob <= 1:
            raise ValueError(f"reinit_prob={c.reinit_prob!r} is out of range; allowed: 0 <= reinit_prob <= 1")
        if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
            raise ValueError(f"betas={c.betas!r} is out of range; allowed: two numbers in [0, 1)")
        if not (math.isfinite(c.init_low) and math.isfinite(c.init_high) and c.init_low < c.init_high):
            raise ValueError(f"init_low={c.init_low!r}, init_high={c.init_high!r}: allowed: finite numbers "
                             "with init_low < init_high")
        if c.x_clamp is not None and (len(c.x_clamp) != 2 or not all(math.isfinite(v) for v in c.x_clamp)
                                      or not c.x_clamp[0] < c.x_clamp[1]):
            raise ValueError(f"x_clamp={c.x_clamp!r} is out of range; allowed: None or (low, high), finite, "
                             "low < high")
        if c.method == "persistent" and c.buffer_size < c.batch_size:
            raise ValueError(f"buffer_size={c.buffer_size} is smaller than batch_size={c.batch_size}; "
                             "method 'persistent' draws a batch of distinct buffer states: allowed "
                             "buffer_size >= batch_size")
        return self


#: Keys renamed since configs were first saved: old name -> new name. max_energy_loss compared the
#: temperature-scaled contrast [mean E(data) - mean E(samples)] / T, which at the image presets'
#: T ~ 1e-5 called a raw energy gap of 0.04 a divergence; max_energy_gap compares the raw gap.
RENAMED_KEYS = {"max_energy_loss": "max_energy_gap"}


def _renamed_keys(d: dict) -> dict:
    """d with renamed keys under their new names (DeprecationWarning); both names at once: ValueError."""
    old = [k for k in RENAMED_KEYS if k in d]
    if not old:
        return d
    import warnings

    d = dict(d)
    for key in old:
        new = RENAMED_KEYS[key]
        if new in d:
            raise ValueError(f"{key} and {new} were both given; {key} is the old name of {new}: pass only {new}")
        warnings.warn(f"config key {key!r} is now {new!r} (divergence is judged on the raw energy gap, "
                      "not on the gap divided by the temperature)", DeprecationWarning, stacklevel=3)
        d[new] = d.pop(key)
    return d


def _check_type(name: str, value, annotation: str) -> None:
    """The field's declared type (annotations are strings here: ``from __future__ import annotations``)."""
    ann = str(annotation)
    if ann == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        want = "an integer"
    elif ann == "float":
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        want = "a number"
    elif ann == "str":
        ok, want = isinstance(value, str), "a string"
    elif ann == "bool":
        ok, want = isinstance(value, bool), "true or false"
    elif ann.startswith("tuple[float, float]"):
        none_ok = ann.endswith("None")
        ok = (value is None and none_ok) or (
            isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value))
        want = "a pair of numbers" + (" or None" if none_ok else "")
    else:  # pragma: no cover - a new field type: add it above
        return
    if not ok:
        raise ValueError(f"{name}={value!r} has the wrong type; allowed: {want}")


def _one_of(name: str, value, allowed, context: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed{context}; allowed: "
                         f"{', '.join(repr(a) for a in allowed)}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name}={value!r} is out of range; allowed: an integer >= {low}")


def _toy2d(**over) -> TrainConfig:
    return TrainConfig(**over)


def _digits(**over) -> TrainConfig:
    base = dict(config="digits", dataset="digits", batch_size=100, latent_dim=16, sigma=0.3,
                latent_sigma=0.3, x_steps=30, x_step=0.1, x_noise=0.1, x_clamp=None, z_steps=10,
                z_step=0.1, z_noise=0.1, teach_weight=10.0, init_low=-1.0, init_high=1.0,
                sr_steps=60, sr_step=0.1, sr_noise=0.1, data_noise=0.03, buffer_size=2000,
                eval_every=500, ckpt_every=500, n_eval=1438, iters=2000)
    base.update(over)
    return TrainConfig(**base)


def _image(config: str, dataset: str, image_size: int, x_step: float, teach_weight: float, **over):
    base = dict(config=config, dataset=dataset, image_size=image_size, batch_size=100, latent_dim=128,
                sigma=0.3, latent_sigma=0.3 / math.sqrt(2), x_steps=30, x_step=x_step, x_noise=1e-3,
                z_steps=10, z_step=0.1, z_noise=0.1, teach_weight=teach_weight, energy_reg=0.0,
                lr_energy=1e-4, lr_generator=3e-4, lr_encoder=1e-4, betas=(0.0, 0.9),
                wd_generator=5e-4, wd_encoder=5e-4, lr_decay=0.998, init_low=-1.0, init_high=1.0,
                sr_steps=100, sr_step=math.sqrt(2.0), sr_noise=0.01, data_noise=0.03,
                iters=200_000, eval_every=5000, ckpt_every=1000, n_eval=50_000,
                eval_x_steps=70, eval_x_step=0.4, eval_x_noise=1e-3)
    base.update(over)
    return TrainConfig(**base)


PRESETS = {
    "toy2d": _toy2d,
    "digits": _digits,
    "cifar10": lambda **o: _image("cifar10", "cifar10", 32, 0.5, 50.0, **o),
    "celeba64": lambda **o: _image("celeba64", "celeba64", 64, 0.3, 70.0, **o),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The named preset with keyword overrides (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"config={name!r} is unknown; allowed: {', '.join(PRESETS)}")
    overrides = _renamed_keys({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(names)}")
    try:
        cfg = PRESETS[name](**overrides)
    except TypeError:  # an override of a value the preset passes positionally (the image presets'
        cfg = dataclasses.replace(PRESETS[name](), **overrides)  # image_size, x_step, teach_weight)
    return cfg.validate()
