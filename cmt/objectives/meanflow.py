"""MeanFlow (Geng et al. 2025) in the flow-matching convention on EDM-preconditioned networks (method.md 8.4,
numerics.md 6.1, 9).

FM path z_t = (1 - t) x + t eps (t = 0 is data), velocity v = eps - x; the student's mean velocity u(z, r, t) is read
through the EDM converter (``cmt.numerics.precond.mean_velocity``). Training target (MeanFlow identity):
u_tgt = sg[v - clip(t - r, 0, 1) (v . d_z u + d_t u)], the bracket from one forward-mode JVP with tangents (v, 1) for
(z, t) at fixed r.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp

from cmt.data.batches import ImageBatch
from cmt.data.labels import conditioned
from cmt.numerics.precond import Denoiser, fm_time, mean_velocity
from cmt.objectives.base import Context
from cmt.training import parallel


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


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
    n: int, p_mean: float, p_std: float, frac_r_neq_t: float, t_range: tuple[float, float], gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(r, t) of this process's ``n`` rows: t, r i.i.d. logit-normal, sorted so t >= r; a fraction 1 - frac_r_neq_t
    gets r = t; t clipped to ``t_range``, the teacher's sigma range in FM time (numerics.md 6.1, 9.2)."""
    draws = torch.sigmoid(p_mean + p_std * parallel.randn((2, n), gen, dim=1))
    t, r = draws.max(0).values.clamp(*t_range), draws.min(0).values
    keep = parallel.rand((n,), gen) < frac_r_neq_t
    return torch.where(keep, r.clamp(max=t), t), t


def meanflow_loss(model: Denoiser, x: Tensor, gen: torch.Generator, cfg: dict, t_range: tuple[float, float]) -> Tensor:
    """One MeanFlow minibatch loss on data x in [-1, 1] (method.md 8.4)."""
    r, t = sample_times(x.shape[0], cfg["p_mean"], cfg["p_std"], cfg["frac_r_neq_t"], t_range, gen)
    eps = parallel.randn(x.shape, gen)
    z = (1 - _col(t, x)) * x + _col(t, x) * eps
    u, target = meanflow_target(model, z, r, t, eps - x)
    return adaptive_loss(u, target, cfg["p"], cfg["c"])


@dataclass(frozen=True)
class MeanFlow:
    """MeanFlow on an image batch, t within ``t_range``."""

    cfg: dict
    t_range: tuple[float, float]

    def __call__(self, model: Denoiser, batch: ImageBatch, gen: torch.Generator, step: int) -> Tensor:
        return meanflow_loss(conditioned(model, batch.labels), batch.images, gen, self.cfg, self.t_range)


def build(cfg: dict, context: Context) -> MeanFlow:
    """From the ``posttrain.meanflow`` section; t is bounded by the preconditioning's sigma range."""
    return MeanFlow(cfg, (fm_time(context.sigma_min), fm_time(context.sigma_max)))
