"""MeanFlow numerics: JVP target vs finite differences, the MeanFlow identity on the Gaussian oracle,
the converted student's start, and exact flow-map sampling."""

import pytest
import torch

from cmt.nets import PRESETS, add_second_time, build_network
from cmt.numerics import oracle
from cmt.numerics.precond import Denoiser, fm_time, fm_velocity, mean_velocity
from cmt.objectives.meanflow import meanflow_target, sample_times
from cmt.sampling.samplers import sample_meanflow

MU, S = 0.3, 0.5
T_MIN, T_MAX = fm_time(0.002), fm_time(80.0)  # the EDM sigma range in flow-matching time


class ExactMeanFlowDenoiser:
    """An 'EDM denoiser with second time input' whose converted field is the exact Gaussian mean velocity."""

    def __call__(self, x, sigma, h):
        t = sigma / (1 + sigma)
        z = x / (1 + sigma).reshape(-1, 1)
        return z - t.reshape(-1, 1) * oracle.fm_mean_velocity(z, t - h, t, MU, S)


def perturbed_student(dtype=torch.float64):
    torch.manual_seed(0)
    parent = build_network(PRESETS["digits-tiny"])
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(0.05 * torch.randn_like(p))
    child = add_second_time(parent)
    with torch.no_grad():
        child.map_time2.weight.normal_(0, 0.3)  # a trained-looking second branch, so h matters
    return Denoiser(child).to(dtype).eval(), Denoiser(parent).to(dtype).eval()


def test_jvp_target_matches_central_finite_difference():
    model, _ = perturbed_student()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn((3, 1, 8, 8), generator=gen, dtype=torch.float64)
    v = torch.randn((3, 1, 8, 8), generator=gen, dtype=torch.float64)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    r = torch.tensor([0.1, 0.6, 0.2], dtype=torch.float64)
    u, target = meanflow_target(model, z, r, t, v)
    eps = 1e-6
    du_dt = (mean_velocity(model, z + eps * v, r, t + eps) - mean_velocity(model, z - eps * v, r, t - eps)) / (2 * eps)
    expected = v - (t - r).reshape(-1, 1, 1, 1) * du_dt
    torch.testing.assert_close(target, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(u, mean_velocity(model, z, r, t))
    assert not target.requires_grad
    assert float((du_dt[0] - du_dt[0].mean()).abs().max().detach()) > 1e-3  # the test is not vacuous


def test_meanflow_identity_on_the_gaussian_oracle():
    """With the exact mean velocity and the marginal velocity as tangent, the target equals u itself."""
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(256, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(256, generator=gen, dtype=torch.float64)
    z = torch.randn((256, 3), generator=gen, dtype=torch.float64)
    u, target = meanflow_target(ExactMeanFlowDenoiser(), z, r, t, oracle.fm_velocity(z, t, MU, S))
    torch.testing.assert_close(target, u, rtol=1e-9, atol=1e-9)
    # and u(z, r, t) -> v(z, t) as r -> t
    u_near = mean_velocity(ExactMeanFlowDenoiser(), z, t - 1e-7, t)
    torch.testing.assert_close(u_near, oracle.fm_velocity(z, t, MU, S), rtol=1e-5, atol=1e-5)


def test_converted_student_starts_as_the_parent_velocity_for_every_r():
    parent = perturbed_student()[1]
    child = Denoiser(add_second_time(parent.model)).double().eval()
    z = torch.randn((4, 1, 8, 8), dtype=torch.float64)
    t = torch.tensor([0.2, 0.4, 0.7, 0.95], dtype=torch.float64)
    v = fm_velocity(parent, z, t.reshape(-1, 1, 1, 1))
    for r in (torch.zeros(4, dtype=torch.float64), t / 2, t):
        torch.testing.assert_close(mean_velocity(child, z, r, t), v)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampling_with_the_exact_field_is_the_exact_flow_map(steps):
    noise = torch.randn((512, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample_meanflow(ExactMeanFlowDenoiser(), noise, steps, T_MAX)
    t_max, zero = torch.tensor(T_MAX, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    exact = oracle.fm_flow(T_MAX * noise, t_max, zero, MU, S)
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)


def test_time_sampling_semantics():
    r, t = sample_times(20000, -0.4, 1.0, 0.25, (T_MIN, T_MAX), torch.Generator().manual_seed(4))
    assert bool((t >= r).all()) and float(t.min()) >= T_MIN and float(t.max()) <= T_MAX
    assert float((r != t).float().mean()) == pytest.approx(0.25, abs=0.02)


def test_py_meanflows_sampler_draws_t_and_r_from_their_own_laws():
    """t ~ logitN(-0.6, 1.6), r ~ logitN(-4.0, 1.6), r = min(r, t), 75 % r != t (docs/latent.md 2.3): the medians are
    the sigmoids of the means (a logit-normal's median), r below t everywhere."""
    gen = torch.Generator().manual_seed(5)
    r, t = sample_times(40000, -0.6, 1.6, 0.75, (T_MIN, T_MAX), gen, r_law=(-4.0, 1.6))
    assert bool((t >= r).all())
    assert 0.75 * 0.9 < float((r != t).float().mean()) < 0.75  # min(r, t) = t where r's own draw exceeds t
    assert float(t.median()) == pytest.approx(float(torch.sigmoid(torch.tensor(-0.6))), abs=0.01)
    below = r[r != t]  # min(r, t) moves r only where its own draw exceeds t, which is rare at these laws
    assert float(below.median()) == pytest.approx(float(torch.sigmoid(torch.tensor(-4.0))), abs=0.003)
    sorted_pair = sample_times(40000, -0.6, 1.6, 0.75, (T_MIN, T_MAX), torch.Generator().manual_seed(5))
    assert float(sorted_pair[1].median()) > 0.5  # the official sampler's t is the larger of two draws: another law
