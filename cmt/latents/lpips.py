"""The authors' latent LPIPS (latent.md 8.5; sony/cmt ``imagenet512/elatentlpips/models.py``, ``ELatentLPIPS2``):
a distance between two batches of latents through a frozen latent VGG (``cmt.latents.vgg``).

Both inputs go through the same augmentation (``cmt.latents.augment``), then the backbone's five taps. Each tap is
normalised over channels at every position, f̂ = f / √(Σ_c f² + 1e-8); its distance is Σ_c (f̂_a − f̂_b)² averaged over
positions; the value is the sum over taps. No learned heads, no L1 term.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from cmt.errors import BadInput, MissingInput
from cmt.formats.atomic import atomic_save_tensors, atomic_write_json
from cmt.latents.augment import augment_pair
from cmt.latents.vgg import LatentVGG, LatentVGGConfig

WEIGHTS, CONFIG = "backbone.safetensors", "backbone.json"  # a backbone folder
BACKBONE_META = "latent_vgg"  # the weights file's header key holding its config: the file alone is a backbone


def normalised(f: Tensor) -> Tensor:
    """f / √(Σ_c f² + 1e-8) at every position (ELatentLPIPS2's channel normalisation)."""
    return f / (f.square().sum(1, keepdim=True) + 1e-8).sqrt()


def tap_distance(fa: Tensor, fb: Tensor) -> Tensor:
    """Σ_c (f̂_a − f̂_b)² averaged over positions, per sample."""
    return (normalised(fa) - normalised(fb)).square().sum(1).mean((1, 2))


class LatentLPIPS(nn.Module):
    """The distance, per sample (B,). ``draws``: it takes the step's generator for its augmentation
    (``cmt.objectives.distances.drawn_with``); without one, or with ``augment`` off, the inputs go in as they are."""

    draws = True

    def __init__(self, backbone: LatentVGG, augment: bool = True):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.augment = augment

    def forward(self, a: Tensor, b: Tensor, gen: torch.Generator | None = None) -> Tensor:
        if self.augment and gen is not None:
            a, b = augment_pair(a, b, gen)
        return sum(tap_distance(x, y) for x, y in zip(self.backbone.taps(a), self.backbone.taps(b)))

    def train(self, mode: bool = True) -> "LatentLPIPS":
        """The backbone stays in eval mode (GroupNorm has no running statistics; dropout is only in its head)."""
        super().train(mode)
        self.backbone.eval()
        return self


def save_backbone(model: LatentVGG, folder: str | Path, record: dict) -> None:
    """A backbone folder: weights, and its config with ``record`` (how it was made, its accuracy)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_save_tensors(state, folder / WEIGHTS, {BACKBONE_META: json.dumps(model.cfg.to_dict())})
    atomic_write_json(folder / CONFIG, {"config": model.cfg.to_dict(), **record})


def load_backbone(folder: str | Path) -> LatentVGG:
    """The backbone in ``folder`` (``save_backbone``); a missing or unreadable one stops the job naming the file."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise MissingInput(f"{folder / name}: no latent LPIPS backbone (rule latent_lpips trains or fetches it)")
    return load_backbone_file(folder / WEIGHTS)


def load_backbone_file(path: str | Path) -> LatentVGG:
    """A backbone from its weights file alone, its config read from the header (``BACKBONE_META``)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        model = LatentVGG(LatentVGGConfig.from_dict(json.loads(header[BACKBONE_META])))
        model.load_state_dict(load_file(str(path)))
    except (KeyError, TypeError, RuntimeError, ValueError, SafetensorError, OSError) as err:
        raise BadInput(f"{path}: not a latent LPIPS backbone: {err!r}") from err
    return model
