"""Files a dataset is read from: a path that must exist, and the class labels of a zip's entries from its
``dataset.json`` (EDM's layout, which EDM2's latent zips share)."""

from __future__ import annotations

import json
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
