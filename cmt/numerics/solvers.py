"""Sigma grids and deterministic PF-ODE solvers in the EDM (VE) convention.

Every solver shares one signature, ``solver(denoiser, x, sigmas) -> states``, where
``denoiser(x, sigma)`` maps a batch ``x`` (B, ...) and ``sigma`` (B,) to the denoised estimate
D(x, sigma).  ``sample_trajectory`` dispatches by name and returns every state, stacked.

References: EDM = Karras et al. 2022 (arXiv 2206.00364); DPM-Solver++ = Lu et al. 2022
(arXiv 2211.01095); formulas restated in docs/numerics.md sections 3-5 and 7.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

DenoiserFn = Callable[[Tensor, Tensor], Tensor]  # denoiser(x, sigma) -> D; a precond.Denoiser is one


def karras_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    append_zero: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``steps + 1`` decreasing sigmas from sigma_max to sigma_min on EDM's rho-grid, optionally then 0."""
    _check_grid_args(steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # EDM eq. 5
    return _finish_grid(sigmas, sigma_min, sigma_max, append_zero, dtype)


def logsnr_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    append_zero: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``steps + 1`` sigmas uniform in logSNR (geometric), sigma_max -> sigma_min, optionally then 0."""
    _check_grid_args(steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    sigmas = sigma_max * (sigma_min / sigma_max) ** ramp  # numerics.md 3.2: lambda = -ln sigma uniform
    return _finish_grid(sigmas, sigma_min, sigma_max, append_zero, dtype)


GRIDS = {"karras": karras_sigmas, "logsnr": logsnr_sigmas}


def sigma_grid(kind: str, steps: int, **kwargs: float | bool) -> Tensor:
    """Grid by name (``karras`` or ``logsnr``); keyword arguments (``sigma_min`` and ``sigma_max``, the config's
    ``precond`` range, among them) go to the grid function."""
    if kind not in GRIDS:
        raise ValueError(f"unknown sigma grid {kind!r}; valid grids: {', '.join(sorted(GRIDS))}")
    return GRIDS[kind](steps, **kwargs)


def _check_grid_args(steps: int, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise ValueError(f"a sigma grid needs at least 1 step, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _finish_grid(sigmas: Tensor, sigma_min: float, sigma_max: float, append_zero: bool, dtype: torch.dtype) -> Tensor:
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact end points, no rounding drift
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype)


def _call(denoiser: DenoiserFn, x: Tensor, sigma: Tensor) -> Tensor:
    return denoiser(x, sigma.expand(x.shape[0]))


def euler(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor) -> list[Tensor]:
    """EDM Euler: one denoiser call per step; a step to sigma = 0 returns D exactly."""
    states = [x]
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        denoised = _call(denoiser, x, s)
        x = denoised if t == 0 else x + (t - s) * (x - denoised) / s  # dx/dsigma = (x - D)/sigma
        states.append(x)
    return states


def heun(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor) -> list[Tensor]:
    """EDM Algorithm 2 (deterministic): Euler predictor, trapezoidal corrector unless stepping to 0."""
    states = [x]
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        denoised = _call(denoiser, x, s)
        if t == 0:
            x = denoised  # final step to 0 is Euler, which lands exactly on D
        else:
            d = (x - denoised) / s
            x_pred = x + (t - s) * d
            d_pred = (x_pred - _call(denoiser, x_pred, t)) / t
            x = x + (t - s) * (d + d_pred) / 2  # EDM Alg. 2 line 8
        states.append(x)
    return states


def multistep_orders(steps: int, max_order: int) -> list[int]:
    """Orders of DPM-Solver++ multistep steps: warm-up 1, 2, ... and lower-order final steps (sony/cmt)."""
    return [min(max_order, k + 1, steps - k) for k in range(steps)]


def dpmpp_update(
    x: Tensor,
    sigma_s: Tensor,
    sigma_t: Tensor,
    denoised: list[Tensor],
    lambdas: list[Tensor],
    order: int,
    d2_scale: float = 2.0,
) -> Tensor:
    """One DPM-Solver++ multistep update from sigma_s to sigma_t (numerics.md 5.2, VE form).

    ``denoised`` and ``lambdas`` hold the history, newest last (D at lambda = -ln sigma).
    ``d2_scale`` = 2 gives the true third-order update, 1 the library ("legacy") coefficient.
    """
    if sigma_t == 0:
        return denoised[-1]
    h = torch.log(sigma_s / sigma_t)
    phi1 = torch.expm1(-h)  # numerics.md 5.1
    x_t = (sigma_t / sigma_s) * x - phi1 * denoised[-1]
    if order == 1:
        return x_t  # DPM-Solver++1 = DDIM = Euler
    h0 = lambdas[-1] - lambdas[-2]
    d1_0 = (denoised[-1] - denoised[-2]) / (h0 / h)
    if order == 2:
        return x_t - 0.5 * phi1 * d1_0  # 2M midpoint ("dpmsolver") form
    h1 = lambdas[-2] - lambdas[-3]
    r0, r1 = h0 / h, h1 / h
    d1_1 = (denoised[-2] - denoised[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # ~ h * D'
    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 * D'' / 2
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    return x_t + phi2 * d1 - d2_scale * phi3 * d2  # numerics.md 7.2: exact weight needs d2_scale = 2


def _dpmpp_multistep(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, max_order: int, d2_scale: float) -> list[Tensor]:
    steps = len(sigmas) - 1
    states, denoised, lambdas = [x], [], []
    for k, order in enumerate(multistep_orders(steps, max_order)):
        s, t = sigmas[k], sigmas[k + 1]
        denoised.append(_call(denoiser, x, s))
        lambdas.append(-torch.log(s))
        x = dpmpp_update(x, s, t, denoised[-3:], lambdas[-3:], order, d2_scale)
        states.append(x)
        del denoised[:-2], lambdas[:-2]
    return states


def dpmpp2m(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor) -> list[Tensor]:
    """DPM-Solver++(2M), midpoint form, first and last step first order."""
    return _dpmpp_multistep(denoiser, x, sigmas, max_order=2, d2_scale=2.0)


def dpmpp3m(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor) -> list[Tensor]:
    """DPM-Solver++(3M) of true third order (D2 weight doubled, numerics.md 7.2); orders 1, 2, 3, ..., 2, 1."""
    return _dpmpp_multistep(denoiser, x, sigmas, max_order=3, d2_scale=2.0)


def dpmpp3m_legacy(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor) -> list[Tensor]:
    """DPM-Solver++(3M) with the reference libraries' D2 weight, as in the authors' code; only 2nd order."""
    return _dpmpp_multistep(denoiser, x, sigmas, max_order=3, d2_scale=1.0)


SOLVERS: dict[str, Callable[[DenoiserFn, Tensor, Tensor], list[Tensor]]] = {
    "euler": euler,
    "heun": heun,
    "dpmpp2m": dpmpp2m,
    "dpmpp3m": dpmpp3m,
    "dpmpp3m_legacy": dpmpp3m_legacy,
}


def denoiser_calls(solver: str, sigmas: Tensor) -> int:
    """Number of denoiser evaluations ``sample_trajectory`` makes on this grid."""
    _check_solver(solver)
    steps = len(sigmas) - 1
    if solver == "heun":
        return 2 * steps - int(sigmas[-1] == 0)  # no corrector on the step to 0
    return steps


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")


@torch.no_grad()
def sample_trajectory(denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, solver: str = "dpmpp3m") -> Tensor:
    """Integrate the PF-ODE from ``x`` at sigmas[0] along ``sigmas``; returns (len(sigmas), B, ...).

    ``sigmas`` is a 1-D decreasing tensor (it may end with 0); result[0] is ``x`` and every state
    keeps ``x``'s dtype and device.
    """
    _check_solver(solver)
    sigmas = torch.as_tensor(sigmas).to(dtype=x.dtype, device=x.device)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.all(sigmas[1:] < sigmas[:-1])) or bool(sigmas[:-1].min() <= 0):
        raise ValueError("sigmas must be strictly decreasing and positive (only the last value may be 0)")
    return torch.stack(SOLVERS[solver](denoiser, x, sigmas))
