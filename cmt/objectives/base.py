"""What every objective shares: its call signature and the typed batches it is given.

An objective is built once per job from its config section (and, where its registry entry says so, a frozen
teacher), then called every step as ``objective(model, batch, generator, step)``. Draws that belong to the loss
(noise levels, noise, time pairs) come from ``generator``, so a run is fixed by its seed. An objective that reads
trajectories also says which of their states a step uses (``select``), drawn before the trajectories themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from cmt.data.batches import ImageBatch


class TrajectoryBatch(NamedTuple):
    """This process's share of a step's teacher trajectories (n, S + 1, C, H, W), their grid (S + 1,) in its time
    (EDM's sigma, or flow-matching t for a flow-map teacher's path), labels (n,) or None, and the states the
    objective chose for them (``TrajectoryObjective.select``)."""

    states: Tensor
    grid: Tensor
    labels: Tensor | None = None
    chosen: Tensor | None = None
    time: str = "sigma"


Batch = ImageBatch | TrajectoryBatch


class Objective(Protocol):
    """A training loss: one scalar per step, averaged over this process's share of the batch."""

    def __call__(self, model: nn.Module, batch: Batch, gen: torch.Generator, step: int) -> Tensor: ...


class TrajectoryObjective(Objective, Protocol):
    """An objective on teacher trajectories: which states (or state pairs) of ``n`` trajectories with ``states``
    solver steps it trains on this step (None: all of them)."""

    def select(self, n: int, states: int, gen: torch.Generator) -> Tensor | None: ...


@dataclass(frozen=True)
class Context:
    """What an objective may need besides its config section: the preconditioning's sigma range (the teacher's, which
    also bounds flow-matching time for an EDM student), the image shape, the device, a frozen teacher for methods
    that read one, the student's parameterisation (``cmt.numerics.precond.Denoiser.parameterisation``) and the files
    a distance reads."""

    sigma_min: float
    sigma_max: float
    shape: tuple[int, ...]
    device: torch.device
    teacher: nn.Module | None = None
    parameterisation: str = "edm"
    lpips_backbone: Path | None = None  # the latent LPIPS's backbone folder (cmt.latents.lpips), for loss latent_lpips
