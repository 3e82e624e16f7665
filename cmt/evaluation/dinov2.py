"""DINOv2 features for FD_DINOv2 as EDM2 measures it (docs/latent.md 8.7): the ViT of facebookresearch/dinov2,
written here and loaded from its released state dict without running any of that repository's code.

EDM2's detector: uint8 images resized bicubically with antialiasing to 224 x 224 on float pixels, scaled to [0, 1],
normalised by ImageNet's mean and standard deviation, and the class token after the final LayerNorm (1024 features
for ViT-L/14) [A, NVlabs/edm2 ``calculate_metrics.py`` DINOv2Detector, resize_mode 'torch'].

The architecture is read off the file: width from the class token, depth from the blocks, 64 channels per head
(every DINOv2 size), patch size from the patch embedding, and the position grid the checkpoints were trained at
(37 x 37 patches of 14 pixels, 518 pixels) from the position embedding.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt.errors import BadInput
from cmt.formats.images import to_uint8

INPUT_SIZE = 224  # EDM2 resizes every image to 224 x 224 before DINOv2 [A, calculate_metrics.py]
HEAD_CHANNELS = 64  # channels per attention head in every DINOv2 size (S/6, B/12, L/16, g/24 heads)
LAYER_NORM_EPS = 1e-6  # [A, dinov2/models/vision_transformer.py: partial(nn.LayerNorm, eps=1e-6)]
POSITION_OFFSET = 0.1  # dinov2's interpolate_offset: its scale factor is (grid + 0.1) / trained grid
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNUSED_KEYS = ("mask_token",)  # the masked-image-modelling token: a training-only parameter, never read here


@dataclass(frozen=True)
class VitShape:
    """A DINOv2 ViT's size: token width, blocks, heads, patch pixels and the trained position grid (patches/side)."""

    width: int
    depth: int
    heads: int
    patch: int
    grid: int


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (dinov2's ``ls1``/``ls2``)."""

    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head channels)) v
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale: x + ls1(attn(norm1 x)), then + ls2(mlp(norm2 x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = Attention(width, heads)
        self.ls1 = LayerScale(width)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(width)
        self.ls2 = LayerScale(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_positions(pos_embed: Tensor, grid: int) -> Tensor:
    """The position embedding (1, 1 + G^2, C) trained on a G x G grid, resampled to ``grid`` x ``grid`` patches as
    dinov2 does: bicubic, no antialiasing, with the scale factor (grid + 0.1) / G rather than an output size, which
    places the samples slightly differently from a plain resize [A, dinov2 ``interpolate_pos_encoding``]."""
    trained = math.isqrt(pos_embed.shape[1] - 1)
    if grid == trained:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].float()
    square = patches.reshape(1, trained, trained, -1).permute(0, 3, 1, 2)
    scale = (grid + POSITION_OFFSET) / trained
    resized = F.interpolate(square, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)], dim=1)


class DinoVit(nn.Module):
    """DINOv2's ViT with the state-dict names of its released checkpoints; ``forward`` gives the class token after
    the final LayerNorm (dinov2's ``x_norm_clstoken``, what its ``forward`` returns with an identity head)."""

    def __init__(self, shape: VitShape):
        super().__init__()
        self.shape = shape
        self.patch_embed = PatchEmbed(shape.width, shape.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, shape.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + shape.grid**2, shape.width))
        self.blocks = nn.ModuleList(Block(shape.width, shape.heads) for _ in range(shape.depth))
        self.norm = nn.LayerNorm(shape.width, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = tokens + interpolate_positions(self.pos_embed, x.shape[-1] // self.shape.patch)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def vit_shape(state: dict[str, Tensor], file: Path) -> VitShape:
    """A checkpoint's size, read off its tensors; raises naming the file and the missing key."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise BadInput(f"{file}: not a DINOv2 checkpoint: no tensor {key!r}")
    width = state["cls_token"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    depth = len({m[1] for key in state if (m := re.match(r"blocks\.(\d+)\.", key))})
    if width % HEAD_CHANNELS or grid * grid != state["pos_embed"].shape[1] - 1:
        raise BadInput(f"{file}: cls_token width {width} / pos_embed {tuple(state['pos_embed'].shape)} fit no DINOv2")
    return VitShape(width, depth, width // HEAD_CHANNELS, state["patch_embed.proj.weight"].shape[-1], grid)


def load_dinov2(file: str | Path) -> DinoVit:
    """The ViT of a released DINOv2 state dict (``dinov2_vitl14_pretrain.pth``), read with ``weights_only`` so that
    nothing in the file runs; every tensor must match by name and shape, else the error names the file and key."""
    file = Path(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or OSError for a foreign file
        raise BadInput(f"{file}: not a DINOv2 state dict readable without running code ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BadInput(f"{file}: not a DINOv2 state dict (expected a mapping of names to tensors)")
    model = DinoVit(vit_shape(state, file))
    expected = model.state_dict()
    for key in sorted(set(expected) | set(state) - set(UNUSED_KEYS)):
        if key not in state or key not in expected:
            raise BadInput(f"{file}: {'missing' if key not in state else 'unexpected'} tensor {key!r}")
        if state[key].shape != expected[key].shape:
            raise BadInput(f"{file}: {key} has shape {tuple(state[key].shape)}, expected {tuple(expected[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k not in UNUSED_KEYS})
    return model.eval().requires_grad_(False)


def detector_input(pixels: Tensor) -> Tensor:
    """uint8-valued pixels (n, 3, H, W) to the network's input: bicubic antialiased resize to 224 on float pixels,
    [0, 1], ImageNet normalisation [A, calculate_metrics.py DINOv2Detector]."""
    x = F.interpolate(pixels.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True) / 255
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x - mean) / std


class Dinov2Features:
    """DINOv2 class-token features of images in [-1, 1], quantised to uint8 as samples are saved."""

    def __init__(self, mode: str, device: torch.device, file: Path):
        self.mode, self.device = mode, device
        self.model = load_dinov2(file).to(device)

    @property
    def features(self) -> int:
        return self.model.shape.width

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        """(n, width) float64 features; grey images are repeated to 3 channels."""
        pixels = torch.from_numpy(to_uint8(images).transpose(0, 3, 1, 2).copy()).to(self.device)
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        return self.model(detector_input(pixels)).double().cpu().numpy()
