"""How good a MeanFlow target is at a two-time student, measured on the teacher's stored trajectories (the MeanFlow
finding of docs/findings.md).

MeanFlow regresses u(z_t, r, t) onto sg[v - (t - r) d/dt u], the total derivative taken by a JVP along the teacher's
velocity v (numerics.md 9). On a stored trajectory the truth is known at its states: u* = (z_k - z_j) / (t_k - t_j)
in flow-matching time. For a start state k and an end j (the trajectory's last state, or the state two steps on) this
module reports the relative squared error of the student's own u and of the target built from it; a target worse
than the student pulls it away from the flow map.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from cmt.numerics.precond import Denoiser, edm_to_fm, fm_velocity
from cmt.objectives.meanflow import meanflow_target

ENDS = ("last", "two on")


def relative_error(estimate: Tensor, truth: Tensor) -> float:
    """||estimate - truth||^2 / ||truth||^2 over the batch."""
    return float((estimate - truth).square().sum() / truth.square().sum())


def student_and_target(student: Denoiser, teacher: Denoiser, z: Tensor, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(u(z, r, t), the MeanFlow target with the teacher's velocity v in place of eps - x) (numerics.md 9.1)."""
    with torch.no_grad():
        v = fm_velocity(teacher, z, t.reshape(-1, *([1] * (z.ndim - 1))))
    u, target = meanflow_target(student, z, r, t, v)
    return u.detach(), target


def target_errors(student: Denoiser, teacher: Denoiser, states: Tensor, sigmas: Tensor) -> pd.DataFrame:
    """One row per start state k (every other one) and end: sigma_k, t_k, t_j and both relative errors; ``states``
    (n, S + 1, ...) in EDM form at ``sigmas``."""
    z, t = edm_to_fm(states, sigmas.reshape(1, -1, *([1] * (states.ndim - 2))))
    t = t.flatten()
    n, count = states.shape[:2]
    rows = []
    for end in ENDS:
        for k in range(0, count - 2, 2):
            j = count - 1 if end == "last" else k + 2
            t_k, t_j = t[k].expand(n).clone(), t[j].expand(n).clone()
            u, target = student_and_target(student, teacher, z[:, k].clone(), t_j, t_k)
            truth = (z[:, k] - z[:, j]) / (t[k] - t[j])
            rows.append(
                {"end": end, "k": k, "sigma_k": float(sigmas[k]), "t_k": float(t[k]), "t_j": float(t[j]),
                 "student": relative_error(u, truth), "target": relative_error(target, truth)}
            )  # fmt: skip
    return pd.DataFrame(rows)
