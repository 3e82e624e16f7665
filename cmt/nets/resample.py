"""2x up- and downsampling with a fixed separable FIR filter, as EDM's and EDM2's networks resample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fir_filter(taps: tuple[int, ...] | list[int]) -> Tensor:
    """The normalised 2-D filter outer(f, f) / sum(f)^2, shaped (1, 1, k, k)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return f.outer(f)[None, None] / f.sum().square()


def fir_resample(x: Tensor, filt: Tensor | tuple[int, ...], up: bool) -> Tensor:
    """Depthwise 2x upsampling (transposed convolution with 4 f) or downsampling (strided convolution with f)."""
    f = (fir_filter(filt) if not isinstance(filt, Tensor) else filt).to(x.device, x.dtype)
    c, pad = x.shape[1], (f.shape[-1] - 1) // 2
    if up:
        return F.conv_transpose2d(x, (4 * f).tile(c, 1, 1, 1), groups=c, stride=2, padding=pad)
    return F.conv2d(x, f.tile(c, 1, 1, 1), groups=c, stride=2, padding=pad)
