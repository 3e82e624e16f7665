"""What a job of the ``latent`` section reads (the autoencoder stage, the latent LPIPS backbone stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmt.training.loop import Compute


@dataclass(frozen=True)
class LatentJob:
    """The config's ``latent`` and ``data`` sections, the seed, the output and work folders, the device and the fast
    paths."""

    latent: dict
    data: dict
    seed: int
    out_dir: Path
    work_dir: Path
    device: str = "auto"
    compute: Compute = field(default_factory=Compute.from_dict)
