"""What a job whose data may be latents needs to score and show its samples: the held-out images it is scored
against, and the decoder from its samples to images in [-1, 1] (docs/latent.md 4.4).

A pixel dataset is its own: its held-out split, and samples that already are images. A latent zip names the
images it encoded and the autoencoder that encoded them (its ``latents.json``), so a job reads the held-out
*images* (the same rows, split with the same seed) and decodes its samples with that autoencoder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from cmt.data.datasets import Images, load_dataset, split
from cmt.data.latent_zip import read_latent_meta
from cmt.errors import BadInput
from cmt.latents.autoencoder import load_autoencoder

Decode = Callable[[Tensor], Tensor]  # a batch of samples -> images in [-1, 1]
DECODE_BATCH = 256


def is_latent(data_cfg: dict) -> bool:
    return data_cfg["source"] == "latent_zip"


def named(data_cfg: dict, key: str) -> dict:
    """What a latent zip's ``latents.json`` says under ``key`` (``images``: the data section of the images it
    encoded; ``vae``: the autoencoder, its ``folder`` among it)."""
    meta = read_latent_meta(data_cfg["path"])
    if key not in meta or (key == "vae" and "folder" not in meta[key]):
        raise BadInput(f"{data_cfg['path']}: latents.json names no {key} (re-encode with `python -m cmt encode`)")
    return meta[key]


def images_section(data_cfg: dict) -> dict:
    """The ``data`` section of the images a latent zip encoded (its split settings kept); a pixel section itself."""
    return {**data_cfg, **named(data_cfg, "images")} if is_latent(data_cfg) else data_cfg


def holdout_images(data_cfg: dict) -> Images:
    """The held-out images a job's samples are scored against."""
    section = images_section(data_cfg)
    images = load_dataset(section)
    if is_latent(data_cfg) and read_latent_meta(data_cfg["path"])["count"] != len(images):
        raise BadInput(f"{data_cfg['path']}: {len(images)} images in {section['source']}, a different count encoded")
    return split(images, section["holdout_fraction"], section["split_seed"])[1]


def identity(samples: Tensor) -> Tensor:
    return samples


def sample_decoder(data_cfg: dict, device: torch.device | str = "cpu", autoencoder: str | Path | None = None) -> Decode:
    """Samples -> images: the identity for pixel data, otherwise the autoencoder in folder ``autoencoder`` (a job that
    reads no latent zip: data-free CMT) or the one the latent zip names (no gradients)."""
    if not is_latent(data_cfg):
        return identity
    auto = load_autoencoder(autoencoder or named(data_cfg, "vae")["folder"]).to(device)

    @torch.no_grad()
    def decode(samples: Tensor) -> Tensor:
        return torch.cat([auto.decode(chunk.to(device)) for chunk in samples.split(DECODE_BATCH)]).to(samples.device)

    return decode
