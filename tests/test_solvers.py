"""Solvers against the closed-form Gaussian PF-ODE oracle (numerics.md 6, 7)."""

import numpy as np
import pytest
import torch
from helpers.project import EDM_RANGE

from cmt.numerics import oracle
from cmt.numerics.solvers import (
    SOLVERS,
    denoiser_calls,
    dpmpp_update,
    karras_sigmas,
    logsnr_sigmas,
    multistep_orders,
    sample_trajectory,
    sigma_grid,
)

MU, S = 0.3, 0.5


def gaussian_denoiser(x, sigma):
    return oracle.denoiser(x, sigma, MU, S)


class CountingDenoiser:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return gaussian_denoiser(x, sigma)


@pytest.fixture(scope="module")
def x_T():
    """Exact samples of the marginal at sigma_max (numerics.md 7.3, point 2)."""
    return oracle.marginal_sample((2000,), 80.0, MU, S, torch.Generator().manual_seed(0))


def endpoint_rms(x_T, sigmas, solver):
    out = sample_trajectory(gaussian_denoiser, x_T, sigmas, solver)[-1]
    exact = oracle.trajectory_point(x_T, sigmas[0], sigmas[-1], MU, S)
    return float((out - exact).square().mean().sqrt())


def test_logsnr_grid_matches_reference_values():
    sigmas = logsnr_sigmas(16, *EDM_RANGE)
    ref = [
        80,
        41.25,
        21.27,
        10.97,
        5.657,
        2.917,
        1.504,
        0.7757,
        0.4000,
        0.2063,
        0.1064,
        0.0549,
        0.0283,
        0.0146,
        0.0075,
        0.0039,
        0.002,
    ]
    np.testing.assert_allclose(sigmas.numpy(), ref, rtol=6e-3)  # reference rounded to 4 digits
    h = torch.log(sigmas[:-1] / sigmas[1:])
    np.testing.assert_allclose(h.numpy(), 0.66229, rtol=1e-5)


def test_karras_grid_matches_edm_values():
    sigmas = karras_sigmas(17, *EDM_RANGE, append_zero=True)
    ref = [
        80,
        57.59,
        40.79,
        28.37,
        19.35,
        12.91,
        8.40,
        5.32,
        3.26,
        1.92,
        1.09,
        0.585,
        0.296,
        0.140,
        0.060,
        0.0229,
        0.0075,
        0.002,
        0,
    ]
    assert len(sigmas) == 19 and sigmas[-1] == 0 and sigmas[0] == 80 and sigmas[-2] == 0.002
    np.testing.assert_allclose(sigmas.numpy(), ref, rtol=6e-3, atol=1e-9)


def test_grid_by_name_and_bad_arguments():
    assert torch.equal(
        sigma_grid("logsnr", 4, sigma_min=EDM_RANGE[0], sigma_max=EDM_RANGE[1]), logsnr_sigmas(4, *EDM_RANGE)
    )
    with pytest.raises(ValueError, match="karras, logsnr"):
        sigma_grid("cosine", 4, sigma_min=EDM_RANGE[0], sigma_max=EDM_RANGE[1])
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(4, sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_shape_dtype_first_state(solver, dtype):
    x = torch.randn(5, 1, 3, 3, dtype=dtype) * 80
    sigmas = logsnr_sigmas(6, *EDM_RANGE, dtype=torch.float64)
    traj = sample_trajectory(gaussian_denoiser, x, sigmas, solver)
    assert traj.shape == (7, 5, 1, 3, 3)
    assert traj.dtype == dtype
    assert torch.equal(traj[0], x)


@pytest.mark.parametrize(
    "solver,steps,append_zero,expected",
    [
        ("euler", 16, False, 16),
        ("dpmpp2m", 16, False, 16),
        ("dpmpp3m", 16, False, 16),
        ("dpmpp3m_legacy", 16, False, 16),
        ("heun", 16, False, 32),
        ("heun", 17, True, 35),
        ("dpmpp3m_legacy", 16, True, 17),
        ("euler", 5, True, 6),
    ],
)
def test_denoiser_call_counts(solver, steps, append_zero, expected):
    sigmas = logsnr_sigmas(steps, *EDM_RANGE, append_zero=append_zero)
    counter = CountingDenoiser()
    traj = sample_trajectory(counter, torch.randn(4, 2) * 80, sigmas, solver)
    assert counter.calls == expected == denoiser_calls(solver, sigmas)
    assert len(traj) == len(sigmas)


def test_unknown_solver_lists_valid_names():
    with pytest.raises(ValueError) as err:
        sample_trajectory(gaussian_denoiser, torch.zeros(2, 2), logsnr_sigmas(2, *EDM_RANGE), "dpmpp4m")
    for name in SOLVERS:
        assert name in str(err.value)


def test_sigmas_must_decrease():
    with pytest.raises(ValueError, match="decreasing"):
        sample_trajectory(gaussian_denoiser, torch.zeros(2, 2), torch.tensor([1.0, 2.0]), "euler")


def test_first_order_dpmpp_step_is_euler_step(x_T):
    s, t = torch.tensor(3.0, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    d = gaussian_denoiser(x_T, s.expand(len(x_T)))
    dpm = dpmpp_update(x_T, s, t, [d], [-torch.log(s)], order=1)
    euler = x_T + (t - s) * (x_T - d) / s
    torch.testing.assert_close(dpm, euler, rtol=1e-14, atol=1e-12)
    # and the first step of every multistep solver is that Euler step
    sigmas = logsnr_sigmas(8, *EDM_RANGE)
    first = sample_trajectory(gaussian_denoiser, x_T, sigmas, "euler")[1]
    for name in ("dpmpp2m", "dpmpp3m", "dpmpp3m_legacy"):
        torch.testing.assert_close(
            sample_trajectory(gaussian_denoiser, x_T, sigmas, name)[1], first, rtol=1e-13, atol=1e-12
        )


def test_step_to_zero_returns_denoised_value(x_T):
    sigmas = torch.tensor([80.0, 0.0], dtype=torch.float64)
    d = gaussian_denoiser(x_T, torch.full((len(x_T),), 80.0, dtype=torch.float64))
    for name in SOLVERS:
        assert torch.equal(sample_trajectory(gaussian_denoiser, x_T, sigmas, name)[-1], d)


def test_cmt_order_schedule():
    assert multistep_orders(16, 3) == [1, 2] + [3] * 12 + [2, 1]
    assert multistep_orders(3, 3) == [1, 2, 1]
    assert multistep_orders(4, 2) == [1, 2, 2, 1]


def test_cmt_16_step_trajectory_against_exact_at_every_state(x_T):
    """CMT's teacher schedule (logSNR 80 -> 0.002, 16 steps, library 3M): endpoint RMS ~ 8.6e-3 (numerics 7.1)."""
    sigmas = logsnr_sigmas(16, *EDM_RANGE)
    exact = torch.stack([oracle.trajectory_point(x_T, 80.0, s, MU, S) for s in sigmas])
    for solver, endpoint in [("dpmpp3m_legacy", 8.6e-3), ("dpmpp2m", 1.14e-2)]:
        rms = (sample_trajectory(gaussian_denoiser, x_T, sigmas, solver) - exact).square().mean(1).sqrt()
        assert rms[0] == 0
        assert float(rms.max()) < 0.025, f"{solver}: per-state RMS {rms}"
        assert float(rms[-1]) == pytest.approx(endpoint, rel=0.1)


def test_legacy_3m_matches_independent_constant_step_formula(x_T):
    """Re-derive the authors' update on a constant-h grid (method.md 3.2, r0 = r1 = 1) and compare."""
    sigmas = logsnr_sigmas(16, *EDM_RANGE)
    h = float(torch.log(sigmas[0] / sigmas[1]))
    phi1 = np.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    x, hist, states = x_T, [], [x_T]
    for k, order in enumerate([1, 2] + [3] * 12 + [2, 1]):
        hist.append(gaussian_denoiser(x, sigmas[k].expand(len(x))))
        ratio = sigmas[k + 1] / sigmas[k]
        x_new = ratio * x - phi1 * hist[-1]
        if order == 2:
            x_new = x_new - 0.5 * phi1 * (hist[-1] - hist[-2])
        elif order == 3:
            d1_0, d1_1 = hist[-1] - hist[-2], hist[-2] - hist[-3]
            x_new = x_new + phi2 * (d1_0 + 0.5 * (d1_0 - d1_1)) - phi3 * (d1_0 - d1_1) / 2
        x = x_new
        states.append(x)
    torch.testing.assert_close(
        sample_trajectory(gaussian_denoiser, x_T, sigmas, "dpmpp3m_legacy"), torch.stack(states), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("grid", ["logsnr", "karras"])
@pytest.mark.parametrize(
    "solver,lo,hi",
    [
        ("euler", 0.7, 1.3),
        ("heun", 1.7, 2.3),
        ("dpmpp2m", 1.7, 2.3),
        ("dpmpp3m", 2.7, 6.0),
        ("dpmpp3m_legacy", 1.55, 2.3),
    ],
)
def test_convergence_order(x_T, grid, solver, lo, hi):
    """Fit log RMS error at sigma_min vs log(number of grid points) (numerics.md 7.3)."""
    points = np.array([65, 129, 257])
    errors = [
        endpoint_rms(x_T, sigma_grid(grid, n - 1, sigma_min=EDM_RANGE[0], sigma_max=EDM_RANGE[1]), solver)
        for n in points
    ]
    order = -np.polyfit(np.log(points), np.log(errors), 1)[0]
    assert lo <= order <= hi, f"{solver} on {grid}: order {order:.2f}, errors {errors}"


def test_corrected_3m_is_more_accurate_than_legacy(x_T):
    """The doubled D2 weight (numerics.md 7.2) is what makes the 3M update third order."""
    sigmas = logsnr_sigmas(128, *EDM_RANGE)
    assert endpoint_rms(x_T, sigmas, "dpmpp3m") < 0.05 * endpoint_rms(x_T, sigmas, "dpmpp3m_legacy")
