"""Samplers: multi-step diffusion sampling from the prior, 1-/2-step consistency sampling (method.md 9) and k-step
flow-map sampling (numerics.md 9.5). Which one a model takes follows from its kind (``cmt.objectives.registry``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from cmt.data.labels import conditioned
from cmt.errors import BadInput
from cmt.numerics.precond import Denoiser, fm_range, mean_velocity
from cmt.numerics.solvers import DenoiserFn, sample_trajectory, sigma_grid
from cmt.objectives.registry import MODEL_KINDS


class Draws(NamedTuple):
    """What fixes a batch of samples: each one's noise, its 2-step re-noising draw and its class label (or None)."""

    noise: Tensor
    eps: Tensor | None = None
    labels: Tensor | None = None


Sampler = Callable[[Draws], Tensor]  # a batch's draws -> its images


@dataclass(frozen=True)
class SamplerSettings:
    """What the samplers read from a config: the preconditioning's sigma range, evaluate's t_mid (2-step consistency
    sampling) and the teacher's ODE solver and grid (config ``teacher.sample``)."""

    sigma_min: float
    sigma_max: float
    t_mid: float
    solver: str
    grid: str


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
def flowmap_path(model: DenoiserFn, z: Tensor, grid: list[float]) -> Tensor:
    """Every state of k flow-map steps along ``grid`` (t_0 > ... > t_k) from z at t_0:
    z_{i+1} = z_i − (t_i − t_{i+1})·u(z_i, t_{i+1}, t_i), stacked (k + 1, n, ...) (numerics.md 9.5)."""
    states = [z]
    for t_i, t_next in zip(grid[:-1], grid[1:]):
        t = torch.full((z.shape[0],), t_i, device=z.device, dtype=z.dtype)
        r = torch.full((z.shape[0],), t_next, device=z.device, dtype=z.dtype)
        z = z - (t_i - t_next) * mean_velocity(model, z, r, t)
        states.append(z)
    return torch.stack(states)


@torch.no_grad()
def sample_meanflow(model: DenoiserFn, noise: Tensor, steps: int, t_max: float) -> Tensor:
    """k-step flow-map sampling on a uniform grid t_max -> 0 from z = t_max * eps (numerics.md 6.1, 9.5)."""
    grid = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64).tolist()
    return flowmap_path(model, t_max * noise, grid)[-1]


def check_steps(kind: str, steps: int) -> None:
    """Refuse a step count the model kind's sampler does not define (``ModelKind.steps``)."""
    if kind not in MODEL_KINDS:
        raise BadInput(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")
    allowed = MODEL_KINDS[kind].steps
    if steps < 1 or (allowed is not None and steps not in allowed):
        defined = ", ".join(map(str, allowed)) if allowed else "any positive count"
        raise BadInput(f"no {steps}-step sampler for a {kind} model; its sampler defines: {defined}")


@torch.no_grad()
def sample_few_step(model: Denoiser, kind: str, draws: Draws, steps: int, sigma_max: float, t_mid: float) -> Tensor:
    """k-step samples of a ``consistency`` model (k = 1, 2; method.md 9) or a ``meanflow`` model (any k, from the
    top of its flow-matching range, ``fm_range``; numerics.md 9.5)."""
    check_steps(kind, steps)
    if kind == "meanflow":
        model.eval()
        t_max = fm_range(model.parameterisation, 0.0, sigma_max)[1]
        return sample_meanflow(conditioned(model, draws.labels), draws.noise, steps, t_max)
    if kind != "consistency":
        raise BadInput(f"a {kind} model has no few-step sampler")
    mid = t_mid if steps == 2 else None
    return sample_consistency(model, draws.noise, sigma_max, mid, draws.eps, draws.labels)


def make_sampler(model: Denoiser, kind: str, steps: int, settings: SamplerSettings) -> Sampler:
    """The sampler of a model of ``kind`` (``cmt.objectives.registry.MODEL_KINDS``) in ``steps`` steps: the teacher's
    ODE solver on ``steps`` intervals of its grid, or the few-step sampler of a consistency or mean-flow model."""
    check_steps(kind, steps)
    if kind == "diffusion":
        sigmas = sigma_grid(settings.grid, steps, sigma_min=settings.sigma_min, sigma_max=settings.sigma_max)
        return lambda draws: sample_diffusion(conditioned(model, draws.labels), draws.noise, sigmas, settings.solver)
    return lambda draws: sample_few_step(model, kind, draws, steps, settings.sigma_max, settings.t_mid)
