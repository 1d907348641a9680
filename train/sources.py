"""Data sources of the trainer: where each training batch comes from.

Every source has ``shape`` (one item's shape), ``size`` (items in the data set; 0 for the toys,
which draw fresh exact samples), ``batch(n)`` and a checkpointable ``state_dict``.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import TrainConfig
from .data import TOY_DATASETS, check_image_root, load_digits_split, load_image_dataset, toy_dataset


class ToySource:
    """Fresh exact samples of a 2-D toy per batch, from a checkpointed numpy generator."""

    def __init__(self, name: str, seed: int, rank: int):
        self.toy = toy_dataset(name)
        self.rng = np.random.default_rng([seed, rank, 1])
        self.shape = (2,)
        self.size = 0

    def batch(self, n: int) -> torch.Tensor:
        return self.toy.sample(n, self.rng)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class TensorSource:
    """Random minibatches (with replacement across batches) of an in-memory tensor data set."""

    def __init__(self, data: torch.Tensor, seed: int, rank: int):
        self.data = data
        self.gen = torch.Generator().manual_seed(seed * 1000 + rank + 3)
        self.shape = tuple(data.shape[1:])
        self.size = len(data)

    def batch(self, n: int) -> torch.Tensor:
        idx = torch.randint(0, len(self.data), (n,), generator=self.gen)
        return self.get(idx)

    def get(self, idx):
        return self.data[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class DatasetSource(TensorSource):
    """Random minibatches of a torchvision-style data set (items (image, label))."""

    def __init__(self, dataset, seed: int, rank: int):
        self.dataset = dataset
        super().__init__(torch.empty(len(dataset), 0), seed, rank)
        self.shape = tuple(dataset[0][0].shape)

    def get(self, idx):
        return torch.stack([self.dataset[int(i)][0] for i in idx])


def make_source(cfg: TrainConfig, rank: int = 0, data_root: str | None = None, download: bool = False):
    """The source of cfg's data set for this DDP rank (image folders are checked before loading)."""
    if cfg.config == "toy2d":
        if cfg.dataset not in TOY_DATASETS:
            raise ValueError(f"dataset={cfg.dataset!r} is not a 2-D toy; allowed with --config toy2d: "
                             f"{', '.join(TOY_DATASETS)}")
        return ToySource(cfg.dataset, cfg.seed, rank)
    if cfg.config == "digits":
        return TensorSource(load_digits_split().train_x, cfg.seed, rank)
    if not download:
        check_image_root(cfg.dataset, data_root)
    return DatasetSource(load_image_dataset(cfg.dataset, data_root, cfg.image_size, download), cfg.seed, rank)
