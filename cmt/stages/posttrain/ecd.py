"""Easy Consistency Distillation: ECT with x_r from one ODE step of the frozen teacher (method.md 8.3)."""

from __future__ import annotations

import torch
from torch import Tensor

from cmt.losses import Distance
from cmt.precond import Denoiser
from cmt.stages.posttrain.ect import consistency_pair_loss
from cmt.train import LoopConfig

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
    raise ValueError(f"unknown teacher step {kind!r}; valid: euler, heun")


def ecd_teacher_nfe(cfg: dict, loop: LoopConfig) -> int:
    """Teacher evaluations of a whole ECD run: every row of every batch takes one step (r = 0 rows too)."""
    return loop.iterations * loop.batch_size * TEACHER_CALLS[cfg["teacher_step"]]


def ecd_loss(
    model: Denoiser, teacher: Denoiser, y: Tensor, gen: torch.Generator, cfg: dict, stage: int, distance: Distance
) -> Tensor:
    """ECD: the ECT pair loss with x_r = teacher step from x_t (rows with r = 0 keep y as target)."""
    return consistency_pair_loss(
        model, y, gen, cfg, stage, distance, lambda y_, x_t, t, r: teacher_step(teacher, x_t, t, r, cfg["teacher_step"])
    )
