"""Image datasets as tensors in [-1, 1], shape (N, C, H, W), with optional integer labels.

Sources: the embedded default ``digits`` (scikit-learn's 1797 real 8x8 digits), an image folder,
an ``.npz`` array, CIFAR-10 from a local torchvision root, and EDM's dataset zip format.
Nothing here downloads: missing files raise ``FileNotFoundError`` naming the path.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageDataset:
    images: Tensor  # float32 (N, C, H, W) in [-1, 1]
    labels: Tensor | None  # int64 (N,) or None
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"dataset {self.name!r}: images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"dataset {self.name!r}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, index: Tensor, name: str | None = None) -> "ImageDataset":
        labels = None if self.labels is None else self.labels[index]
        return ImageDataset(self.images[index], labels, name or self.name)


def uint8_to_unit(images: np.ndarray) -> Tensor:
    """uint8 NHWC or NCHW array -> float32 NCHW in [-1, 1] (x / 127.5 - 1, as EDM)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[-1] in (1, 3, 4) and arr.shape[1] > arr.shape[-1]:  # NHWC -> NCHW
        arr = arr.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32) / 127.5 - 1


def load_digits() -> ImageDataset:
    """scikit-learn's 1797 real 8x8 digits, integer values 0..16 mapped to [-1, 1], labels 0..9."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images).to(torch.float32)[:, None] / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    return ImageDataset(images, torch.from_numpy(bunch.target).to(torch.int64), "digits")


def load_image_folder(path: str | Path) -> ImageDataset:
    """Every image file under ``path`` (sorted); sub-folder names become class labels if there are any."""
    from PIL import Image

    root = _existing(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    arrays = [np.asarray(Image.open(f)) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images under {root} differ in shape: {sorted(shapes)}")
    classes = sorted({f.parent.relative_to(root).as_posix() for f in files})
    labels = None
    if classes != ["."]:
        labels = torch.tensor([classes.index(f.parent.relative_to(root).as_posix()) for f in files])
    return ImageDataset(uint8_to_unit(np.stack(arrays)), labels, root.name)


def load_npz(path: str | Path, images_key: str = "images", labels_key: str = "labels") -> ImageDataset:
    """An ``.npz`` with uint8 images (NHWC or NCHW) or float images already in [-1, 1]; labels optional."""
    file = _existing(path)
    with np.load(file) as npz:
        if images_key not in npz:
            raise KeyError(f"{file}: no array {images_key!r} (found: {', '.join(npz.files)})")
        arr = npz[images_key]
        labels = torch.from_numpy(npz[labels_key]).to(torch.int64) if labels_key in npz else None
    if arr.dtype == np.uint8:
        images = uint8_to_unit(arr)
    else:
        images = torch.from_numpy(arr).to(torch.float32)
        if images.min() < -1 - 1e-6 or images.max() > 1 + 1e-6:
            raise ValueError(f"{file}: float images must lie in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]")
    return ImageDataset(images, labels, file.stem)


def load_cifar10(root: str | Path, train: bool = True) -> ImageDataset:
    """CIFAR-10 from a local torchvision root (the ``cifar-10-batches-py`` folder); never downloads."""
    from torchvision.datasets import CIFAR10

    folder = _existing(root)
    try:
        ds = CIFAR10(str(folder), train=train, download=False)
    except RuntimeError as err:
        raise FileNotFoundError(f"CIFAR-10 not found under {folder} (expected cifar-10-batches-py/): {err}") from err
    return ImageDataset(uint8_to_unit(ds.data), torch.tensor(ds.targets), "cifar10")


def load_edm_zip(path: str | Path) -> ImageDataset:
    """EDM's dataset zip (``dataset_tool.py``): image files plus optional ``dataset.json`` {"labels": [[name, y]]}."""
    from PIL import Image

    file = _existing(path)
    with zipfile.ZipFile(file) as zf:
        names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise ValueError(f"{file}: zip holds no images")
        arrays = [np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in names]
        labels = None
        if "dataset.json" in zf.namelist():
            entries = json.loads(zf.read("dataset.json")).get("labels")
            if entries:
                by_name = dict(entries)
                missing = [n for n in names if n not in by_name]
                if missing:
                    raise ValueError(f"{file}: dataset.json has no label for {missing[0]} ({len(missing)} missing)")
                labels = torch.tensor([int(by_name[n]) for n in names])
    return ImageDataset(uint8_to_unit(np.stack(arrays)), labels, file.stem)


def load_dataset(cfg: dict) -> ImageDataset:
    """Dataset from a config ``data`` section: {source: digits | folder | npz | cifar10 | edm_zip, path: ...}."""
    source = cfg["source"]
    if source == "digits":
        return load_digits()
    loaders = {"folder": load_image_folder, "npz": load_npz, "cifar10": load_cifar10, "edm_zip": load_edm_zip}
    if source not in loaders:
        raise ValueError(f"unknown data source {source!r}; valid sources: digits, {', '.join(loaders)}")
    if not cfg.get("path"):
        raise ValueError(f"data source {source!r} needs data.path")
    return loaders[source](cfg["path"])


def split(dataset: ImageDataset, holdout_fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Deterministic (train, held-out) split: a seeded permutation, the same on every machine."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, round(holdout_fraction * len(dataset)))
    return (
        dataset.subset(order[n_hold:].sort().values, f"{dataset.name}-train"),
        dataset.subset(order[:n_hold].sort().values, f"{dataset.name}-holdout"),
    )


def train_holdout(data_cfg: dict) -> tuple[ImageDataset, ImageDataset]:
    """The (train, held-out) split of a config ``data`` section that every stage shares.

    Its seed (``data.split_seed``) is not the training seed: runs with different seeds are scored
    against the same held-out images.
    """
    return split(load_dataset(data_cfg), data_cfg["holdout_fraction"], data_cfg["split_seed"])


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data path does not exist: {p}")
    return p
