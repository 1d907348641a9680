"""Data sets: 2-D toys generated in code, scikit-learn's 8x8 digits, local image folders.

Nothing is downloaded unless ``download=True`` (the CLI's ``--download``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from langevin_kernels._optional import require

TOY_DATASETS = ("8gaussians", "25gaussians", "rings", "2spirals", "checkerboard", "pinwheel",
                "swissroll")
IMAGE_DATASETS = ("cifar10", "celeba64", "svhn", "mnist", "imagefolder")

#: Square on which the toys live and on which grid metrics and plots are computed.
TOY_BOUNDS = (-4.5, 4.5)


@dataclass
class ToyDataset:
    """A 2-D toy density: exact sampler, optional exact log-density, optional mode structure.

    ``modes`` / ``mode_std`` describe mode-based toys: for Gaussian mixtures the centres [K, 2]
    and per-coordinate std; for rings the radii [K] (``mode_kind == "ring"``) and the radial std.
    """

    name: str
    sampler: Callable[[int, np.random.Generator], np.ndarray]
    log_density: Callable[[np.ndarray], np.ndarray] | None = None
    modes: np.ndarray | None = None
    mode_std: float | None = None
    mode_kind: str = "point"
    bounds: tuple[float, float] = TOY_BOUNDS

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """n exact samples as a float32 tensor [n, 2]."""
        return torch.from_numpy(self.sampler(n, rng).astype(np.float32))


def _gaussian_mixture(centres: np.ndarray, std: float) -> tuple[Callable, Callable]:
    def sample(n, rng):
        idx = rng.integers(0, len(centres), size=n)
        return centres[idx] + std * rng.standard_normal((n, 2))

    def log_density(x):
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        log_comp = -d2 / (2 * std ** 2) - math.log(2 * math.pi * std ** 2)
        return _logsumexp(log_comp, axis=1) - math.log(len(centres))

    return sample, log_density


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _eight_gaussians() -> ToyDataset:
    # FFJORD's layout: 8 centres on a circle of radius 4/sqrt(2), std 0.5/sqrt(2).
    angles = np.arange(8) * (2 * math.pi / 8)
    centres = (4 / math.sqrt(2)) * np.stack([np.cos(angles), np.sin(angles)], 1)
    std = 0.5 / math.sqrt(2)
    sample, log_density = _gaussian_mixture(centres, std)
    return ToyDataset("8gaussians", sample, log_density, centres, std)


def _twentyfive_gaussians() -> ToyDataset:
    # 5x5 grid, spacing 1.4, std 0.1 (the toy2d calibration problem of docs/training.md).
    ticks = 1.4 * np.arange(-2, 3)
    centres = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
    sample, log_density = _gaussian_mixture(centres, 0.1)
    return ToyDataset("25gaussians", sample, log_density, centres, 0.1)


def _rings() -> ToyDataset:
    # Equal-weight concentric rings: radius R_k + std * eps, uniform angle.
    radii, std = np.array([1.0, 2.0, 3.0]), 0.1

    def sample(n, rng):
        r = radii[rng.integers(0, len(radii), size=n)] + std * rng.standard_normal(n)
        t = rng.uniform(0, 2 * math.pi, size=n)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)

    def log_density(x):
        # A signed radius r maps to the point at |r|, so the density of rho = |x| sums the
        # normal densities at +rho and -rho; dividing by 2 pi rho turns it into a 2-D density.
        rho = np.maximum(np.linalg.norm(x, axis=1), 1e-12)[:, None]
        z = np.concatenate([(rho - radii) / std, (-rho - radii) / std], 1)
        log_radial = _logsumexp(-0.5 * z ** 2, axis=1) - math.log(std * math.sqrt(2 * math.pi))
        return log_radial - math.log(len(radii)) - np.log(2 * math.pi * rho[:, 0])

    return ToyDataset("rings", sample, log_density, radii, std, mode_kind="ring")


def _two_spirals() -> ToyDataset:
    def sample(n, rng):
        t = np.sqrt(rng.uniform(size=(n // 2 + 1, 1))) * 540 * (2 * math.pi) / 360
        dx = -np.cos(t) * t + rng.uniform(size=t.shape) * 0.5
        dy = np.sin(t) * t + rng.uniform(size=t.shape) * 0.5
        arm = np.concatenate([np.hstack([dx, dy]), np.hstack([-dx, -dy])])
        return (arm / 3 + rng.standard_normal(arm.shape) * 0.1)[rng.permutation(len(arm))[:n]]

    return ToyDataset("2spirals", sample)


def _checkerboard() -> ToyDataset:
    # Uniform on the 8 "black" 1x1 squares of a 4x4 board, scaled by 2: 8 squares of area 4.
    def sample(n, rng):
        x1 = rng.uniform(size=n) * 4 - 2
        x2 = rng.uniform(size=n) - rng.integers(0, 2, size=n) * 2 + np.floor(x1) % 2
        return np.stack([x1, x2], 1) * 2

    def log_density(x):
        u = x / 2
        inside = (np.abs(u) <= 2).all(1)
        black = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0
        return np.where(inside & black, -math.log(32.0), -np.inf)

    return ToyDataset("checkerboard", sample, log_density)


def _pinwheel() -> ToyDataset:
    radial_std, tangential_std, n_arms, rate = 0.3, 0.1, 5, 0.25

    def sample(n, rng):
        arms = rng.integers(0, n_arms, size=n)
        feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
        feats[:, 0] += 1.0
        angles = arms * (2 * math.pi / n_arms) + rate * np.exp(feats[:, 0])
        c, s = np.cos(angles), np.sin(angles)
        rot = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)  # [n, 2, 2]
        return 2 * np.einsum("ni,nji->nj", feats, rot)

    return ToyDataset("pinwheel", sample)


def _swissroll() -> ToyDataset:
    def sample(n, rng):
        t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))
        pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.standard_normal((n, 2))
        return pts / 5

    return ToyDataset("swissroll", sample)


_TOY_BUILDERS = {
    "8gaussians": _eight_gaussians, "25gaussians": _twentyfive_gaussians, "rings": _rings,
    "2spirals": _two_spirals, "checkerboard": _checkerboard, "pinwheel": _pinwheel,
    "swissroll": _swissroll,
}


def toy_dataset(name: str) -> ToyDataset:
    """The 2-D toy called ``name`` (one of TOY_DATASETS)."""
    if name not in _TOY_BUILDERS:
        raise ValueError(f"dataset={name!r} is not a 2-D toy; allowed: {', '.join(TOY_DATASETS)}")
    return _TOY_BUILDERS[name]()


# ----------------------------------------------------------------------------- digits

@dataclass
class DigitsData:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] float32 in [-1, 1], split by a fixed seed."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(test_fraction: float = 0.2, split_seed: int = 0) -> DigitsData:
    """The digits (pixel values 0..16 mapped to [-1, 1]), split with a fixed permutation."""
    load_digits = require("sklearn.datasets", "the digits data set").load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(x)))
    n_test = int(round(test_fraction * len(x)))
    test, train = perm[:n_test], perm[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


# ----------------------------------------------------------------------------- images

_LAYOUTS = {
    "cifar10": "DATA_ROOT/cifar-10-batches-py/ (the python pickles of torchvision.datasets.CIFAR10)",
    "celeba64": "DATA_ROOT/celeba/img_align_celeba/*.jpg (torchvision.datasets.CelebA layout) "
                "or an image folder DATA_ROOT/<class>/*.png|jpg",
    "svhn": "DATA_ROOT/train_32x32.mat (torchvision.datasets.SVHN)",
    "mnist": "DATA_ROOT/MNIST/raw/ (torchvision.datasets.MNIST)",
    "imagefolder": "DATA_ROOT/<class>/*.png|jpg (torchvision.datasets.ImageFolder)",
}


class DataRootError(FileNotFoundError):
    """The image data set is not where --data-root says; the message names the expected layout."""


def _expected(name: str, data_root) -> DataRootError:
    return DataRootError(
        f"dataset={name!r}: no data found under --data-root={data_root!r}. Expected layout: "
        f"{_LAYOUTS[name]}. Nothing is downloaded unless --download is given.")


def _has_images(folder: str) -> bool:
    exts = (".png", ".jpg", ".jpeg")
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith(exts) for f in files):
            return True
    return False


def check_image_root(name: str, data_root: str | None) -> None:
    """Raise DataRootError naming the expected layout when ``data_root`` does not hold ``name``."""
    if name not in _LAYOUTS:
        raise ValueError(f"dataset={name!r} is not an image data set; allowed: {', '.join(_LAYOUTS)}")
    if data_root is None or not os.path.isdir(data_root):
        raise _expected(name, data_root)
    present = {
        "cifar10": lambda: os.path.isdir(os.path.join(data_root, "cifar-10-batches-py")),
        "celeba64": lambda: _has_images(data_root),
        "svhn": lambda: os.path.isfile(os.path.join(data_root, "train_32x32.mat")),
        "mnist": lambda: os.path.isdir(os.path.join(data_root, "MNIST", "raw")),
        "imagefolder": lambda: _has_images(data_root),
    }[name]
    if not present():
        raise _expected(name, data_root)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageDataError(ValueError):
    """An image folder that cannot be trained on: no class folders, no images, unreadable images,
    or images smaller than the config's image_size. The message names the files."""


def _examples(items: list, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


class ImageFolderDataset:
    """DATA_ROOT/<class>/**/*.png|jpg as items (image [3, S, S] in [-1, 1], class index), Pillow only.

    The size rule: every image is converted to RGB, resized so that its shorter side is
    ``image_size`` (bilinear, antialiased) and centre-cropped to image_size x image_size, so a
    folder may mix sizes and aspect ratios; an image whose shorter side is below ``image_size`` is
    rejected (it would be upsampled). This is torchvision's Resize(S) + CenterCrop(S).

    Construction checks the whole folder before any training: class folders exist, each holds an
    image, every file opens as an image (Pillow reads its header and verifies it) and is big enough;
    otherwise ImageDataError naming the files. A file that breaks later still raises ImageDataError
    naming it.
    """

    def __init__(self, root: str, image_size: int):
        from PIL import Image

        self.root, self.image_size = root, int(image_size)
        if not os.path.isdir(root):
            raise DataRootError(f"image folder {root!r} does not exist")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            stray = sorted(f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS))
            raise ImageDataError(
                f"image folder {root!r} has no class subfolders: the layout is {_LAYOUTS['imagefolder']}"
                + (f"; move the {len(stray)} images found directly in it into a subfolder, e.g. "
                   f"{os.path.join(root, 'all', stray[0])}" if stray else ""))
        self.samples: list[tuple[str, int]] = []
        empty = []
        for label, cls in enumerate(self.classes):
            files = sorted(os.path.join(dirpath, f) for dirpath, _, names in os.walk(os.path.join(root, cls))
                           for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                empty.append(cls)
            self.samples += [(f, label) for f in files]
        if not self.samples:
            raise ImageDataError(f"image folder {root!r} has class subfolders ({_examples(self.classes)}) but no "
                                 f"{'/'.join(IMAGE_EXTENSIONS)} images in them")
        if empty:
            raise ImageDataError(f"image folder {root!r}: class subfolders without {'/'.join(IMAGE_EXTENSIONS)} "
                                 f"images: {_examples(empty)}; remove them or add images")
        bad, small = [], []
        for path, _ in self.samples:
            try:
                with Image.open(path) as im:
                    size = im.size
                    im.verify()
            except Exception as err:  # Pillow raises many types for broken files
                bad.append(f"{path} ({type(err).__name__}: {str(err)[:80]})")
                continue
            if min(size) < self.image_size:
                small.append(f"{path} ({size[0]}x{size[1]})")
        if bad:
            raise ImageDataError(f"image folder {root!r}: {len(bad)} unreadable or corrupt image files: "
                                 f"{_examples(bad, 3)}; delete or replace them")
        if small:
            raise ImageDataError(
                f"image folder {root!r}: {len(small)} images are smaller than image_size={self.image_size} on "
                f"their shorter side: {_examples(small, 3)}. Images are resized (shorter side to "
                f"{self.image_size}) and centre-cropped, never upsampled; use larger images or a config "
                f"with a smaller image_size")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im = _resize_shorter(im, self.image_size)
                w, h = im.size
                s = self.image_size
                top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
                im = im.crop((left, top, left + s, top + s))
                pixels = np.asarray(im, dtype=np.uint8).copy()
        except Exception as err:
            raise ImageDataError(f"image file {path} could not be read ({type(err).__name__}: {err}); delete "
                                 f"or replace it") from err
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        return x.sub_(0.5).div_(0.5), label


def _resize_shorter(im, size: int):
    from PIL import Image

    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return im
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return im.resize(new, Image.BILINEAR)


def load_image_dataset(name: str, data_root: str | None, image_size: int, download: bool = False):
    """Images in [-1, 1] at ``image_size``: image folders (imagefolder, the CelebA folder) through
    ImageFolderDataset (Pillow), cifar10 / svhn / mnist through torchvision.

    Without ``download`` the data must already be under ``data_root``; otherwise DataRootError.
    Malformed image folders raise ImageDataError before any training.
    """
    if not download:
        check_image_root(name, data_root)
    root = data_root or "data"
    if name in ("imagefolder", "celeba64"):
        celeba_dir = os.path.join(root, "celeba")
        return ImageFolderDataset(celeba_dir if name == "celeba64" and os.path.isdir(celeba_dir) else root,
                                  image_size)
    try:
        import torchvision
        from torchvision import transforms as T
    except ImportError as err:  # depends on the environment
        raise ImportError(f"dataset={name!r} needs torchvision (pip install torchvision); image folders "
                          f"(--dataset imagefolder) do not") from err
    tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(),
                    T.Normalize((0.5,) * 3, (0.5,) * 3)])
    if name == "cifar10":
        return torchvision.datasets.CIFAR10(root, train=True, transform=tf, download=download)
    if name == "svhn":
        return torchvision.datasets.SVHN(root, split="train", transform=tf, download=download)
    if name == "mnist":
        gray = T.Compose([T.Resize(image_size), T.Grayscale(3), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        return torchvision.datasets.MNIST(root, train=True, transform=gray, download=download)
    raise ValueError(f"dataset={name!r} is not an image data set; allowed: {', '.join(_LAYOUTS)}")
