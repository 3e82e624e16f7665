"""The gradient-bias experiment (the paper's mechanism 2) where the truth is known: Gaussian data, whose consistency
function f* is closed-form (numerics.md 6), so the gradient ECT follows can be compared with the gradient of the
objective it stands in for (docs/findings.md).

For a model f_theta (our U-Net with the boundary preconditioning) and ECT's draws of (t, r) and noise:
- ECT's minibatch loss: w(t, r) d(f(y + t eps, t), sg f(y + r eps, r));
- the oracle objective at the same draws: w(t, r) d(f(y + t eps, t), f*(y + t eps, t)).
Each expected gradient is the mean over ``batches`` minibatch gradients; the experiment reports their cosine, the
ratio of their norms, and each mean's relative standard error (the norm of the per-coordinate standard errors over
the norm of the mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cmt.numerics import oracle
from cmt.numerics.precond import Denoiser
from cmt.objectives.distances import Distance
from cmt.objectives.ect import consistency_pair_loss, pair_times, pair_weight
from cmt.training import parallel


@dataclass(frozen=True)
class Gaussian:
    """Data y ~ N(mu, s^2 I) of one image shape."""

    mu: float
    s: float
    shape: tuple[int, ...]

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        return self.mu + self.s * torch.randn((n, *self.shape), generator=gen)


def oracle_loss(model: Denoiser, x_t: Tensor, t: Tensor, weight: Tensor, distance: Distance, data: Gaussian) -> Tensor:
    """w d(f(x_t, t), f*(x_t, t)), batch mean: the objective ECT's target stands in for (numerics.md 6)."""
    target = oracle.consistency_function(x_t, t, data.mu, data.s)
    return (distance(model(x_t, t), target) * weight).mean()


def oracle_pair_loss(
    model: Denoiser, y: Tensor, gen: torch.Generator, cfg: dict, stage: int, distance: Distance, data: Gaussian
) -> Tensor:
    """``oracle_loss`` at ECT's draws of (t, r) and noise (the same generator calls as ``ect_loss``)."""
    t, r = pair_times(y.shape[0], gen, cfg, stage)
    eps = parallel.randn(y.shape, gen)
    x_t = y + t.reshape(-1, *([1] * (y.ndim - 1))) * eps
    return oracle_loss(model, x_t, t, pair_weight(t, r, cfg["weighting"]), distance, data)


def ect_minibatch_loss(
    model: Denoiser, y: Tensor, gen: torch.Generator, cfg: dict, stage: int, distance: Distance, data: Gaussian
) -> Tensor:
    """ECT's own loss (cmt.objectives.ect), the signature of ``oracle_pair_loss``."""
    return consistency_pair_loss(model, y, gen, cfg, stage, distance, None)


LossFn = Callable[[Denoiser, Tensor, torch.Generator, dict, int, Distance, Gaussian], Tensor]


@dataclass(frozen=True)
class GradientEstimate:
    """The mean of ``batches`` minibatch gradients (flattened) and its relative standard error."""

    mean: Tensor
    relative_se: float
    batches: int


def expected_gradient(
    model: Denoiser, loss: LossFn, setting: tuple, gen: torch.Generator, batches: int
) -> GradientEstimate:
    """Mean minibatch gradient of ``loss`` over ``batches`` minibatches; ``setting``: (cfg, stage, distance, data,
    batch size)."""
    cfg, stage, distance, data, batch_size = setting
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for _ in range(batches):
        value = loss(model, data.sample(batch_size, gen), gen, cfg, stage, distance, data)
        found = torch.autograd.grad(value, params, allow_unused=True)  # a parameter the loss skips has gradient 0
        grads.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(found, params)])
        )
    stacked = torch.stack(grads).double()
    mean = stacked.mean(0)
    se = (stacked.var(0, unbiased=True).sum() / batches).sqrt()
    return GradientEstimate(mean, float(se / mean.norm()), batches)


def compare(a: GradientEstimate, b: GradientEstimate) -> dict[str, float]:
    """Cosine and norm ratio |a| / |b| of two expected gradients, the oracle's norm |b| and the absolute bias
    |a - b| (the quantity the paper bounds, docs/method.md 1), with both relative standard errors."""
    cosine = float(torch.nn.functional.cosine_similarity(a.mean, b.mean, dim=0))
    return {
        "cosine": cosine,
        "norm_ratio": float(a.mean.norm() / b.mean.norm()),
        "oracle_norm": float(b.mean.norm()),
        "bias": float((a.mean - b.mean).norm()),
        "se_ect": a.relative_se,
        "se_oracle": b.relative_se,
    }
