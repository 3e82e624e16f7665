"""Build the EDM-format dataset zips the paper trains on from the archives a user has (method.md 12.1).

An EDM zip (the format of EDM's ``dataset_tool.py``) holds one PNG per image, ``<idx // 1000>/img<idx>.png``
with the index written as 8 digits and its first 5 in the folder name, plus ``dataset.json``:
``{"labels": [[file name, class], ...]}`` or ``{"labels": null}``. Sources:

* ``cifar10_tarball``: the CIFAR-10 python tarball (``cifar-10-python.tar.gz``), its 50 000 training images
  with their classes, in the order of ``data_batch_1`` .. ``data_batch_5``;
* ``image_folder``: every image under a folder in sorted order, converted to RGB and resized to
  ``resolution`` x ``resolution`` with PIL's Lanczos filter, as EDM's tool does for FFHQ and AFHQv2 at 64x64
  (no ``--transform``), or with ``transform: center_crop_adm`` by ADM's centre crop, as DiT, MeanFlow and EDM2
  prepare ImageNet (docs/latent.md 4.3); no labels, or one class per sub-folder.

The zip is written next to its destination and renamed into place, so a failed build leaves nothing.
"""

from __future__ import annotations

import codecs
import importlib
import io
import json
import pickle
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from cmt.data.datasets import image_files
from cmt.data.files import existing_path, zip_entry
from cmt.errors import CmtError
from cmt.formats.atomic import writing
from cmt.formats.fetch import file_sha256
from cmt.formats.images import png_bytes

if TYPE_CHECKING:
    from PIL import Image

CIFAR10_BATCHES = tuple(f"cifar-10-batches-py/data_batch_{k}" for k in range(1, 6))
CIFAR10_CLASSES = 10
Item = tuple[np.ndarray, int | None]  # uint8 (H, W, C) image and its class (None: unlabelled)


class DatasetError(CmtError, ValueError):
    """An archive that cannot be turned into a dataset; the message names the file."""


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's batch pickles (dicts of numpy arrays and lists) and nothing that could run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if module == "_codecs":
            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        return importlib.import_module("numpy._core.multiarray")._reconstruct  # numpy 1.x's name maps here too


def _cifar_batch(tar: tarfile.TarFile, member: str, archive: Path) -> tuple[np.ndarray, list[int]]:
    try:
        raw = tar.extractfile(member)
    except KeyError:
        raise DatasetError(f"{archive}: no {member} (is this cifar-10-python.tar.gz?)") from None
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw.read()), encoding="latin1").load()  # Python 2 pickles
        data, labels = np.asarray(batch["data"]), [int(y) for y in batch["labels"]]
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as err:
        raise DatasetError(f"{archive}: {member}: not a CIFAR-10 batch ({err})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(
            f"{archive}: {member}: expected uint8 data (n, 3072) and n labels, got {data.dtype} {data.shape} "
            f"and {len(labels)} labels"
        )
    bad = [y for y in labels if not 0 <= y < CIFAR10_CLASSES]
    if bad:
        raise DatasetError(f"{archive}: {member}: class {bad[0]} outside 0..{CIFAR10_CLASSES - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar10_tarball(archive: str | Path) -> tuple[int, Iterator[Item]]:
    """The training images of the CIFAR-10 python tarball (count, items); a damaged or foreign archive raises
    ``DatasetError`` naming it."""
    path = existing_path(archive)
    try:
        with tarfile.open(path, "r:gz") as tar:
            batches = [_cifar_batch(tar, member, path) for member in CIFAR10_BATCHES]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(f"{path}: not a readable .tar.gz ({err})") from err
    images = np.concatenate([b[0] for b in batches])
    labels = [y for b in batches for y in b[1]]
    return len(images), zip(images, labels)


def image_folder(root: str | Path, cfg: dict) -> tuple[int, Iterator[Item]]:
    """Every image under ``root`` (sorted) as RGB, brought to ``resolution`` squared by ``transform`` when given
    (``data.build``)."""
    folder = existing_path(root)
    files = image_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no images")
    classes = sorted({f.parent for f in files})
    labels = cfg.get("labels", "none")
    if labels == "subfolders" and (len(classes) < 2 or folder in classes):
        raise DatasetError(f"{folder}: labels 'subfolders' needs every image in a class sub-folder")
    if cfg.get("transform") == "center_crop_adm" and not cfg.get("resolution"):
        raise DatasetError("data.build.transform center_crop_adm needs data.build.resolution")

    def items() -> Iterator[Item]:
        for f in files:
            image = _rgb(f, cfg.get("resolution"), cfg.get("transform", "scale"))
            yield image, classes.index(f.parent) if labels == "subfolders" else None

    return len(files), items()


def center_crop_adm(img: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop (Dhariwal & Nichol 2021, guided-diffusion ``center_crop_arr``; EDM2's
    ``center-crop-dhariwal``): halve with a box filter while the short side is at least twice ``size``, resize the
    short side to ``size`` bicubically, cut the centre square."""
    from PIL import Image

    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def _rgb(file: Path, resolution: int | None, transform: str = "scale") -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as img:
            img = img.convert("RGB")
            if resolution is not None and transform == "center_crop_adm":
                return center_crop_adm(img, resolution)
            if resolution is not None and img.size != (resolution, resolution):
                img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)  # EDM dataset_tool: scale
            return np.asarray(img)
    except OSError as err:
        raise DatasetError(f"{file}: not a readable image ({err})") from err


def archive_name(index: int) -> str:
    """EDM's name of image ``index`` inside the zip."""
    digits = f"{index:08d}"
    return f"{digits[:5]}/img{digits}.png"


def write_edm_zip(dest: str | Path, count: int, items: Iterator[Item]) -> dict:
    """Write ``count`` items as an EDM zip at ``dest`` (atomically); returns what was written."""
    labels, shape = [], None
    with writing(dest) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for index, (image, label) in enumerate(tqdm(items, total=count, desc="dataset", unit="img")):
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise DatasetError(f"image {index} is {image.shape}, the first one {shape}: resize them (resolution)")
            zf.writestr(zip_entry(archive_name(index)), png_bytes(image, fast=True))
            labels.append(label)
        labelled = [[archive_name(i), y] for i, y in enumerate(labels)] if None not in labels else None
        zf.writestr(zip_entry("dataset.json"), json.dumps({"labels": labelled}))
    classes = sorted({y for y in labels if y is not None})
    return {"count": len(labels), "shape": [shape[2], shape[0], shape[1]], "classes": len(classes)}


def build(cfg: dict, dest: str | Path) -> dict:
    """Build the zip of a config's ``data.build`` at ``dest``; returns the record (archive and zip sha256)."""
    archive = Path(cfg["archive"]).expanduser()
    archive_sha256 = file_sha256(archive) if archive.is_file() else None
    if cfg.get("sha256") and archive_sha256 != cfg["sha256"].lower():
        raise DatasetError(f"{archive}: sha256 {archive_sha256}, expected data.build.sha256 {cfg['sha256'].lower()}")
    if cfg["from"] == "cifar10_tarball":
        count, items = cifar10_tarball(archive)
    else:
        count, items = image_folder(archive, cfg)
    written = write_edm_zip(dest, count, items)
    return {
        **written,
        "from": cfg["from"],
        "archive": str(archive),
        "archive_sha256": archive_sha256,
        "sha256": file_sha256(dest),
        "file": Path(dest).name,
    }
