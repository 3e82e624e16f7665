"""Samplers built on the solvers: multi-step diffusion sampling from the prior."""

from __future__ import annotations

import torch
from torch import Tensor

from cmt.solvers import Denoiser, sample_trajectory


@torch.no_grad()
def sample_diffusion(denoiser: Denoiser, noise: Tensor, sigmas: Tensor, solver: str) -> Tensor:
    """Integrate the PF-ODE from x_T = sigma_max * noise along ``sigmas``; returns the final state."""
    sigmas = sigmas.to(noise.device)
    return sample_trajectory(denoiser, noise * sigmas[0].to(noise.dtype), sigmas, solver)[-1]
