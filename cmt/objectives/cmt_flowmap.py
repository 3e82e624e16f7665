"""CMT mid-training, flow-map form (method.md 4): a mean-flow student regressed onto finite differences of teacher
trajectories, in flow-matching time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmt.errors import BadInput
from cmt.numerics.precond import Denoiser, edm_to_fm, mean_velocity
from cmt.objectives.base import Context, TrajectoryBatch
from cmt.objectives.cmt import every_state, with_labels
from cmt.objectives.distances import squared_l2
from cmt.training import parallel


def state_pairs(states: int, device: torch.device | None = None) -> Tensor:
    """Every pair (a, b), a < b <= states, of trajectory indices (sigma_a > sigma_b): (P, 2)."""
    return torch.triu_indices(states + 1, states + 1, offset=1, device=device).T


def cmt_flowmap_loss(
    student: Denoiser,
    trajectories: Tensor,
    grid: Tensor,
    pairs: Tensor,
    labels: Tensor | None = None,
    time: str = "sigma",
) -> Tensor:
    """CMT-MF in flow-matching time: u(z_a, t_b, t_a) regressed onto (z_a - z_b) / (t_a - t_b), l2 (method.md 4).

    An ODE teacher's states and sigmas are converted from EDM first (z = x / (1 + sigma), t = sigma / (1 + sigma));
    a flow-map teacher's path is already in flow-matching time (``time`` "fm"; latent.md 6). ``pairs`` (n, k, 2)
    holds k index pairs (a, b) per trajectory.
    """
    n = trajectories.shape[0]
    column = grid.to(trajectories).reshape(1, -1, *([1] * (trajectories.ndim - 2)))
    z_all, t_all = (trajectories, column) if time == "fm" else edm_to_fm(trajectories, column)  # numerics.md 6.1
    t_all = t_all.flatten()
    rows = torch.arange(n, device=trajectories.device)[:, None].expand(n, pairs.shape[1])
    a, b = pairs[..., 0], pairs[..., 1]
    z_a, z_b = z_all[rows, a].flatten(0, 1), z_all[rows, b].flatten(0, 1)
    t_a, t_b = t_all[a.flatten()], t_all[b.flatten()]
    target = (z_a - z_b) / (t_a - t_b).reshape(-1, *([1] * (z_a.ndim - 1)))
    return squared_l2(mean_velocity(with_labels(student, labels, rows), z_a, t_b, t_a), target).mean()


@dataclass(frozen=True)
class CMTFlowMap:
    """S random state pairs per trajectory (any a < b), l2."""

    def trajectories_per_step(self, batch_size: int, states: int) -> int:
        """Trajectories drawn per step: each gives S pairs."""
        return every_state(batch_size, states)

    def select(self, n: int, states: int, gen: torch.Generator) -> Tensor:
        pairs = state_pairs(states, gen.device)
        return pairs[parallel.randint(len(pairs), (n, states), gen).to(gen.device)]

    def __call__(self, model: Denoiser, batch: TrajectoryBatch, gen: torch.Generator, step: int) -> Tensor:
        return cmt_flowmap_loss(model, batch.states, batch.grid, batch.chosen, batch.labels, batch.time)


def build(cfg: dict, context: Context) -> CMTFlowMap:
    """From the ``midtrain`` section (``form: flowmap``)."""
    if cfg["loss"] != "l2":
        raise BadInput("midtrain.form 'flowmap' uses the l2 loss (method.md 4); set midtrain.loss: l2")
    return CMTFlowMap()
