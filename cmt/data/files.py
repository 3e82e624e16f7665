"""Files a dataset is read from and written to: a path that must exist, the class labels of a zip's entries from its
``dataset.json`` (EDM's layout, which EDM2's latent zips share), a zip's members read on demand in any process, and
zip entries with a fixed timestamp."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from cmt.errors import BadInput, MissingInput


def existing_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingInput(f"data path does not exist: {p}")
    return p


def edm_zip_labels(file: Path, zf: zipfile.ZipFile, names: list[str]) -> Tensor | None:
    """Labels of an EDM zip's images from its ``dataset.json`` ({"labels": [[name, y], ...]} or null)."""
    if "dataset.json" not in zf.namelist():
        return None
    try:
        entries = json.loads(zf.read("dataset.json")).get("labels")
        by_name = {name: int(y) for name, y in entries or []}
    except (ValueError, TypeError, AttributeError) as err:
        raise BadInput(f'{file}: dataset.json: expected {{"labels": [[name, class], ...]}}: {err}') from err
    if not entries:
        return None
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BadInput(f"{file}: dataset.json has no label for {missing[0]} ({len(missing)} missing)")
    labels = torch.tensor([by_name[n] for n in names])
    if int(labels.min()) < 0:
        raise BadInput(f"{file}: dataset.json: negative class {int(labels.min())}")
    return labels


def zip_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed timestamp, so the same content gives a byte-identical zip."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


class ZipMembers:
    """Members of a zip, read on demand; each process (DataLoader worker) opens its own handle."""

    def __init__(self, path: Path, names: list[str]):
        self.path, self.names, self._zip, self._pid = path, names, None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.names)

    def read(self, row: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker must not share its parent's file offset
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(self.names[row])
