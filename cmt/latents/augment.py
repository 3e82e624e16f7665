"""The latent LPIPS's differentiable augmentation: one random draw per sample, applied alike to both inputs of a
distance (latent.md 8.5).

The authors apply StyleGAN2-ADA's ``bgcfnc`` pipeline at p = 1 to both latents (their ``ada_aug.py`` is unreleased).
Its operations, each here with ADA's default strength [A, NVlabs/stylegan2-ada-pytorch ``training/augment.py``]:

- geometric, one affine map per sample (bilinear, reflected borders): x-flip, 90° rotations, integer translation
  (±0.125 of the side), isotropic scale (2^N(0, 0.2)), rotation (uniform angle, before and after the anisotropic
  scale), anisotropic scale (2^N(0, 0.2)), fractional translation (N(0, 0.125) of the side);
- "colour", on the latent channels: brightness (+N(0, 0.2)), contrast (×2^N(0, 0.5)), saturation (the deviation
  from the channel mean ×2^N(0, 1), ADA's luma axis taken as the all-ones direction) [D];
- image filter: gains 2^N(0, 1) on four octave bands of spatial frequency, one band at a time, normalised to unit
  mean-square gain (a Fourier-domain stand-in for ADA's wavelet filter bank) [D];
- additive noise of std |N(0, 0.1)|, one noise tensor for both inputs (ADA draws it once per image);
- cutout: a square of half the side zeroed at a uniform centre.

Luma flip and hue rotation are left out [D]: they act on RGB's luma axis, which four latent channels do not have
(a rotation "about an axis" is not defined in four dimensions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

XINT_MAX, SCALE_STD, ANISO_STD, XFRAC_STD = 0.125, 0.2, 0.2, 0.125  # ADA's geometric defaults
BRIGHTNESS_STD, CONTRAST_STD, SATURATION_STD = 0.2, 0.5, 1.0  # ADA's colour defaults
IMGFILTER_STD, BANDS, NOISE_STD, CUTOUT_SIZE = 1.0, 4, 0.1, 0.5  # ADA's filter, noise and cutout defaults


@dataclass(frozen=True)
class Draw:
    """One augmentation per sample: its affine map (output -> input coordinates, normalised), channel affine
    (brightness, contrast, saturation), band gains, noise and cutout mask."""

    affine: Tensor  # (B, 2, 3)
    brightness: Tensor  # (B, 1, 1, 1)
    contrast: Tensor
    saturation: Tensor
    band_gains: Tensor  # (B, BANDS)
    noise: Tensor  # (B, C, H, W), scaled
    keep: Tensor  # (B, 1, H, W), 0 inside the cutout


def _rotation(angle: Tensor) -> Tensor:
    c, s, z = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), _last_row(angle)], -2)


def _last_row(like: Tensor) -> Tensor:
    z = torch.zeros_like(like)
    return torch.stack([z, z, torch.ones_like(like)], -1)


def _scale(sx: Tensor, sy: Tensor) -> Tensor:
    z = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, z, z], -1), torch.stack([z, sy, z], -1), _last_row(sx)], -2)


def _translation(tx: Tensor, ty: Tensor) -> Tensor:
    o, z = torch.ones_like(tx), torch.zeros_like(tx)
    return torch.stack([torch.stack([o, z, tx], -1), torch.stack([z, o, ty], -1), _last_row(tx)], -2)


def _normal(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(n, generator=gen, device=device)


def _uniform(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device)


def geometric(n: int, side: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """ADA's geometric chain as one affine map per sample, in normalised coordinates (the side spans 2)."""
    flip = 1 - 2 * torch.randint(2, (n,), generator=gen, device=device).float()
    quarter = torch.randint(4, (n,), generator=gen, device=device).float() * (math.pi / 2)
    shift = [torch.round((_uniform(n, gen, device) * 2 - 1) * XINT_MAX * side) * 2 / side for _ in range(2)]
    iso = torch.exp2(_normal(n, gen, device) * SCALE_STD)
    before, after = [(_uniform(n, gen, device) * 2 - 1) * math.pi for _ in range(2)]
    aniso = torch.exp2(_normal(n, gen, device) * ANISO_STD)
    frac = [_normal(n, gen, device) * XFRAC_STD * 2 for _ in range(2)]
    chain = [
        _scale(flip, torch.ones_like(flip)),
        _rotation(quarter),
        _translation(*shift),
        _scale(iso, iso),
        _rotation(before),
        _scale(aniso, 1 / aniso),
        _rotation(after),
        _translation(*frac),
    ]
    matrix = chain[0]
    for step in chain[1:]:
        matrix = matrix @ step
    return matrix[:, :2]


def band_gains(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """Gains of the four octave bands: each band in turn ×2^N(0, 1), then unit mean-square gain over the bands."""
    gains = torch.ones(n, BANDS, device=device)
    for band in range(BANDS):
        gains[:, band] *= torch.exp2(_normal(n, gen, device) * IMGFILTER_STD)
    return gains / gains.square().mean(1, keepdim=True).sqrt()


def draw(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Draw:
    """One augmentation per sample of a batch of ``shape`` (B, C, H, W), from ``gen``."""
    n, c, h, w = shape
    affine = geometric(n, w, gen, device)
    col = (n, 1, 1, 1)
    brightness = (_normal(n, gen, device) * BRIGHTNESS_STD).view(col)
    contrast = torch.exp2(_normal(n, gen, device) * CONTRAST_STD).view(col)
    saturation = torch.exp2(_normal(n, gen, device) * SATURATION_STD).view(col)
    gains = band_gains(n, gen, device)
    sigma = (_normal(n, gen, device).abs() * NOISE_STD).view(col)
    noise = sigma * torch.randn(shape, generator=gen, device=device)
    centre = [_uniform(n, gen, device).view(n, 1, 1) for _ in range(2)]
    ys = (torch.arange(h, device=device).view(1, h, 1) + 0.5) / h
    xs = (torch.arange(w, device=device).view(1, 1, w) + 0.5) / w
    inside = ((xs - centre[0]).abs() < CUTOUT_SIZE / 2) & ((ys - centre[1]).abs() < CUTOUT_SIZE / 2)
    return Draw(affine, brightness, contrast, saturation, gains, noise, (~inside).float().unsqueeze(1))


BAND_EDGES = (1 / 8, 1 / 4, 1 / 2)  # octave bands of radial frequency, in units of Nyquist


def filtered(x: Tensor, gains: Tensor) -> Tensor:
    """``x`` with each octave band of its 2-D spectrum ((0, 1/8], (1/8, 1/4], (1/4, 1/2], (1/2, 1] of Nyquist by the
    larger of the two axes' frequencies; the mean goes with the lowest) scaled by its gain."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).abs().view(h, 1) * 2
    fx = torch.fft.rfftfreq(w, device=x.device).view(1, -1) * 2
    edges = torch.tensor(BAND_EDGES, device=x.device)
    band = torch.bucketize(torch.maximum(fy, fx).contiguous(), edges)  # (h, w // 2 + 1) band index
    return torch.fft.irfft2(torch.fft.rfft2(x) * gains[:, band].unsqueeze(1), s=(h, w))


def apply(x: Tensor, d: Draw) -> Tensor:
    """The drawn augmentation of ``x`` (differentiable in ``x``), in ADA's order: geometric, brightness, contrast,
    saturation, image filter, noise, cutout."""
    grid = F.affine_grid(d.affine.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = (x + d.brightness) * d.contrast
    mean = x.mean(1, keepdim=True)
    x = filtered(mean + d.saturation * (x - mean), d.band_gains.to(x.dtype))
    return (x + d.noise.to(x.dtype)) * d.keep.to(x.dtype)


def augment_pair(a: Tensor, b: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``a`` and ``b`` through the same per-sample augmentation."""
    d = draw(tuple(a.shape), gen, a.device)
    return apply(a, d), apply(b, d)
