"""EDM preconditioning, the boundary variant, and the EDM <-> flow-matching bridge."""

import pytest
import torch

from cmt.nets import PRESETS, build_network
from cmt.numerics import oracle
from cmt.numerics.precond import (
    Denoiser,
    boundary_scalings,
    edm_loss_weight,
    edm_scalings,
    edm_to_fm,
    fm_to_edm,
    fm_velocity,
)

SIGMAS = torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 5.0, 80.0], dtype=torch.float64)


def test_edm_scalings_satisfy_edm_design_identities():
    sd = 0.5
    c = edm_scalings(SIGMAS, sd)
    torch.testing.assert_close(c.c_in**2 * (SIGMAS**2 + sd**2), torch.ones_like(SIGMAS))  # unit input variance
    torch.testing.assert_close(edm_loss_weight(SIGMAS, sd) * c.c_out**2, torch.ones_like(SIGMAS))  # lambda = 1/c_out^2
    # unit target variance: Var(y - c_skip (y + sigma n)) / c_out^2 = 1 for Var(y) = sd^2
    target_var = ((1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * SIGMAS**2) / c.c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c.c_noise, SIGMAS.log() / 4)


def test_optimal_denoiser_weighted_loss_is_one_per_element():
    """y ~ N(mu, sd^2): lambda(sigma) E||D* - y||^2 / d = 1 at every sigma (numerics.md 2.2)."""
    mu, sd, n, d = 0.3, 0.5, 400_000, 1
    gen = torch.Generator().manual_seed(1)
    for sigma in SIGMAS:
        y = mu + sd * torch.randn(n, d, generator=gen, dtype=torch.float64)
        x = y + sigma * torch.randn(n, d, generator=gen, dtype=torch.float64)
        denoised = oracle.denoiser(x, sigma.expand(n), mu, sd)
        loss = edm_loss_weight(sigma, sd) * (denoised - y).square().sum(1).mean() / d
        assert float(loss) == pytest.approx(1.0, abs=0.01), f"sigma={float(sigma)}"


def test_boundary_scalings_give_identity_at_sigma_min():
    c = boundary_scalings(torch.tensor([0.003, 0.5], dtype=torch.float64), sigma_min=0.003)
    assert float(c.c_skip[0]) == 1.0 and float(c.c_out[0]) == 0.0
    assert float(c.c_out[1]) > 0


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    net = build_network(PRESETS["digits-tiny"])
    for p in net.parameters():  # non-trivial output everywhere (EDM zero-inits the last conv)
        p.data.add_(0.05 * torch.randn_like(p))
    return Denoiser(net, sigma_min=0.003).eval()


def test_boundary_mode_returns_input_exactly_at_sigma_min(denoiser):
    x = torch.randn(6, 1, 8, 8)
    denoiser.set_mode("boundary")
    try:
        assert torch.equal(denoiser(x, torch.full((6,), 0.003)), x)
        assert not torch.allclose(denoiser(x, torch.full((6,), 0.5)), x)
        denoiser.set_mode("edm")
        assert not torch.equal(denoiser(x, torch.full((6,), 0.003)), x)
    finally:
        denoiser.set_mode("edm")


def test_mode_is_explicit_not_train_eval(denoiser):
    x, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 0.4)
    edm = denoiser.set_mode("edm")(x, sigma)
    boundary = denoiser.set_mode("boundary")(x, sigma)
    denoiser.train().eval()
    assert denoiser.mode == "boundary" and torch.equal(denoiser(x, sigma), boundary)
    denoiser.set_mode("edm")
    assert not torch.allclose(edm, boundary)
    with pytest.raises(ValueError, match="edm, boundary"):
        denoiser.set_mode("vp")


def test_denoiser_matches_formula(denoiser):
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.01, 0.3, 2.0, 70.0])
    c = edm_scalings(sigma.reshape(-1, 1, 1, 1))
    expected = c.c_skip * x + c.c_out * denoiser.model(c.c_in * x, c.c_noise.reshape(-1))
    torch.testing.assert_close(denoiser(x, sigma), expected)


def test_edm_fm_map_round_trip_and_trajectories():
    mu, s = 0.3, 0.5
    x_a = oracle.marginal_sample((500,), 5.657, mu, s, torch.Generator().manual_seed(2))
    for sigma_b in (2.0, 0.7757, 0.01):
        x_b = oracle.trajectory_point(x_a, 5.657, sigma_b, mu, s)
        z_a, t_a = edm_to_fm(x_a, torch.tensor(5.657, dtype=torch.float64))
        z_b, t_b = edm_to_fm(x_b, torch.tensor(sigma_b, dtype=torch.float64))
        # the EDM trajectory maps onto the exact FM flow of the same data (numerics.md 6.1)
        torch.testing.assert_close(oracle.fm_flow(z_a, t_a, t_b, mu, s), z_b, rtol=1e-12, atol=1e-12)
        x_back, sigma_back = fm_to_edm(z_b, t_b)
        torch.testing.assert_close(x_back, x_b, rtol=1e-12, atol=1e-12)
        assert float(sigma_back) == pytest.approx(sigma_b, rel=1e-12)


def test_fm_velocity_of_edm_denoiser_is_exact_fm_velocity():
    mu, s = 0.3, 0.5
    z = torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    v = fm_velocity(lambda x, sigma: oracle.denoiser(x, sigma, mu, s), z, t.reshape(-1, 1))
    torch.testing.assert_close(v, oracle.fm_velocity(z, t, mu, s), rtol=1e-10, atol=1e-10)
