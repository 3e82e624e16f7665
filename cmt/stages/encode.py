"""The encoding stage (docs/latent.md 4.3): every image of the dataset through the autoencoder once, its posterior
(mean, std) stored in a latent zip with the labels, the convention and the autoencoder's identity. The whole
dataset is encoded; training jobs split the latent zip with the dataset's own split seed, so the rows agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cmt.data.datasets import load_dataset
from cmt.data.latent_zip import write_latent_zip
from cmt.formats.fetch import file_sha256
from cmt.latents.autoencoder import RECORD, load_autoencoder, read_record
from cmt.training.loop import resolve_device


def run(data_cfg: dict, encode_cfg: dict, vae_dir: str | Path, out: str | Path, device: str = "auto") -> dict:
    """Encode the config's dataset into the latent zip ``out``; returns its record (count, shape, sha256s)."""
    images = load_dataset(data_cfg)
    auto = load_autoencoder(vae_dir).to(resolve_device(device))
    vae = read_record(vae_dir)
    origin = {k: vae[k] for k in ("source", "repo", "revision", "files") if k in vae}
    vae_facts = {**origin, "folder": str(vae_dir), "record_sha256": file_sha256(Path(vae_dir) / RECORD)}
    images_facts = {"source": data_cfg["source"], "path": data_cfg["path"]}  # the images the latents stand for
    meta = {**auto.convention.to_dict(), "vae": vae_facts, "images": images_facts}
    written = write_latent_zip(out, len(images), moments(images, auto, encode_cfg["batch_size"]), meta)
    return {**written, "images": images.name, "convention": auto.convention.name, "sha256": file_sha256(out)}


def moments(images, auto, batch_size: int) -> Iterator[tuple[np.ndarray, int | None]]:
    """Each image's stacked (mean, std) as float32 (2C, h, w), with its label."""
    device = next(auto.vae.parameters()).device
    for first in range(0, len(images), batch_size):
        index = torch.arange(first, min(first + batch_size, len(images)))
        with torch.no_grad():
            mean, std = auto.moments(images.read(index).to(device))
        stacked = torch.cat([mean, std], dim=1).cpu().numpy()
        for row, i in enumerate(index.tolist()):
            yield stacked[row], None if images.labels is None else int(images.labels[i])
