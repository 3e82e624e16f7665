"""CMT mid-training, consistency form (method.md 3.4, 4, 7).

Every chosen trajectory state is regressed onto the trajectory's endpoint; all time points are equally represented
(no time sampling, no weighting, no stop-gradient). The student trains with EDM scalings and is evaluated with the
consistency boundary condition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cmt.data.labels import conditioned
from cmt.errors import BadInput
from cmt.numerics.precond import Denoiser
from cmt.objectives.base import Context, TrajectoryBatch
from cmt.objectives.distances import Distance, drawn_with, make_distance
from cmt.training import parallel

POINTS = ("all", "one", "noise")


def cmt_loss(
    student: Denoiser,
    trajectories: Tensor,
    sigmas: Tensor,
    distance: Distance,
    points: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """CMT-CM: mean of d(f(x_i, sigma_i), x_end) over trajectories and states i (method.md 4).

    ``points`` (n, k) selects k state indices per trajectory; default: all S states before the end.  ``labels``
    (n,): each trajectory's class, for a class-conditional student.
    """
    n, count = trajectories.shape[:2]
    if points is None:
        points = torch.arange(count - 1, device=trajectories.device).expand(n, -1)
    rows = torch.arange(n, device=trajectories.device)[:, None].expand_as(points)
    inputs = trajectories[rows, points].flatten(0, 1)
    sigma = sigmas.to(inputs)[points.flatten()]
    targets = trajectories[:, -1:].expand(-1, points.shape[1], *trajectories.shape[2:]).flatten(0, 1)
    return distance(with_labels(student, labels, rows)(inputs, sigma), targets).mean()


def with_labels(student: Denoiser, labels: Tensor | None, rows: Tensor) -> Callable[..., Tensor]:
    """The student, conditioned on the class of each input's trajectory (``rows``: trajectory per input)."""
    return conditioned(student, None if labels is None else labels[rows.flatten()])


def state_points(variant: str, n: int, states: int, gen: torch.Generator) -> Tensor | None:
    """Which states of this process's ``n`` trajectories regress onto the endpoint: ``all`` (CMT), ``one`` random state
    per trajectory (our reading of the paper's endpoint-only 'slow' CMT), or ``noise`` (x_T only: knowledge
    distillation)."""
    if variant == "all":
        return None
    if variant == "one":
        return parallel.randint(states, (n, 1), gen)
    if variant == "noise":
        return torch.zeros((n, 1), dtype=torch.long, device=gen.device)
    raise BadInput(f"unknown CMT variant {variant!r}; valid: {', '.join(POINTS)}")


def every_state(batch_size: int, states: int) -> int:
    """Trajectories per step when each gives ``states`` student inputs."""
    if batch_size % states:
        raise BadInput(f"midtrain.batch_size ({batch_size}) must be a multiple of the {states} states per trajectory")
    return batch_size // states


@dataclass(frozen=True)
class CMTConsistency:
    """The consistency form with its state variant (``midtrain.points``) and distance (``midtrain.loss``)."""

    points: str
    distance: Distance

    def trajectories_per_step(self, batch_size: int, states: int) -> int:
        """Trajectories drawn per step: batch/S when every trajectory gives its S states, else one input each."""
        return batch_size if self.points != "all" else every_state(batch_size, states)

    def select(self, n: int, states: int, gen: torch.Generator) -> Tensor | None:
        return state_points(self.points, n, states, gen)

    def __call__(self, model: Denoiser, batch: TrajectoryBatch, gen: torch.Generator, step: int) -> Tensor:
        if batch.time != "sigma":
            raise BadInput(
                "midtrain.form consistency: a flow-map teacher's path is in flow-matching time; use form flowmap"
            )
        distance = drawn_with(self.distance, gen)
        return cmt_loss(model, batch.states, batch.grid, distance, batch.chosen, batch.labels)


def build(cfg: dict, context: Context) -> CMTConsistency:
    """From the ``midtrain`` section (``form: consistency``)."""
    distance = make_distance(
        cfg["loss"],
        pseudo_huber_c_value=cfg["pseudo_huber_c"],
        lpips_net=cfg["lpips_net"],
        lpips_resize=cfg["lpips_resize"],
        lpips_trunk=cfg["lpips_trunk"],
        lpips_backbone=context.lpips_backbone,
        device=context.device,
    )
    return CMTConsistency(cfg["points"], distance)
