"""MeanFlow targets against trajectories (cmt/evaluation/meanflow_targets.py), on the Gaussian oracle where every
quantity is exact (numerics.md 6)."""

import math

import pytest
import torch

from cmt.evaluation.meanflow_targets import target_errors
from cmt.numerics import oracle
from cmt.numerics.solvers import sigma_grid

MU, S = 0.3, 0.5


class ExactMeanVelocity(torch.nn.Module):
    """A two-time 'denoiser' whose converted mean velocity (cmt.numerics.precond.mean_velocity) is the oracle's u, plus
    ``wiggle`` * sin(freq * t) (a small error in value whose time derivative is freq times larger)."""

    def __init__(self, wiggle: float = 0.0, freq: float = 0.0):
        super().__init__()
        self.wiggle, self.freq = wiggle, freq

    def forward(self, x, sigma, h):
        t = (sigma / (1 + sigma)).reshape(-1, *([1] * (x.ndim - 1)))
        z, r = x * (1 - t), t - h.reshape(t.shape)
        u = oracle.fm_mean_velocity(z, r.flatten(), t.flatten(), MU, S) + self.wiggle * torch.sin(self.freq * t)
        return z - t * u


def _trajectories(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    sigmas = sigma_grid("logsnr", 16, sigma_min=0.002, sigma_max=80.0).double()
    gen = torch.Generator().manual_seed(0)
    x_T = MU + math.sqrt(S**2 + 80.0**2) * torch.randn((n, 1, 4, 4), generator=gen, dtype=torch.float64)
    return torch.stack([oracle.trajectory_point(x_T, sigmas[0], s, MU, S) for s in sigmas], 1), sigmas


def teacher(x, sigma):
    return oracle.denoiser(x, sigma, MU, S)


def test_the_exact_flow_map_gives_exact_targets():
    states, sigmas = _trajectories()
    table = target_errors(ExactMeanVelocity(), teacher, states, sigmas)
    assert len(table) == 2 * 8 and set(table["end"]) == {"last", "two on"}
    assert table["student"].max() < 1e-20 and table["target"].max() < 1e-16


def test_a_student_right_in_value_but_wrong_in_time_derivative_gets_worse_targets_on_long_jumps():
    """u* + 0.01 sin(40 t): the value is off by 1e-2 at most, d/dt by 0.4, which the target multiplies by t - r."""
    states, sigmas = _trajectories()
    table = target_errors(ExactMeanVelocity(0.01, 40.0), teacher, states, sigmas).set_index(["end", "k"])
    long_jump, short = table.loc[("last", 4)], table.loc[("two on", 4)]
    assert long_jump["target"] > 20 * long_jump["student"]  # t - r = 0.85: the derivative's error dominates
    assert short["target"] < long_jump["target"] / 20  # t - r = 0.25 and a smaller error to multiply
    assert table["student"].max() < 1e-3
    with pytest.raises(KeyError):
        table.loc[("last", 15)]  # start states: every other one, never the end itself
