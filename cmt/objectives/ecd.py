"""Easy Consistency Distillation: ECT with x_r from one ODE step of the frozen teacher (method.md 8.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmt.data.batches import ImageBatch
from cmt.data.labels import conditioned
from cmt.errors import BadInput
from cmt.numerics.precond import Denoiser
from cmt.objectives.base import Context
from cmt.objectives.distances import make_distance
from cmt.objectives.ect import ECT, consistency_pair_loss

TEACHER_CALLS = {"euler": 1, "heun": 2}  # teacher evaluations per row of one step


def teacher_step(teacher: Denoiser, x_t: Tensor, t: Tensor, r: Tensor, kind: str) -> Tensor:
    """One Euler or Heun step of the PF-ODE from (x_t, t) to r > 0 (EDM Alg. 1/2; method.md 8.3)."""
    view = (-1,) + (1,) * (x_t.ndim - 1)
    tv, rv = t.reshape(view), r.reshape(view)
    d = (x_t - teacher(x_t, t)) / tv
    x_r = x_t + (rv - tv) * d
    if kind == "euler":
        return x_r
    if kind == "heun":
        d_r = (x_r - teacher(x_r, r)) / rv
        return x_t + (rv - tv) * (d + d_r) / 2
    raise BadInput(f"unknown teacher step {kind!r}; valid: euler, heun")


@dataclass(frozen=True)
class ECD(ECT):
    """ECT's pair loss with x_r = one teacher step from x_t (rows with r = 0 keep y as target)."""

    teacher: nn.Module | None = None

    @property
    def calls_per_row(self) -> int:
        """Teacher evaluations per training row: one ``teacher_step`` (r = 0 rows take it too)."""
        return TEACHER_CALLS[self.cfg["teacher_step"]]

    def __call__(self, model: Denoiser, batch: ImageBatch, gen: torch.Generator, step: int) -> Tensor:
        teacher = conditioned(self.teacher, batch.labels)

        def make_x_r(y: Tensor, x_t: Tensor, t: Tensor, r: Tensor) -> Tensor:
            return teacher_step(teacher, x_t, t, r, self.cfg["teacher_step"])

        student = conditioned(model, batch.labels)
        return consistency_pair_loss(student, batch.images, gen, self.cfg, self.stage(step), self.distance, make_x_r)


def build(cfg: dict, context: Context) -> ECD:
    """From the ``posttrain.ecd`` section, with the frozen teacher of ``context``."""
    if context.teacher is None:
        raise BadInput("ECD needs the frozen teacher")
    return ECD(cfg, make_distance(cfg["loss"], pseudo_huber_c_value=cfg["pseudo_huber_c"]), context.teacher)
