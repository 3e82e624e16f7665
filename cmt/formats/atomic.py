"""Files that appear whole or not at all: every artifact and resume checkpoint is written to a temporary
file next to its target and renamed over it, so a killed writer leaves the previous file (or none), plus a
temporary that nothing reads as the file and the next writer's start removes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

FILE_MODE = 0o644  # mkstemp creates 0600; artifacts are meant to be shared
PART_SUFFIX = ".part"


def temporary_next_to(target: Path) -> tuple[int, str]:
    """A new, open temporary file in ``target``'s folder, ``.<name>.<random>.part`` (its folder is created)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PART_SUFFIX)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete what a killed writer of ``path`` left behind (never read as the file itself); returns them."""
    target = Path(path)
    stale = sorted(target.parent.glob(f".{target.name}.*{PART_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    target = Path(path)
    fd, tmp = temporary_next_to(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def writing(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write the file into; renamed over ``path`` when the block ends
    without an error, deleted otherwise."""
    target = Path(path)
    fd, tmp = temporary_next_to(target)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written through a temporary file and an atomic rename."""
    from safetensors.torch import save_file  # here, so the serial rules (ingest, report) never import torch

    with writing(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
