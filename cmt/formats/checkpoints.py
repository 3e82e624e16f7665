"""Our checkpoint format: ``model.safetensors`` (weights) + ``meta.json`` (architecture, preconditioning,
data, provenance).  Files are written atomically (`cmt.formats.atomic`: temporary file + rename), so a killed job never
leaves a half-written checkpoint behind."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from cmt.errors import BadInput, MissingInput
from cmt.formats.atomic import atomic_save_tensors, atomic_write_json
from cmt.formats.names import META, WEIGHTS
from cmt.nets import build_network
from cmt.numerics.precond import Denoiser

FORMAT_VERSION = 1


def save_denoiser(folder: str | Path, denoiser: Denoiser, meta: dict) -> None:
    """Write weights and meta (arch + precond added here) into ``folder``.

    The meta is also embedded in the safetensors header (key ``cmt_meta``), so the weights file alone
    is a complete checkpoint, e.g. for ``teacher.source: fetch``.
    """
    folder = Path(folder)
    full = {
        **meta,
        "format_version": FORMAT_VERSION,
        "architecture": denoiser.model.cfg.to_dict(),
        "precond": {"sigma_data": denoiser.sigma_data, "sigma_min": denoiser.sigma_min, "mode": denoiser.mode},
    }
    state = {k: v.detach().contiguous().cpu() for k, v in denoiser.state_dict().items()}
    atomic_save_tensors(state, folder / WEIGHTS, metadata={"cmt_meta": json.dumps(full, sort_keys=True)})
    atomic_write_json(folder / META, full)


def read_json(path: str | Path, what: str) -> dict:
    """A JSON file; a missing file or bad JSON gives an error naming the file (``what`` says what it is)."""
    file = Path(path)
    if not file.is_file():
        raise MissingInput(f"{what} not found: {file}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise BadInput(f"{file}: not valid JSON: {err}") from err


def read_meta(folder: str | Path) -> dict:
    return read_json(Path(folder) / META, "checkpoint meta")


def load_denoiser(folder: str | Path) -> tuple[Denoiser, dict]:
    """Rebuild the denoiser described by ``meta.json`` and load its weights (strict)."""
    folder = Path(folder)
    return _build_and_load(read_meta(folder), folder / WEIGHTS, folder / META)


def load_denoiser_file(path: str | Path) -> tuple[Denoiser, dict]:
    """A single ``.safetensors`` checkpoint whose header carries the meta (key ``cmt_meta``)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise BadInput(f"{path}: not a safetensors checkpoint: {err}") from err
    if "cmt_meta" not in header:
        raise BadInput(f"{path}: safetensors header has no 'cmt_meta' (architecture and preconditioning)")
    return _build_and_load(json.loads(header["cmt_meta"]), path, path)


def _build_and_load(meta: dict, weights: Path, meta_source: Path) -> tuple[Denoiser, dict]:
    for key in ("architecture", "precond"):
        if key not in meta:
            raise BadInput(f"{meta_source}: missing key {key!r}")
    net = build_network(meta["architecture"])
    p = meta["precond"]
    denoiser = Denoiser(net, sigma_data=p["sigma_data"], sigma_min=p["sigma_min"], mode=p["mode"])
    try:
        state = load_file(weights)
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise BadInput(f"{weights}: cannot read checkpoint weights: {err}") from err
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BadInput(
            f"{weights}: weights do not match {meta_source}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return denoiser, meta
