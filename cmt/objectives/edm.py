"""The teacher's objective: EDM's denoising loss (Karras et al. 2022, eq. 2 and 8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cmt.data.batches import ImageBatch
from cmt.data.labels import conditioned
from cmt.numerics.precond import Denoiser, edm_loss_weight
from cmt.objectives.base import Context
from cmt.training import parallel


def edm_loss(
    denoiser: Denoiser,
    images: Tensor,
    p_mean: float,
    p_std: float,
    generator: torch.Generator,
    labels: Tensor | None = None,
) -> Tensor:
    """EDM loss: lambda(sigma) ||D(y + sigma n, sigma; labels) - y||^2, ln sigma ~ N(p_mean, p_std^2) (EDM eq. 2, 8).

    Per-sample sum over pixels, mean over the batch (numerics.md 2.2); ``labels``: integer class labels. ``images`` are
    this process's share of the batch; sigma and noise are drawn for the global batch (``cmt.training.parallel``).
    """
    sigma = (parallel.randn((images.shape[0],), generator) * p_std + p_mean).exp()
    noise = parallel.randn(images.shape, generator)
    denoised = conditioned(denoiser, labels)(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma)
    per_sample = (denoised - images).square().flatten(1).sum(1)
    return (edm_loss_weight(sigma) * per_sample).mean()


@dataclass(frozen=True)
class EDMDenoising:
    """EDM's loss per pixel (as EDM logs it) on an image batch."""

    p_mean: float
    p_std: float
    pixels: int

    def __call__(self, model: Denoiser, batch: ImageBatch, gen: torch.Generator, step: int) -> Tensor:
        return edm_loss(model, batch.images, self.p_mean, self.p_std, gen, batch.labels) / self.pixels


def build(cfg: dict, context: Context) -> EDMDenoising:
    """From the ``teacher.train`` section."""
    return EDMDenoising(cfg["p_mean"], cfg["p_std"], math.prod(context.shape))
