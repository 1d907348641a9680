"""Image folders (``--dataset imagefolder --data-root``): missing, empty, flat or corrupt folders
are refused before training with the files named; the resize rule; a valid folder trains."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from langevin_kernels.train.cli import main as cli_main
from langevin_kernels.train.config import preset
from langevin_kernels.train.data import DataRootError, ImageDataError, ImageFolderDataset
from langevin_kernels.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _cli_image(tmp_path, root, *extra):
    return cli_main(["--config", "cifar10", "--dataset", "imagefolder", "--data-root", str(root),
                     "--out", str(tmp_path / "run"), "--no-progress", *extra])


def test_missing_data_root_cli(tmp_path, capsys):
    assert _cli_image(tmp_path, tmp_path / "absent") == 2
    err = capsys.readouterr().err
    assert "no data found under --data-root=" in err and "absent" in err and "<class>" in err


def test_image_folder_without_class_subfolders(tmp_path, capsys):
    _png(tmp_path / "flat" / "a.png", 32, 32)
    assert _cli_image(tmp_path, tmp_path / "flat") == 2
    err = capsys.readouterr().err
    assert "has no class subfolders" in err and os.path.join(str(tmp_path / "flat"), "all", "a.png") in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_image_folder_without_images(tmp_path, capsys):
    (tmp_path / "root" / "cats").mkdir(parents=True)
    (tmp_path / "root" / "cats" / "notes.txt").write_text("no images here")
    assert _cli_image(tmp_path, tmp_path / "root") == 2
    assert "no data found" in capsys.readouterr().err
    with pytest.raises(ImageDataError, match=r"class subfolders \(cats\) but no .png/.jpg/.jpeg images"):
        ImageFolderDataset(str(tmp_path / "root"), 32)
    _png(tmp_path / "root" / "dogs" / "d.png", 32, 32)
    with pytest.raises(ImageDataError, match=r"class subfolders without .png/.jpg/.jpeg images: cats;"):
        ImageFolderDataset(str(tmp_path / "root"), 32)
    with pytest.raises(DataRootError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "nowhere"), 32)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_file_named(tmp_path, capsys, damage):
    root = tmp_path / "root"
    _png(root / "a" / "good.png", 32, 32)
    _png(root / "a" / "bad.png", 32, 32, seed=1)
    bad = root / "a" / "bad.png"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"\x89PNG not really" * 20, "truncated": data[: len(data) // 2],
                     "empty": b""}[damage])
    assert _cli_image(tmp_path, root) == 2
    err = capsys.readouterr().err
    assert "1 unreadable or corrupt image files" in err and str(bad) in err and "good.png" not in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_image_size_rule(tmp_path, capsys):
    """Shorter side resized to image_size then centre-cropped: mixed sizes load; smaller images are refused."""
    root = tmp_path / "root"
    exact = _png(root / "a" / "exact.png", 32, 32)
    _png(root / "a" / "tall.png", 48, 40, seed=1)
    _png(root / "b" / "wide.png", 32, 64, seed=2)
    ds = ImageFolderDataset(str(root), 32)
    assert len(ds) == 3 and ds.classes == ["a", "b"]
    items = [ds[i] for i in range(3)]
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.float32 for x, _ in items)
    assert all(x.min() >= -1 and x.max() <= 1 for x, _ in items)
    assert [label for _, label in items] == [0, 0, 1]
    x_exact = items[0][0]  # a.exact.png sorts first: no resize, exact pixel values
    assert torch.equal(x_exact, (torch.from_numpy(exact).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
    wide = np.asarray(Image.open(root / "b" / "wide.png"))
    assert torch.equal(items[2][0], (torch.from_numpy(wide[:, 16:48].copy()).permute(2, 0, 1).float() / 255
                                     - 0.5) / 0.5)  # 32x64: centre crop only
    _png(root / "b" / "small.png", 16, 40, seed=3)
    with pytest.raises(ImageDataError, match=r"1 images are smaller than image_size=32.*small.png \(40x16\)"):
        ImageFolderDataset(str(root), 32)
    assert _cli_image(tmp_path, root) == 2
    assert "never upsampled" in capsys.readouterr().err


def test_torchvision_datasets_without_torchvision(tmp_path, capsys):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed")
    except ImportError:
        pass
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert cli_main(["--config", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "dataset='cifar10' needs torchvision" in err and "Traceback" not in err


def test_valid_image_folder_trains(tmp_path):
    root = tmp_path / "root"
    for i in range(4):
        _png(root / "a" / f"{i}.png", 36, 32 + 4 * i, seed=i)
    # Models at 1/16 width and a 2-step evaluation chain: this tests the loader path, not the models.
    cfg = preset("cifar10", dataset="imagefolder", iters=1, batch_size=4, x_steps=1, z_steps=1, eval_every=10,
                 ckpt_every=10, n_eval=4, width_mult=1 / 16, eval_x_steps=2)
    trainer = Trainer(cfg, str(tmp_path / "run"), data_root=str(root), progress=False)
    assert trainer.source.shape == (3, 32, 32)
    trainer.train()
    assert trainer.iteration == 1 and all(np.isfinite(v) for v in trainer.last_losses.values())


def _state_of(trainer):
    return {f"{m}.{k}": v.clone() for m, model in trainer.method.models.items() for k, v in model.state_dict().items()}


@pytest.mark.slow  # about 35 s per preset on the shared 2-core machine (imports, plots, 3 evaluations)
@pytest.mark.parametrize("config, size", [("cifar10", 32), ("celeba64", 64)])
def test_image_presets_train_and_resume(tmp_path, config, size):
    """The cifar10 and celeba64 presets (their networks at 1/16 width, short chains) train on a
    generated image folder through the real loader (--dataset imagefolder --data-root): losses
    finite, and a run stopped after its checkpoint at iteration 2 and resumed to iteration 3
    ends with exactly the parameters of an uninterrupted 3-iteration run (the evaluation at the end
    of the first part runs the models in train mode, so this also checks that evaluating restores
    their BatchNorm and spectral-norm buffers)."""
    root = tmp_path / "images"
    for i in range(8):
        _png(root / ("a" if i % 2 else "b") / f"{i}.png", size, size, seed=i)
    over = dict(dataset="imagefolder", batch_size=4, x_steps=2, z_steps=2, eval_x_steps=2, n_eval=4,
                eval_every=100, ckpt_every=2, width_mult=1 / 16)

    def trainer(out, iters):
        return Trainer(preset(config, iters=iters, **over), str(tmp_path / out), data_root=str(root), progress=False)

    whole = trainer("whole", 3)
    assert whole.source.shape == (3, size, size)
    whole.train()
    assert whole.iteration == 3 and all(np.isfinite(v) for v in whole.last_losses.values()), whole.last_losses
    first = trainer("parts", 2)
    first.train()
    resumed = trainer("parts", 3)
    assert resumed.resume() and resumed.iteration == 2
    resumed.train()
    assert resumed.iteration == 3 and all(np.isfinite(v) for v in resumed.last_losses.values())
    a, b = _state_of(whole), _state_of(resumed)
    assert a.keys() == b.keys()
    for key in a:  # same seed, one thread: the resumed run repeats the uninterrupted one exactly
        assert torch.equal(a[key], b[key]), key
