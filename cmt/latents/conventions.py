"""The two latent conventions (docs/latent.md 4.1): what range pixels enter the autoencoder in, and the per-channel
affine map from its raw latents to the latents a network is trained on.

- ``sd`` (Stable Diffusion, DiT, SiT, MeanFlow): pixels in [-1, 1]; z = raw · s with one scale s for every channel
  (sd-vae-ft-mse: 0.18215, the autoencoder config's ``scaling_factor``).
- ``edm2`` (EDM2): pixels in [0, 1]; z = raw · scale_c + bias_c with scale_c = final_std / raw_std_c and
  bias_c = final_mean − raw_mean_c · scale_c (EDM2's ``StabilityVAEEncoder``).

Torch only: the constants travel as plain lists, so a record or a latent zip can carry them as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmt.errors import BadInput

CONVENTIONS = ("sd", "edm2")
# EDM2's statistics of sd-vae-ft-mse's raw latents on ImageNet, and its target std (docs/latent.md 4.1)
EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
EDM2_FINAL_MEAN, EDM2_FINAL_STD = 0.0, 0.5


@dataclass(frozen=True)
class Convention:
    """A latent convention with its constants: z = raw · scale + bias per channel, pixels entering the autoencoder
    in [0, 1] (``unit_pixels``) or [-1, 1]."""

    name: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.name not in CONVENTIONS:
            raise BadInput(f"latent.convention: unknown convention {self.name!r}; valid: {', '.join(CONVENTIONS)}")
        if len(self.scale) != len(self.bias) or not all(s > 0 for s in self.scale):
            raise BadInput(f"latent convention {self.name}: scale {self.scale} and bias {self.bias} do not fit")

    @property
    def unit_pixels(self) -> bool:
        return self.name == "edm2"

    def to_dict(self) -> dict:
        return {"convention": self.name, "scale": list(self.scale), "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, d: dict) -> "Convention":
        return cls(d["convention"], tuple(d["scale"]), tuple(d["bias"]))

    def _col(self, values: tuple[float, ...], like: Tensor) -> Tensor:
        if like.shape[1] != len(values):
            raise BadInput(f"latent convention {self.name}: {len(values)} channels, latents have {like.shape[1]}")
        return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)

    def to_latent(self, raw: Tensor) -> Tensor:
        """Raw autoencoder latents (N, C, h, w) -> training latents z (docs/latent.md 4.1)."""
        return raw * self._col(self.scale, raw) + self._col(self.bias, raw)

    def to_raw(self, z: Tensor) -> Tensor:
        """Inverse of ``to_latent``."""
        return (z - self._col(self.bias, z)) / self._col(self.scale, z)

    def pixels_in(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (every dataset here) -> the autoencoder's input range."""
        return (images + 1) / 2 if self.unit_pixels else images

    def pixels_out(self, decoded: Tensor) -> Tensor:
        """The autoencoder's output -> images in [-1, 1], clamped as both conventions' decoders clamp."""
        images = decoded * 2 - 1 if self.unit_pixels else decoded
        return images.clamp(-1, 1)


def sd_convention(scaling_factor: float, channels: int) -> Convention:
    """SD / DiT: one scale for every channel, no bias."""
    return Convention("sd", (scaling_factor,) * channels, (0.0,) * channels)


def edm2_convention(raw_mean: tuple[float, ...], raw_std: tuple[float, ...]) -> Convention:
    """EDM2: per-channel scale and bias mapping raw latents of the given statistics to mean 0, std 0.5."""
    scale = tuple(EDM2_FINAL_STD / s for s in raw_std)
    return Convention("edm2", scale, tuple(EDM2_FINAL_MEAN - m * s for m, s in zip(raw_mean, scale)))


def measured_convention(name: str, raw: Tensor) -> Convention:
    """A convention's constants measured on raw latents (N, C, h, w) of a newly trained autoencoder: SD's scale is
    1 / std over all values (how SD's 0.18215 was chosen), EDM2's per-channel mean and std (docs/latent.md 4.1)."""
    if name == "sd":
        return sd_convention(1.0 / float(raw.std()), raw.shape[1])
    flat = raw.transpose(0, 1).flatten(1)
    return edm2_convention(tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist()))
