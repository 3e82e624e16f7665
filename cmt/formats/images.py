"""Image files: the one uint8 conversion of samples, the one PNG encoder, and sample grids (written atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

from cmt.formats.atomic import atomic_write_bytes


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounding as EDM ((x + 1) * 127.5, clipped)."""
    arr = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def png_bytes(image: np.ndarray, fast: bool = False) -> bytes:
    """A uint8 image (H, W, C) with 1 or 3 channels, or (H, W), as PNG; ``fast``: stored without compression (EDM's
    dataset zips)."""
    from PIL import Image

    buf = io.BytesIO()
    options = {"compress_level": 0, "optimize": False} if fast else {}
    Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(buf, "PNG", **options)
    return buf.getvalue()


def tile(pixels: np.ndarray, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """uint8 images (N, H, W, C) tiled ``nrow`` a row (default: a square) by torchvision's ``make_grid`` with ``pad``
    pixels of black border, upscaled ``scale``x: uint8 (H', W', C)."""
    if not len(pixels):  # e.g. a per-class grid when some class has no sample yet: a blank strip
        return np.zeros((pad * scale, (pad + (nrow or 1) * (pixels.shape[2] + pad)) * scale, pixels.shape[3]), np.uint8)
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    tiled = make_grid(batch, nrow=nrow or math.ceil(math.sqrt(len(batch))), padding=pad, pad_value=0)
    canvas = tiled[: batch.shape[1]].permute(1, 2, 0).numpy()  # make_grid repeats a grey channel three times
    return canvas.repeat(scale, 0).repeat(scale, 1)


def grid(images: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) as one tiled uint8 picture (``tile``)."""
    return tile(to_uint8(images), nrow, pad, scale)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    atomic_write_bytes(path, png_bytes(grid(images, nrow=nrow, scale=scale)))
