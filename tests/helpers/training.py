"""A small regression problem for the training loop, a loss that dies at a given step, and plain loop settings."""

import torch
from torch import nn

from cmt.training.loop import LoopConfig


def regression_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1))
    w = torch.randn(4, 1)

    def loss_fn(net, step, gen):
        x = torch.randn(32, 4, generator=gen)
        return (net(x) - x @ w).square().mean()

    return model, loss_fn


def killed_at(kill_step, loss_fn):
    """The loss function of a run that is killed when it reaches ``kill_step``."""

    def loss(net, step, gen):
        if step == kill_step:
            raise KeyboardInterrupt
        return loss_fn(net, step, gen)

    return loss


def loop(**settings) -> LoopConfig:
    """A plain Adam loop at constant LR; ``settings`` on top."""
    plain = {"optimizer": "adam", "betas": (0.9, 0.999), "lr_schedule": "constant", "warmup_iterations": 0}
    return LoopConfig(**{**plain, "checkpoint_every": 0, "eval_every": 0, **settings})


CFG = loop(iterations=30, batch_size=32, lr=1e-2, ema_beta=0.9, checkpoint_every=10)
