"""Samplers: multi-step diffusion sampling from the prior, and 1-/2-step consistency sampling (method.md 9)."""

from __future__ import annotations

import torch
from torch import Tensor

from cmt.labels import conditioned
from cmt.precond import Denoiser
from cmt.solvers import Denoiser as DenoiserFn
from cmt.solvers import sample_trajectory


@torch.no_grad()
def sample_diffusion(denoiser: DenoiserFn, noise: Tensor, sigmas: Tensor, solver: str) -> Tensor:
    """Integrate the PF-ODE from x_T = sigma_max * noise along ``sigmas``; returns the final state."""
    sigmas = sigmas.to(noise.device)
    return sample_trajectory(denoiser, noise * sigmas[0].to(noise.dtype), sigmas, solver)[-1]


@torch.no_grad()
def sample_consistency(
    model: Denoiser,
    noise: Tensor,
    sigma_max: float,
    t_mid: float | None = None,
    eps: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """CM sampling in boundary (eval) mode: x0 = f(sigma_max z, sigma_max); 2-step re-noises to t_mid with ``eps``
    (method.md 9).  ``labels``: one class per sample, for a class-conditional model."""
    mode = model.mode
    model.set_mode("boundary").eval()
    net = conditioned(model, labels)
    try:
        b = noise.shape[0]
        x0 = net(noise * sigma_max, torch.full((b,), sigma_max, device=noise.device))
        if t_mid is not None:
            if eps is None:
                raise ValueError("2-step consistency sampling needs its re-noising draw eps")
            x0 = net(x0 + t_mid * eps.to(noise), torch.full((b,), t_mid, device=noise.device))
    finally:
        model.set_mode(mode)
    return x0


@torch.no_grad()
def sample_few_step(
    model: Denoiser,
    kind: str,
    noise: Tensor,
    steps: int,
    sigma_max: float,
    t_mid: float,
    eps: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """1- or 2-step samples of a ``consistency`` model (method.md 9) or a ``meanflow`` model (numerics.md 9.5);
    ``eps``: the 2-step re-noising draw, ``labels``: one class per sample, for a class-conditional model."""
    if kind == "meanflow":
        from cmt.meanflow import sample_meanflow

        model.eval()
        return sample_meanflow(conditioned(model, labels), noise, steps)
    if kind != "consistency" or steps not in (1, 2):
        raise ValueError(f"no {steps}-step sampler for model kind {kind!r}")
    return sample_consistency(model, noise, sigma_max, t_mid if steps == 2 else None, eps, labels)
