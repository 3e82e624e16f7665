"""Pieces shared by every trainer: EMA, learning-rate schedules, device choice, the guarded step loop."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - beta)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def ema_beta_halflife(batch_size: int, images_seen: int, halflife_images: float, rampup_ratio: float = 0.05) -> float:
    """EDM's EMA decay per step: beta = 0.5^(batch / half-life), half-life ramped up to ratio * images seen."""
    halflife = min(halflife_images, images_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps`` steps, then constant (EDM's schedule)."""
    return base_lr * min(1.0, (step + 1) / max(warmup_steps, 1))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class NonFiniteLoss(RuntimeError):
    """Training produced NaN or inf; the message names the step."""


@dataclass
class LoopStats:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0


def run_steps(step_fn: Callable[[int], Tensor], iterations: int, batch_size: int, desc: str,
              start: int = 0, on_step: Callable[[int, float], None] | None = None) -> LoopStats:
    """Call ``step_fn(step)`` for steps ``start..iterations-1`` with a progress bar (loss, images/s).

    ``step_fn`` performs one optimiser step and returns the detached loss; a NaN/inf loss stops the
    loop with ``NonFiniteLoss`` naming the step, before ``on_step`` could record anything from it.
    """
    stats = LoopStats()
    t0 = time.perf_counter()
    bar = tqdm(range(start, iterations), desc=desc, initial=start, total=iterations, mininterval=1.0, leave=False)
    for step in bar:
        loss = float(step_fn(step))
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"{desc}: loss is {loss} at step {step}; training stopped")
        stats.losses.append(loss)
        stats.images += batch_size
        if on_step is not None:
            on_step(step, loss)
        stats.seconds = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{stats.images / max(stats.seconds, 1e-9):.0f}", refresh=False)
    bar.close()
    return stats
