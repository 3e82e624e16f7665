"""Our checkpoint format: ``model.safetensors`` (weights) + ``meta.json`` (architecture, preconditioning,
data, provenance).  Files are written atomically (temporary file + rename), so a killed job never
leaves a half-written checkpoint behind."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cmt.nets import UNetConfig, build_unet
from cmt.precond import Denoiser

WEIGHTS = "model.safetensors"
META = "meta.json"
FORMAT_VERSION = 1
FILE_MODE = 0o644  # mkstemp creates 0600; artifacts are meant to be shared


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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


def save_denoiser(folder: str | Path, denoiser: Denoiser, meta: dict) -> None:
    """Write weights and meta (arch + precond added here) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in denoiser.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, folder / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    full = {
        **meta,
        "format_version": FORMAT_VERSION,
        "architecture": denoiser.model.cfg.to_dict(),
        "precond": {"sigma_data": denoiser.sigma_data, "sigma_min": denoiser.sigma_min, "mode": denoiser.mode},
    }
    atomic_write_json(folder / META, full)


def read_meta(folder: str | Path) -> dict:
    file = Path(folder) / META
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint meta not found: {file}")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON: {err}") from err
    for key in ("architecture", "precond"):
        if key not in meta:
            raise ValueError(f"{file}: missing key {key!r}")
    return meta


def load_denoiser(folder: str | Path) -> tuple[Denoiser, dict]:
    """Rebuild the denoiser described by ``meta.json`` and load its weights (strict)."""
    folder = Path(folder)
    meta = read_meta(folder)
    net = build_unet(UNetConfig.from_dict(meta["architecture"]))
    p = meta["precond"]
    denoiser = Denoiser(net, sigma_data=p["sigma_data"], sigma_min=p["sigma_min"], mode=p["mode"])
    weights = folder / WEIGHTS
    try:
        state = load_file(weights)
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise ValueError(f"{weights}: cannot read checkpoint weights: {err}") from err
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match {folder / META}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return denoiser, meta


def git_commit() -> str:
    """Current git commit of the working tree (``unknown`` outside a repository), '+dirty' if modified."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
