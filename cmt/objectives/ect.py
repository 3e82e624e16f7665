"""Easy Consistency Tuning (Geng et al., ICLR 2025) as CMT's post-training (method.md 8.1, numerics.md 8).

Pairs (x_t, x_r) share the noise; the target is the same online network at r under no-grad with
the same dropout mask (RNG replayed); rows with r = 0 use the clean image; weight 1/(t - r).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from cmt.data.batches import ImageBatch
from cmt.data.labels import conditioned
from cmt.errors import BadInput
from cmt.numerics.precond import SIGMA_DATA, Denoiser
from cmt.objectives.base import Context
from cmt.objectives.distances import Distance, make_distance
from cmt.training import parallel

PairFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (y, x_t, t, r) -> x_r


def ect_r(t: Tensor, q: float, stage: int, k: float = 8.0, b: float = 1.0) -> Tensor:
    """r = max(0, t (1 - q^-(s+1) n(t))), n(t) = 1 + k sigmoid(-b t) (ECT 'sigmoid' mapping; numerics.md 8)."""
    return (t * (1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t)))).clamp_min(0)


def ect_stage(step: int, iterations_per_tick: int, double_ticks: int) -> int:
    """Stage s = floor((completed ticks - 1) / double), 0 before the first tick; double = 0 never advances."""
    ticks = step // iterations_per_tick
    return 0 if double_ticks <= 0 or ticks == 0 else (ticks - 1) // double_ticks


def pair_weight(t: Tensor, r: Tensor, weighting: str, sigma_data: float = SIGMA_DATA) -> Tensor:
    """ECT's 1/(t - r) (method.md 8.1) or EDM2-style 1/t^2 + 1/sigma_data^2 (ECT/ECD on EDM2, method.md 8.2)."""
    if weighting == "inverse_dt":
        return 1 / (t - r)
    if weighting == "edm2":
        return 1 / t**2 + 1 / sigma_data**2
    raise BadInput(f"unknown weighting {weighting!r}; valid: inverse_dt, edm2")


def pair_times(n: int, gen: torch.Generator, cfg: dict, stage: int) -> tuple[Tensor, Tensor]:
    """(t, r) of ``n`` rows: ln t ~ N(p_mean, p_std^2), r from ECT's mapping at ``stage`` (method.md 8.1 steps 1-2)."""
    t = (cfg["p_mean"] + cfg["p_std"] * parallel.randn((n,), gen)).exp()
    return t, ect_r(t, cfg["q"], stage, cfg["k"], cfg["b"])


def consistency_pair_loss(
    model: Denoiser, y: Tensor, gen: torch.Generator, cfg: dict, stage: int, distance: Distance, make_x_r: PairFn
) -> Tensor:
    """d(f(x_t, t), sg f(x_r, r)) * w(t, r), batch mean; rows with r = 0 target y (method.md 8.1 steps 1-5)."""
    t, r = pair_times(y.shape[0], gen, cfg, stage)
    view = (-1,) + (1,) * (y.ndim - 1)
    eps = parallel.randn(y.shape, gen)
    x_t = y + t.reshape(view) * eps
    has_r = r > 0
    r_eval = torch.where(has_r, r, t)  # rows with r = 0 never use the network output
    with torch.no_grad():
        x_r = make_x_r(y, x_t, t, r_eval) if make_x_r is not None else y + r_eval.reshape(view) * eps
    with torch.random.fork_rng(devices=[y.device] if y.device.type == "cuda" else []):
        f_t = model(x_t, t)  # on leaving, the RNG is back: the target pass draws the same dropout mask (numerics.md 8)
    with torch.no_grad():
        f_r = torch.nan_to_num(model(x_r, r_eval), nan=0.0)
    target = torch.where(has_r.reshape(view), f_r, y)
    return (distance(f_t, target) * pair_weight(t, r, cfg["weighting"])).mean()


def ect_loss(model: Denoiser, y: Tensor, gen: torch.Generator, cfg: dict, stage: int, distance: Distance) -> Tensor:
    """ECT: x_r = y + r eps with the same noise as x_t."""
    return consistency_pair_loss(model, y, gen, cfg, stage, distance, None)


@dataclass(frozen=True)
class ECT:
    """ECT on an image batch, its stage s from the step (``iterations_per_tick``, ``double_ticks``)."""

    cfg: dict
    distance: Distance

    def stage(self, step: int) -> int:
        return ect_stage(step, self.cfg["iterations_per_tick"], self.cfg["double_ticks"])

    def __call__(self, model: Denoiser, batch: ImageBatch, gen: torch.Generator, step: int) -> Tensor:
        return ect_loss(conditioned(model, batch.labels), batch.images, gen, self.cfg, self.stage(step), self.distance)


def build(cfg: dict, context: Context) -> ECT:
    """From the ``posttrain.ect`` section."""
    return ECT(cfg, make_distance(cfg["loss"], pseudo_huber_c_value=cfg["pseudo_huber_c"]))
