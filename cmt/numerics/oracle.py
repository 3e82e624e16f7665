"""Closed-form Gaussian PF-ODE oracle (numerics.md 6): data y ~ N(mu, diag(s^2)).

Exact denoiser, trajectories, consistency function and flow-matching quantities, used to test the
solvers, preconditioning and flow-map objectives against exact answers.  Works elementwise, so
``mu`` and ``s`` may be scalars or tensors broadcastable to the state.
"""

from __future__ import annotations

import torch
from torch import Tensor


def denoiser(x: Tensor, sigma: Tensor, mu: Tensor | float, s: Tensor | float) -> Tensor:
    """Optimal denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    sigma = _batch(sigma, x)
    return mu + s**2 / (s**2 + sigma**2) * (x - mu)


def trajectory_point(
    x_a: Tensor, sigma_a: Tensor | float, sigma_b: Tensor | float, mu: Tensor | float, s: Tensor | float
) -> Tensor:
    """Exact PF-ODE solution x(sigma_b) from x(sigma_a): mu + (x_a - mu) sqrt((s^2 + b^2) / (s^2 + a^2))."""
    sigma_a, sigma_b = torch.as_tensor(sigma_a, dtype=x_a.dtype), torch.as_tensor(sigma_b, dtype=x_a.dtype)
    return mu + (x_a - mu) * ((s**2 + sigma_b**2) / (s**2 + sigma_a**2)).sqrt()


def consistency_function(x: Tensor, sigma: Tensor, mu: Tensor | float, s: Tensor | float) -> Tensor:
    """Exact consistency function f*(x, sigma) = mu + (x - mu) s / sqrt(s^2 + sigma^2) (to sigma = 0)."""
    sigma = _batch(sigma, x)
    return mu + (x - mu) * s / (s**2 + sigma**2).sqrt()


def marginal_sample(
    shape: tuple[int, ...],
    sigma: float,
    mu: Tensor | float,
    s: Tensor | float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Exact samples of the marginal x_sigma ~ N(mu, (s^2 + sigma^2) I)."""
    s = torch.as_tensor(s, dtype=dtype)
    return mu + (s**2 + sigma**2).sqrt() * torch.randn(shape, generator=generator, dtype=dtype)


def fm_velocity(z: Tensor, t: Tensor, mu: Tensor | float, s: Tensor | float) -> Tensor:
    """FM velocity v(z, t) = -mu + (t - (1 - t) s^2) / S_t^2 (z - m_t), m_t = (1 - t) mu, S_t^2 = (1-t)^2 s^2 + t^2."""
    t = _batch(t, z)
    var = (1 - t) ** 2 * s**2 + t**2
    return -mu + (t - (1 - t) * s**2) / var * (z - (1 - t) * mu)


def fm_flow(z_t: Tensor, t: Tensor, r: Tensor, mu: Tensor | float, s: Tensor | float) -> Tensor:
    """Exact FM flow map z_r = m_r + (S_r / S_t) (z_t - m_t)."""
    t, r = _batch(t, z_t), _batch(r, z_t)
    std_t = ((1 - t) ** 2 * s**2 + t**2).sqrt()
    std_r = ((1 - r) ** 2 * s**2 + r**2).sqrt()
    return (1 - r) * mu + std_r / std_t * (z_t - (1 - t) * mu)


def fm_mean_velocity(z_t: Tensor, r: Tensor, t: Tensor, mu: Tensor | float, s: Tensor | float) -> Tensor:
    """Exact mean velocity u(z, r, t) = (z_t - z_r) / (t - r) (MeanFlow eq. 3)."""
    return (z_t - fm_flow(z_t, t, r, mu, s)) / (_batch(t, z_t) - _batch(r, z_t))


def _batch(v: Tensor | float, like: Tensor) -> Tensor:
    """Per-sample scalar (B,) or scalar -> broadcastable against ``like`` (B, ...)."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim == 1 else v
