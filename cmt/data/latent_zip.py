"""Latent datasets in EDM2's zip layout (docs/latent.md 4.3): per image the autoencoder posterior's mean and std,
stacked as one float32 array (2C, h, w) in ``<5 digits>/img-mean-std-<8 digits>.npy``, the labels in
``dataset.json`` as in an image zip, and ``latents.json`` with the convention and the autoencoder that wrote them.

A training draw is z = convention(mean + std · ε) with a fresh ε each time an image is drawn (EDM2's
``encode_latents``), so the stored posterior, not one sample of it, is the dataset.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cmt.data.files import ZipMembers, edm_zip_labels, existing_path, zip_entry
from cmt.errors import BadInput
from cmt.formats.atomic import writing
from cmt.latents.conventions import Convention

META = "latents.json"  # our addition to EDM2's layout (EDM2's reader ignores it)
MEMORY_LIMIT = 2 << 30  # bytes of moments a zip may hold to be read into memory; a larger one is read on demand


def latent_name(index: int) -> str:
    """EDM2's name of image ``index``'s moments inside the zip (dataset_tool.py encode)."""
    digits = f"{index:08d}"
    return f"{digits[:5]}/img-mean-std-{digits}.npy"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def write_latent_zip(dest: str | Path, count: int, items: Iterator[tuple[np.ndarray, int | None]], meta: dict) -> dict:
    """Write ``count`` (moments (2C, h, w), label) items and ``meta`` as a latent zip at ``dest`` (atomically)."""
    labels, shape = [], None
    with writing(dest) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for index, (moments, label) in enumerate(tqdm(items, total=count, desc="encode", unit="img")):
            shape = shape or moments.shape
            zf.writestr(zip_entry(latent_name(index)), _npy(moments))
            labels.append(label)
        labelled = [[latent_name(i), y] for i, y in enumerate(labels)] if None not in labels else None
        zf.writestr(zip_entry("dataset.json"), json.dumps({"labels": labelled}))
        latent_shape = [shape[0] // 2, shape[1], shape[2]]
        zf.writestr(zip_entry(META), json.dumps({**meta, "count": len(labels), "shape": latent_shape}, sort_keys=True))
    return {"count": len(labels), "shape": latent_shape, "classes": len({y for y in labels if y is not None})}


@dataclass(frozen=True)
class LatentDataset:
    """A latent zip in memory: each image's posterior mean and std (N, C, h, w), labels, and the convention."""

    mean: Tensor
    std: Tensor
    labels: Tensor | None
    name: str
    convention: Convention
    meta: dict

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape[1:])

    def draw(self, index: Tensor, noise: Tensor) -> Tensor:
        """Latents of rows ``index``, one posterior draw each from ``noise`` (docs/latent.md 4.3)."""
        index = index.to(self.mean.device)
        return self.convention.to_latent(self.mean[index] + self.std[index] * noise.to(self.mean))

    def to(self, device: torch.device | str) -> "LatentDataset":
        labels = None if self.labels is None else self.labels.to(device)
        return LatentDataset(self.mean.to(device), self.std.to(device), labels, self.name, self.convention, self.meta)

    def subset(self, index: Tensor, name: str | None = None) -> "LatentDataset":
        labels = None if self.labels is None else self.labels[index]
        return LatentDataset(self.mean[index], self.std[index], labels, name or self.name, self.convention, self.meta)


class _MomentsReader(ZipMembers):
    """Moments of a latent zip's entries, read on demand."""

    def get(self, row: int) -> np.ndarray:
        return _npy_moments(self.read(row), self.names[row], self.path)


@dataclass(frozen=True)
class LatentFiles(torch.utils.data.Dataset):
    """A latent zip too large for memory (ImageNet-256: 32 KiB an image), read image by image: a map-style
    ``Dataset`` of (moments (2C, h, w), row) for a ``DataLoader`` (``cmt.data.batches``); only labels stay in
    memory."""

    reader: _MomentsReader
    rows: np.ndarray  # int64: this dataset's rows of the zip
    labels: Tensor | None
    name: str
    convention: Convention
    meta: dict
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[Tensor, int]:
        return torch.from_numpy(self.reader.get(int(self.rows[item])).astype(np.float32)), item

    def draws(self, moments: Tensor, noise: Tensor) -> Tensor:
        """Latents from a batch of stacked moments (n, 2C, h, w), one posterior draw each (docs/latent.md 4.3)."""
        mean, std = moments.chunk(2, dim=1)
        return self.convention.to_latent(mean + std * noise.to(mean))

    def subset(self, index: Tensor, name: str | None = None) -> "LatentFiles":
        labels = None if self.labels is None else self.labels[index]
        rows = self.rows[index.numpy()]
        return LatentFiles(self.reader, rows, labels, name or self.name, self.convention, self.meta, self.shape)


def _npy_moments(data: bytes, name: str, file: Path) -> np.ndarray:
    """One entry's stacked (mean, std), (2C, h, w); anything else is refused naming the file and the entry."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise BadInput(f"{file}: {name}: not a numpy array ({err})") from err
    if array.ndim != 3 or array.shape[0] % 2:
        raise BadInput(f"{file}: {name}: moments must be (2C, h, w), got {array.shape}")
    return array


def read_latent_meta(path: str | Path) -> dict:
    """A latent zip's ``latents.json`` alone (convention, autoencoder, the images it encoded, count and shape)."""
    file = existing_path(path)
    try:
        with zipfile.ZipFile(file) as zf:
            return json.loads(zf.read(META))
    except zipfile.BadZipFile as err:
        raise BadInput(f"{file}: not a readable zip archive ({err})") from err
    except (KeyError, json.JSONDecodeError) as err:
        raise BadInput(f"{file}: {META}: missing or unreadable ({err})") from err


def load_latent_zip(path: str | Path, memory_limit: int = MEMORY_LIMIT) -> LatentDataset | LatentFiles:
    """A latent zip written by ``write_latent_zip`` (or EDM2's ``dataset_tool.py encode`` plus a ``latents.json``):
    in memory, or read on demand when its moments exceed ``memory_limit`` bytes."""
    file = existing_path(path)
    try:
        with zipfile.ZipFile(file) as zf:
            if META not in zf.namelist():
                raise BadInput(f"{file}: no {META} (the convention the latents were written in)")
            meta = json.loads(zf.read(META))
            names = sorted(n for n in zf.namelist() if n.endswith(".npy"))
            if not names:
                raise BadInput(f"{file}: zip holds no latents")
            labels = edm_zip_labels(file, zf, names)
            convention, shape = Convention.from_dict(meta), tuple(meta["shape"])
            if len(names) * 2 * math.prod(shape) * 4 > memory_limit:
                return LatentFiles(
                    _MomentsReader(file, names), np.arange(len(names)), labels, file.stem, convention, meta, shape
                )
            moments = torch.from_numpy(np.stack([_npy_moments(zf.read(n), n, file) for n in names]))
    except zipfile.BadZipFile as err:
        raise BadInput(f"{file}: not a readable zip archive ({err})") from err
    except (KeyError, json.JSONDecodeError) as err:
        raise BadInput(f"{file}: {META}: missing or unreadable ({err})") from err
    mean, std = moments.to(torch.float32).chunk(2, dim=1)
    return LatentDataset(mean, std, labels, file.stem, convention, meta)
