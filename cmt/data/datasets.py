"""Image datasets as tensors in [-1, 1], shape (N, C, H, W), with optional integer labels.

Sources: the embedded default ``digits`` (scikit-learn's 1797 real 8x8 digits, held in memory), an image
folder, an ``.npz`` array, CIFAR-10 from a local torchvision root, and EDM's dataset zip format; the file
sources are read image by image on demand (``ImageFiles``), never decoded as a whole.
Nothing here downloads: missing files raise ``FileNotFoundError`` naming the path.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cmt.data.files import ZipMembers, edm_zip_labels, existing_path
from cmt.data.latent_zip import LatentDataset, LatentFiles, load_latent_zip
from cmt.errors import BadInput, MissingInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageDataset:
    """A dataset held in memory as float32 (the embedded digits, small ``.npz`` files of float images)."""

    images: Tensor  # float32 (N, C, H, W) in [-1, 1]
    labels: Tensor | None  # int64 (N,) or None
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise BadInput(f"dataset {self.name!r}: images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise BadInput(f"dataset {self.name!r}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def read(self, index: Tensor) -> Tensor:
        """Images ``index`` as float32 in [-1, 1]."""
        return self.images[index.to(self.images.device)]

    def subset(self, index: Tensor, name: str | None = None) -> "ImageDataset":
        labels = None if self.labels is None else self.labels[index]
        return ImageDataset(self.images[index], labels, name or self.name)


class _ZipReader(ZipMembers):
    """Images of an EDM dataset zip, decoded on demand."""

    def get(self, row: int) -> np.ndarray:
        return _decode(self.read(row), f"{self.path}: {self.names[row]}")


class _FileReader:
    """Image files of a folder, decoded on demand."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def get(self, row: int) -> np.ndarray:
        return _decode(self.files[row].read_bytes(), str(self.files[row]))


class _ArrayReader:
    """uint8 images (N, H, W, C) already in memory (CIFAR-10's batches, ``.npz`` files)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def get(self, row: int) -> np.ndarray:
        return self.array[row]


def _decode(data: bytes, where: str) -> np.ndarray:
    """An encoded image -> uint8 (H, W, C); a damaged file raises naming ``where``."""
    from PIL import Image

    try:
        arr = np.asarray(Image.open(io.BytesIO(data)))
    except Exception as err:  # PIL raises many types for damaged files
        raise BadInput(f"{where}: not a readable image ({err})") from err
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass(frozen=True)
class ImageFiles(torch.utils.data.Dataset):
    """A dataset read from disk on demand (EDM zip, image folder, uint8 ``.npz``, CIFAR-10): only labels stay in
    memory. It is a map-style ``torch.utils.data.Dataset`` of (uint8 (C, H, W) image, row), so training reads it
    through a ``DataLoader`` (``cmt.data.batches``)."""

    reader: _ZipReader | _FileReader | _ArrayReader
    rows: np.ndarray  # int64: this dataset's rows of the reader
    labels: Tensor | None
    name: str
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[Tensor, int]:
        arr = self.reader.get(int(self.rows[item]))
        if arr.shape[:2] != self.shape[1:] or arr.shape[2] != self.shape[0]:
            raise BadInput(f"dataset {self.name!r}: image {item} is {arr.shape}, the others {self.shape} (C, H, W)")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), item

    def uint8(self, index: Tensor) -> Tensor:
        """Images ``index`` as uint8 (n, C, H, W)."""
        return (
            torch.stack([self[int(i)][0] for i in index])
            if len(index)
            else torch.empty((0, *self.shape), dtype=torch.uint8)
        )

    def read(self, index: Tensor) -> Tensor:
        """Images ``index`` as float32 in [-1, 1]."""
        return to_unit(self.uint8(index.cpu()))

    @property
    def images(self) -> Tensor:
        """Every image in memory as float32: for small sets and subsets only (feature net, held-out images)."""
        return self.read(torch.arange(len(self)))

    def subset(self, index: Tensor, name: str | None = None) -> "ImageFiles":
        labels = None if self.labels is None else self.labels[index]
        return ImageFiles(self.reader, self.rows[index.numpy()], labels, name or self.name, self.shape)


Images = ImageDataset | ImageFiles


def _files(reader, labels: Tensor | None, name: str) -> ImageFiles:
    if len(reader) == 0:
        raise BadInput(f"dataset {name!r} holds no images")
    if labels is not None and len(labels) != len(reader):
        raise BadInput(f"dataset {name!r}: {len(labels)} labels for {len(reader)} images")
    first = reader.get(0)
    return ImageFiles(reader, np.arange(len(reader)), labels, name, (first.shape[2], *first.shape[:2]))


def to_unit(pixels: Tensor) -> Tensor:
    """uint8 images -> float32 in [-1, 1]: x / 127.5 - 1, as EDM."""
    return pixels.to(torch.float32) / 127.5 - 1


def _nhwc(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[1] in (1, 3, 4) and arr.shape[-1] > arr.shape[1]:  # NCHW -> NHWC
        arr = arr.transpose(0, 2, 3, 1)
    return arr


def load_digits() -> ImageDataset:
    """scikit-learn's 1797 real 8x8 digits, integer values 0..16 mapped to [-1, 1], labels 0..9."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images).to(torch.float32)[:, None] / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    return ImageDataset(images, torch.from_numpy(bunch.target).to(torch.int64), "digits")


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root``, sorted by relative path."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(path: str | Path) -> ImageFiles:
    """Every image file under ``path`` (sorted); sub-folder names become class labels if there are any."""
    root = existing_path(path)
    files = image_files(root)
    if not files:
        raise MissingInput(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    classes = sorted({f.parent.relative_to(root).as_posix() for f in files})
    labels = None
    if classes != ["."]:
        labels = torch.tensor([classes.index(f.parent.relative_to(root).as_posix()) for f in files])
    return _files(_FileReader(files), labels, root.name)


def load_npz(path: str | Path, images_key: str = "images", labels_key: str = "labels") -> Images:
    """An ``.npz`` with uint8 images (NHWC or NCHW) or float images already in [-1, 1]; labels optional."""
    file = existing_path(path)
    with np.load(file) as npz:
        if images_key not in npz:
            raise BadInput(f"{file}: no array {images_key!r} (found: {', '.join(npz.files)})")
        arr = npz[images_key]
        labels = torch.from_numpy(npz[labels_key]).to(torch.int64) if labels_key in npz else None
    if arr.dtype == np.uint8:
        return _files(_ArrayReader(_nhwc(arr)), labels, file.stem)
    images = torch.from_numpy(arr).to(torch.float32)
    if images.min() < -1 - 1e-6 or images.max() > 1 + 1e-6:
        raise BadInput(f"{file}: float images must lie in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]")
    return ImageDataset(images, labels, file.stem)


def load_cifar10(root: str | Path, train: bool = True) -> ImageFiles:
    """CIFAR-10 from a local torchvision root (the ``cifar-10-batches-py`` folder); never downloads."""
    from torchvision.datasets import CIFAR10

    folder = existing_path(root)
    try:
        ds = CIFAR10(str(folder), train=train, download=False)
    except RuntimeError as err:
        raise MissingInput(f"CIFAR-10 not found under {folder} (expected cifar-10-batches-py/): {err}") from err
    return _files(_ArrayReader(ds.data), torch.tensor(ds.targets), "cifar10")


def load_edm_zip(path: str | Path) -> ImageFiles:
    """EDM's dataset zip (``dataset_tool.py``): image files plus optional ``dataset.json`` {"labels": [[name, y]]}."""
    file = existing_path(path)
    try:
        with zipfile.ZipFile(file) as zf:
            names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
            if not names:
                raise BadInput(f"{file}: zip holds no images")
            labels = edm_zip_labels(file, zf, names)
    except zipfile.BadZipFile as err:
        raise BadInput(f"{file}: not a readable zip archive ({err})") from err
    return _files(_ZipReader(file, names), labels, file.stem)


def load_dataset(cfg: dict) -> Images | LatentDataset | LatentFiles:
    """Dataset from a config ``data`` section: {source: digits | folder | npz | cifar10 | edm_zip | latent_zip,
    path: ...}."""
    source = cfg["source"]
    if source == "digits":
        return load_digits()
    loaders = {
        "folder": load_image_folder,
        "npz": load_npz,
        "cifar10": load_cifar10,
        "edm_zip": load_edm_zip,
        "latent_zip": load_latent_zip,
    }
    if source not in loaders:
        raise BadInput(f"unknown data source {source!r}; valid sources: digits, {', '.join(loaders)}")
    if not cfg.get("path"):
        raise BadInput(f"data source {source!r} needs data.path")
    return loaders[source](cfg["path"])


def split(dataset: Images | LatentDataset, holdout_fraction: float, seed: int) -> tuple[Images, Images]:
    """Deterministic (train, held-out) split: a seeded permutation, the same on every machine. With
    ``holdout_fraction`` 0 the whole dataset trains (the paper's setting) and the held-out set is empty."""
    if not 0 <= holdout_fraction < 1:
        raise BadInput(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if holdout_fraction == 0:
        return dataset, dataset.subset(torch.arange(0), f"{dataset.name}-holdout")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    n_hold = max(1, round(holdout_fraction * len(dataset)))
    return (
        dataset.subset(order[n_hold:].sort().values, f"{dataset.name}-train"),
        dataset.subset(order[:n_hold].sort().values, f"{dataset.name}-holdout"),
    )


def train_holdout(data_cfg: dict) -> tuple[Images, Images]:
    """The (train, held-out) split of a config ``data`` section that every stage shares.

    Its seed (``data.split_seed``) is not the training seed: runs with different seeds are scored
    against the same held-out images.
    """
    return split(load_dataset(data_cfg), data_cfg["holdout_fraction"], data_cfg["split_seed"])
