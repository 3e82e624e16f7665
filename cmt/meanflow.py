"""MeanFlow in the flow-matching convention, driven by EDM-preconditioned networks (numerics.md 6.1, 9).

FM path z_t = (1 - t) x + t eps (t = 0 is data), velocity v = eps - x.  The student is the EDM
denoiser with a second time input h = t - r, read in FM time through the converter

    u(z, r, t) = (z - D(z / (1 - t), t / (1 - t); h)) / t,

so a network converted with a zero-initialised second branch starts as the converted parent field.
Training target (MeanFlow identity): u_tgt = sg[v - clip(t - r, 0, 1) (v . d_z u + d_t u)], with the
bracket from one forward-mode JVP with tangents (v, 1) for (z, t) at fixed r.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp

from cmt import parallel
from cmt.precond import Denoiser, fm_to_edm

T_MIN = 0.002 / 1.002  # the EDM teacher's sigma range [0.002, 80] in FM time (numerics.md 6.1)
T_MAX = 80.0 / 81.0


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def mean_velocity(model: Denoiser, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """u(z, r, t) of an EDM denoiser with second time input h = t - r (numerics.md 6.1 init rule)."""
    x, sigma = fm_to_edm(z, _col(t, z))
    return (z - model(x, sigma.reshape(-1), t - r)) / _col(t, z)


def meanflow_target(model: Denoiser, z: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(u_theta, u_tgt): one JVP with tangents (v, 1) for (z, t), r held fixed (MeanFlow eq. 8; numerics 9.1).

    u_theta keeps its graph for the backward pass; u_tgt is detached (stop-gradient).
    """
    u, du_dt = jvp(lambda z_, t_: mean_velocity(model, z_, r, t_), (z, t), (v, torch.ones_like(t)))
    target = v - _col((t - r).clamp(0, 1), z) * du_dt
    return u, target.detach()


def adaptive_loss(u: Tensor, target: Tensor, p: float, c: float) -> Tensor:
    """L / sg((L + c)^p) with L the per-sample sum of squares, batch mean (MeanFlow adaptive weighting)."""
    per_sample = (u - target).square().flatten(1).sum(1)
    return (per_sample / (per_sample.detach() + c) ** p).mean()


def sample_times(
    n: int, p_mean: float, p_std: float, frac_r_neq_t: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(r, t) of this process's ``n`` rows: t, r i.i.d. logit-normal, sorted so t >= r; a fraction 1 - frac_r_neq_t
    gets r = t; t clipped to the teacher's range [T_MIN, T_MAX] (numerics.md 6.1, 9.2)."""
    draws = torch.sigmoid(p_mean + p_std * parallel.randn((2, n), gen, dim=1))
    t, r = draws.max(0).values.clamp(T_MIN, T_MAX), draws.min(0).values
    keep = parallel.rand((n,), gen) < frac_r_neq_t
    return torch.where(keep, r.clamp(max=t), t), t


def meanflow_loss(model: Denoiser, x: Tensor, gen: torch.Generator, cfg: dict) -> Tensor:
    """One MeanFlow minibatch loss on data x in [-1, 1] (method.md 8.4)."""
    r, t = sample_times(x.shape[0], cfg["p_mean"], cfg["p_std"], cfg["frac_r_neq_t"], gen)
    eps = parallel.randn(x.shape, gen)
    z = (1 - _col(t, x)) * x + _col(t, x) * eps
    u, target = meanflow_target(model, z, r, t, eps - x)
    return adaptive_loss(u, target, cfg["p"], cfg["c"])


@torch.no_grad()
def sample_meanflow(model: Denoiser, noise: Tensor, steps: int, t_max: float = T_MAX) -> Tensor:
    """k-step MeanFlow sampling on a uniform grid t_max -> 0 from z = t_max * eps (numerics.md 6.1, 9.5)."""
    z = t_max * noise
    grid = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64).tolist()
    for t_i, t_next in zip(grid[:-1], grid[1:]):
        t = torch.full((z.shape[0],), t_i, device=z.device, dtype=z.dtype)
        r = torch.full((z.shape[0],), t_next, device=z.device, dtype=z.dtype)
        z = z - (t_i - t_next) * mean_velocity(model, z, r, t)
    return z
