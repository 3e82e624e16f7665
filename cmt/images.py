"""Image files: sample grids as PNG (written atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cmt.atomic import atomic_write_bytes


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounding as EDM ((x + 1) * 127.5, clipped)."""
    arr = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def grid(images: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile a batch into one uint8 image (H, W, C) with ``pad`` pixels of border, upscaled ``scale``x."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(arr):
        r, q = divmod(i, nrow)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = img
    return canvas.repeat(scale, 0).repeat(scale, 1)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    canvas = grid(images, nrow=nrow, scale=scale)
    buf = io.BytesIO()
    Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
