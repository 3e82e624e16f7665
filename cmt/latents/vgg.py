"""The latent LPIPS backbone: a VGG16 with GroupNorm on 4-channel latents, trained as a latent-space classifier
(latent.md 8.5; the authors' ``VGG16_Latent_GN`` in sony/cmt ``imagenet512/elatentlpips/models.py``).

VGG16's thirteen 3x3 convolutions, each followed by GroupNorm and ReLU, with the first two and the last of its five
max-pools removed, so a 64x64 latent keeps 64x64 through relu3_3, then 32x32 and 16x16. The five taps are relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3. The classifier head (average pool, two hidden layers with dropout, the class
layer) serves only the backbone's training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

POOL = "M"
# VGG16's configuration "D" with the first two and the last max-pool removed (latent.md 8.5)
LAYOUT = (0, 0, 1, 1, 2, 2, 2, POOL, 3, 3, 3, POOL, 4, 4, 4)  # indices into the widths; POOL: a 2x2 max-pool
TAPS = (1, 3, 6, 9, 12)  # the convolutions whose ReLU is a tap: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


@dataclass(frozen=True)
class LatentVGGConfig:
    """The backbone's size. The default is the authors' (VGG16 widths, GroupNorm(32), ImageNet's 1000 classes, 4096
    hidden units, 7x7 pooling); ``BACKBONES`` names it and the digits' one."""

    in_channels: int = 4
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    groups: int = 32
    classes: int = 1000
    hidden: int = 4096
    pool: int = 7
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LatentVGGConfig":
        return cls(**{**d, "widths": tuple(d["widths"])})


BACKBONES = {  # config latent.lpips.backbone; channels and classes come from the latent zip
    "vgg16": LatentVGGConfig(),
    "tiny": LatentVGGConfig(widths=(8, 16, 32, 32, 32), groups=4, classes=10, hidden=64, pool=1),  # digits latents
}


class LatentVGG(nn.Module):
    """``features``: the convolutional trunk; ``taps(x)`` its five tap activations; ``forward(x)`` class logits."""

    def __init__(self, cfg: LatentVGGConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        channels, self.tap_ends = cfg.in_channels, []
        conv = 0
        for item in LAYOUT:
            if item == POOL:
                layers.append(nn.MaxPool2d(2))
                continue
            width = cfg.widths[item]
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(cfg.groups, width), nn.ReLU()]
            channels, conv = width, conv + 1
            if conv in TAPS:
                self.tap_ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(cfg.pool),
            nn.Flatten(),
            nn.Linear(channels * cfg.pool**2, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.classes),
        )

    def taps(self, x: Tensor) -> list[Tensor]:
        """The five tap activations of ``x``."""
        out, start = [], 0
        for end in self.tap_ends:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@torch.no_grad()
def accuracy(model: LatentVGG, latents: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of the classifier on ``latents``."""
    model.eval()
    hits = sum(
        int((model(x).argmax(1) == y).sum()) for x, y in zip(latents.split(batch_size), labels.split(batch_size))
    )
    return hits / len(labels)
