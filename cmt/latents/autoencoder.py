"""The autoencoder: diffusers' ``AutoencoderKL`` (the SD-VAE family) with its latent convention
(``cmt.latents.conventions``), saved as diffusers saves it plus our record ``vae.json`` (docs/latent.md 4.2).

A folder holds ``config.json``, ``diffusion_pytorch_model.safetensors`` and ``vae.json``: where the weights came
from (fetched, local or trained, with the files' sha256), the convention and its constants, the reconstruction
error. Everything that encodes or decodes loads the folder (``load_autoencoder``); nothing else reads the files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cmt.errors import BadInput, MissingInput
from cmt.formats.atomic import atomic_write_json, writing
from cmt.formats.pretrained import VAE_FILES
from cmt.latents.conventions import Convention

RECORD = "vae.json"


@dataclass
class Autoencoder:
    """An ``AutoencoderKL`` and the convention its latents are used in."""

    vae: nn.Module
    convention: Convention

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def to(self, device: torch.device | str) -> "Autoencoder":
        self.vae.to(device)
        return self

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [-1, 1] -> the raw posterior's (mean, std), as EDM2's encoder stores them (docs/latent.md 4.3)."""
        dist = self.vae.encode(self.convention.pixels_in(images)).latent_dist
        return dist.mean, dist.std

    def latents(self, mean: Tensor, std: Tensor, noise: Tensor) -> Tensor:
        """One draw z = convention(mean + std · noise) of the stored posterior (docs/latent.md 4.3)."""
        return self.convention.to_latent(mean + std * noise)

    def decode(self, z: Tensor) -> Tensor:
        """Training latents -> images in [-1, 1] (docs/latent.md 4.1)."""
        return self.convention.pixels_out(self.vae.decode(self.convention.to_raw(z)).sample)


def tiny_autoencoder(cfg: dict, channels: int) -> nn.Module:
    """A small ``AutoencoderKL`` of the SD-VAE design for the embedded data: one downsampling per extra block
    (``latent.vae.train``)."""
    from diffusers import AutoencoderKL

    blocks = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        norm_num_groups=cfg["norm_num_groups"],
    )


def read_vae(folder: Path) -> nn.Module:
    """diffusers' ``AutoencoderKL.from_pretrained`` of a folder, offline; a damaged folder is refused naming it."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise BadInput(f"{folder}: not a diffusers AutoencoderKL folder: {err}") from err


def read_record(folder: str | Path) -> dict:
    file = Path(folder) / RECORD
    if not file.is_file():
        raise MissingInput(f"autoencoder record not found: {file} (written by `python -m cmt vae`)")
    return json.loads(file.read_text())


def load_autoencoder(folder: str | Path) -> Autoencoder:
    """The autoencoder of a ``vae`` job's folder, in eval mode with its recorded convention."""
    record = read_record(folder)
    return Autoencoder(read_vae(Path(folder)).eval().requires_grad_(False), Convention.from_dict(record))


def save_autoencoder(auto: Autoencoder, folder: str | Path, record: dict, released: Path | None = None) -> None:
    """diffusers' files (a released autoencoder's byte for byte from ``released``, so their sha256 stay the
    source's), then ``vae.json`` last: its presence marks a complete folder."""
    folder = Path(folder)
    if released is None:
        auto.vae.save_pretrained(str(folder), safe_serialization=True)
    else:
        for name in VAE_FILES:
            atomic_copy(released / name, folder / name)
    atomic_write_json(folder / RECORD, {**record, **auto.convention.to_dict()})


def atomic_copy(source: Path, dest: Path) -> None:
    with writing(dest) as tmp:
        shutil.copyfile(source, tmp)


@torch.no_grad()
def reconstruction(auto: Autoencoder, images: Tensor, batch_size: int = 256) -> dict:
    """Mean squared error and PSNR (pixels in [-1, 1], peak-to-peak 2) of decode(encode mean) on ``images``."""
    errors = []
    for chunk in images.split(batch_size):
        mean, _ = auto.moments(chunk)
        errors.append((auto.decode(auto.convention.to_latent(mean)) - chunk).square().flatten(1).mean(1))
    mse = float(torch.cat(errors).mean())
    return {"mse": mse, "psnr_db": float(10 * torch.log10(torch.tensor(4.0 / mse))), "images": len(images)}
