"""MeanFlow (Geng et al. 2025) in the flow-matching convention (method.md 8.4, numerics.md 6.1, 9).

FM path z_t = (1 - t) x + t eps (t = 0 is data), velocity v = eps - x; the student's mean velocity u(z, r, t) is read
through the EDM converter from a preconditioned network, or is the network's output for one parameterised by flow
(``cmt.numerics.precond.mean_velocity``; latent.md 3). Training target (MeanFlow identity):
u_tgt = sg[v - clip(t - r, 0, 1) (v . d_z u + d_t u)], the bracket from one forward-mode JVP with tangents (v, 1) for
(z, t) at fixed r. A class-conditional student may fold classifier-free guidance into the target and train some
rows on the null class (latent.md 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp

from cmt.data.batches import ImageBatch
from cmt.data.labels import bound, label_dim_of, one_hot
from cmt.errors import BadInput
from cmt.numerics.precond import Denoiser, fm_range, mean_velocity
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
    n: int,
    p_mean: float,
    p_std: float,
    frac_r_neq_t: float,
    t_range: tuple[float, float],
    gen: torch.Generator,
    r_law: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """(r, t) of this process's ``n`` rows: t, r i.i.d. logit-normal, sorted so t >= r, or with ``r_law`` (mean, std)
    r of its own logit-normal and r = min(r, t) (latent.md 2.3); a fraction 1 - frac_r_neq_t gets r = t; t clipped
    to ``t_range``, the teacher's sigma range in FM time (numerics.md 6.1, 9.2)."""
    normal = parallel.randn((2, n), gen, dim=1)
    if r_law is None:
        draws = torch.sigmoid(p_mean + p_std * normal)
        t, r = draws.max(0).values, draws.min(0).values
    else:
        t, r = torch.sigmoid(p_mean + p_std * normal[0]), torch.sigmoid(r_law[0] + r_law[1] * normal[1])
    t = t.clamp(*t_range)
    keep = parallel.rand((n,), gen) < frac_r_neq_t
    return torch.where(keep, r.clamp(max=t), t), t


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance folded into MeanFlow's target, on t in [t_min, t_max] (latent.md 2.1; the config's
    ``posttrain.meanflow.guidance``)."""

    omega: float
    kappa: float
    t_min: float
    t_max: float

    @property
    def active(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0


def guided_velocity(v: Tensor, u_null: Tensor, u_cond: Tensor, t: Tensor, g: Guidance) -> Tensor:
    """omega v + (1 - omega - kappa) u(z,t,t|null) + kappa u(z,t,t|c) inside the interval, v outside (latent.md 2.1)."""
    inside = _col((t >= g.t_min) & (t <= g.t_max), v)
    omega, kappa = torch.where(inside, g.omega, 1.0), torch.where(inside, g.kappa, 0.0)
    return omega * v + (1 - omega - kappa) * u_null + kappa * u_cond


@torch.no_grad()
def instantaneous_velocities(
    model: Denoiser, z: Tensor, t: Tensor, labels: Tensor, g: Guidance
) -> tuple[Tensor, Tensor]:
    """(u(z,t,t|null), u(z,t,t|c)) of the student in eval mode, outside the graph (latent.md 2.1); the conditional
    one only where kappa needs it."""
    was_training = model.training
    model.eval()
    u_null = mean_velocity(bound(model, torch.zeros_like(labels)), z, t, t)
    u_cond = mean_velocity(bound(model, labels), z, t, t) if g.kappa else torch.zeros_like(u_null)
    model.train(was_training)
    return u_null, u_cond


def dropped_rows(r: Tensor, t: Tensor, fraction: float, frac_r_neq_t: float, gen: torch.Generator) -> Tensor:
    """Rows trained on the null class: a ``fraction`` of the batch, all among the r = t rows, as the official code
    drops the first rows, which are r = t rows (latent.md 2.2)."""
    share = 1.0 - frac_r_neq_t
    if fraction > share:
        raise BadInput(f"posttrain.meanflow.label_dropout: {fraction} exceeds the share of r = t rows ({share:g})")
    return (r == t) & (parallel.rand(t.shape, gen) < fraction / share)


def meanflow_loss(
    model: Denoiser,
    x: Tensor,
    gen: torch.Generator,
    cfg: dict,
    t_range: tuple[float, float],
    class_labels: Tensor | None = None,
) -> Tensor:
    """One MeanFlow minibatch loss on data x in [-1, 1] (method.md 8.4), with one-hot ``class_labels`` for a
    class-conditional student (guidance and label dropout: latent.md 2)."""
    r_law = None if cfg["r_logit_normal"] is None else (cfg["r_logit_normal"]["p_mean"], cfg["r_logit_normal"]["p_std"])
    r, t = sample_times(x.shape[0], cfg["p_mean"], cfg["p_std"], cfg["frac_r_neq_t"], t_range, gen, r_law)
    eps = parallel.randn(x.shape, gen)
    z = (1 - _col(t, x)) * x + _col(t, x) * eps
    v, student = eps - x, model
    g = Guidance(**cfg["guidance"])
    if class_labels is None:
        if g.active or cfg["label_dropout"]:
            raise BadInput("posttrain.meanflow.guidance/label_dropout: need a class-conditional network and labels")
    else:
        drop = dropped_rows(r, t, cfg["label_dropout"], cfg["frac_r_neq_t"], gen) if cfg["label_dropout"] else None
        if g.active:
            guided = guided_velocity(v, *instantaneous_velocities(model, z, t, class_labels, g), t, g)
            v = guided if drop is None else torch.where(_col(drop, v), v, guided)  # a dropped row keeps v
        student = bound(model, class_labels if drop is None else class_labels * ~drop[:, None])
    u, target = meanflow_target(student, z, r, t, v)
    return adaptive_loss(u, target, cfg["p"], cfg["c"])


@dataclass(frozen=True)
class MeanFlow:
    """MeanFlow on an image batch, t within ``t_range``."""

    cfg: dict
    t_range: tuple[float, float]

    def __call__(self, model: Denoiser, batch: ImageBatch, gen: torch.Generator, step: int) -> Tensor:
        labels = None if batch.labels is None else one_hot(batch.labels, label_dim_of(model))
        return meanflow_loss(model, batch.images, gen, self.cfg, self.t_range, labels)


def build(cfg: dict, context: Context) -> MeanFlow:
    """From the ``posttrain.meanflow`` section; t is bounded by the preconditioning's sigma range for an EDM student
    and spans [0, 1] for a flow one (``fm_range``)."""
    return MeanFlow(cfg, fm_range(context.parameterisation, context.sigma_min, context.sigma_max))
