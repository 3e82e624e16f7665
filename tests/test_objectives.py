"""CMT and ECT objectives against exact answers on the Gaussian oracle, plus ECT's schedules."""

import types

import pytest
import torch
from torch import nn

from cmt.config import resolve
from cmt.data.datasets import load_digits
from cmt.nets import build_network, network_config
from cmt.numerics import oracle
from cmt.numerics.precond import Denoiser
from cmt.objectives import registry
from cmt.objectives.cmt import CMTConsistency, cmt_loss, state_points
from cmt.objectives.cmt_flowmap import CMTFlowMap, cmt_flowmap_loss, state_pairs
from cmt.objectives.distances import l2_norm, pseudo_huber, pseudo_huber_c, squared_l2
from cmt.objectives.ecd import teacher_step
from cmt.objectives.ect import ect_loss, ect_r, ect_stage
from cmt.stages.posttrain.runner import method_compute
from cmt.training.loop import Compute, prepare_model, set_precision

MU, S = 0.3, 0.5
SIGMAS = torch.tensor([80.0, 5.657, 0.7757, 0.0549, 0.002], dtype=torch.float64)


def exact_trajectories(n=64):
    x_T = oracle.marginal_sample((n, 3), 80.0, MU, S, torch.Generator().manual_seed(0))
    return torch.stack([oracle.trajectory_point(x_T, 80.0, s, MU, S) for s in SIGMAS], dim=1)


def test_cmt_loss_is_zero_for_the_exact_flow_map_and_pairs_states_with_their_endpoint():
    traj = exact_trajectories()

    def flow_to_end(x, sigma):  # the exact map of each state to sigma_min = the trajectory endpoint
        return oracle.trajectory_point(x, sigma.reshape(-1, 1), SIGMAS[-1], MU, S)

    assert float(cmt_loss(flow_to_end, traj, SIGMAS, squared_l2)) < 1e-20
    identity = float(cmt_loss(lambda x, s: x, traj, SIGMAS, squared_l2))
    expected = (traj[:, :-1] - traj[:, -1:]).square().sum(-1).mean()
    assert identity == pytest.approx(float(expected), rel=1e-12)


class ClassOracle(nn.Module):
    """The exact flow map of a class-conditional Gaussian data distribution (class k has mean k / 10), with the
    interface of a class-conditional denoiser (one-hot ``class_labels``)."""

    model = types.SimpleNamespace(cfg=types.SimpleNamespace(label_dim=10))

    def forward(self, x, sigma, second_time=None, class_labels=None):
        mu = (class_labels.double() @ torch.arange(10, dtype=torch.float64) / 10).reshape(-1, 1)
        return oracle.trajectory_point(x, sigma.reshape(-1, 1), SIGMAS[-1], mu, S)


def test_conditional_cmt_loss_routes_each_state_to_its_trajectorys_class():
    labels = torch.arange(64) % 10
    mu = (labels.double() / 10).reshape(-1, 1)
    x_T = oracle.marginal_sample((64, 3), 80.0, 0.0, S, torch.Generator().manual_seed(0)) + mu
    traj = torch.stack([oracle.trajectory_point(x_T, 80.0, s, mu, S) for s in SIGMAS], dim=1)
    one = state_points("one", 64, len(SIGMAS) - 1, torch.Generator().manual_seed(1))
    for points in (None, one):
        assert float(cmt_loss(ClassOracle(), traj, SIGMAS, squared_l2, points, labels)) < 1e-20
        assert float(cmt_loss(ClassOracle(), traj, SIGMAS, squared_l2, points, labels.roll(1))) > 1e-4


def test_distances():
    a, b = torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5)
    assert squared_l2(a, b).tolist() == [16.0, 16.0] and l2_norm(a, b).tolist() == [4.0, 4.0]
    assert pseudo_huber_c(64) == pytest.approx(0.00432)
    assert pseudo_huber_c(3072) == pytest.approx(0.0299, abs=1e-4)
    torch.testing.assert_close(pseudo_huber(a, b, c=3.0), torch.full((2,), 2.0))


@pytest.mark.parametrize(
    "q,stage,t,ratio",
    [
        (2, 0, 0.5, 0.0),
        (2, 0, 2.0, 0.02),
        (2, 0, 5.0, 0.47),
        (2, 0, 80.0, 0.50),
        (2, 1, 1.0, 0.21),
        (2, 2, 0.01, 0.38),
        (4096, 0, 0.01, 0.99878),
        (4096, 0, 80.0, 0.99976),
        (512, 0, 1.0, 0.99384),
    ],
)
def test_ect_mapping_matches_reference_table(q, stage, t, ratio):
    r = ect_r(torch.tensor([t], dtype=torch.float64), q, stage)
    assert float(r / t) == pytest.approx(ratio, abs=6e-3 if ratio < 0.9 else 5e-5)


def test_ect_stage_counts_ticks():
    assert [ect_stage(s, 100, 250) for s in (0, 99, 100, 25_099, 25_100, 50_099, 50_100)] == [0, 0, 0, 0, 1, 1, 2]
    assert ect_stage(10**7, 100, 0) == 0


class DropoutNet(nn.Module):
    """A denoiser-shaped net with heavy dropout: shared masks matter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, sigma):
        return nn.functional.dropout(self.lin(x) * (1 + sigma.reshape(-1, 1)), p=0.5, training=self.training)


CFG = resolve({"name": "test"}, "schema defaults")["posttrain"]["ect"]  # p_mean -1.1, p_std 2, k 8, b 1, 1/(t - r)


def assert_replay(net, monkeypatch):
    """x_r is close to x_t (q = 1e4): the same mask keeps f_t - f_r small; other masks make it O(1) / (t - r)."""
    y = torch.randn(256, 3)

    def loss():
        return float(ect_loss(net, y, torch.Generator().manual_seed(1), {**CFG, "q": 1e4}, 0, l2_norm).detach())

    shared = loss()
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)  # break the replay
    assert shared < 50 < 1000 * shared < loss()


def test_ect_target_replays_the_dropout_mask(monkeypatch):
    torch.manual_seed(0)
    assert_replay(DropoutNet().train(), monkeypatch)


def test_ect_rows_with_r_zero_target_the_clean_image():
    """t = 0.5 for every row and q = 2, stage 0: r = 0 everywhere, so the target is y itself."""
    y = torch.randn(64, 3)
    constant = torch.full((64, 3), 0.25)
    cfg = {**CFG, "q": 2.0, "p_mean": float(torch.log(torch.tensor(0.5))), "p_std": 0.0}
    loss = ect_loss(lambda x, s: constant, y, torch.Generator().manual_seed(2), cfg, 0, l2_norm)
    assert float(loss) == pytest.approx(float(l2_norm(constant, y).mean() / 0.5), rel=1e-5)


class ExactMeanVelocityDenoiser:
    """EDM-style denoiser with second time input whose converted field is the exact Gaussian mean velocity."""

    def __call__(self, x, sigma, h):
        t = sigma / (1 + sigma)
        z = x / (1 + sigma).reshape(-1, 1)
        return z - t.reshape(-1, 1) * oracle.fm_mean_velocity(z, t - h, t, MU, S)


def test_flowmap_cmt_targets_are_flow_matching_mean_velocities():
    """On exact trajectories the exact FM mean velocity has zero CMT-MF loss; sigma-time targets would not."""
    traj = exact_trajectories()
    pairs = state_pairs(len(SIGMAS) - 1).expand(len(traj), -1, -1)
    assert float(cmt_flowmap_loss(ExactMeanVelocityDenoiser(), traj, SIGMAS, pairs)) < 1e-20
    # the sigma-time finite difference is a different field (numerics.md 6.1): u_FM = (1 + sigma_b) u_sigma - x_b
    a, b = 1, 2
    u_sigma = (traj[:, a] - traj[:, b]) / (SIGMAS[a] - SIGMAS[b])
    z_a, t_a = traj[:, a] / (1 + SIGMAS[a]), SIGMAS[a] / (1 + SIGMAS[a])
    u_fm = oracle.fm_mean_velocity(z_a, SIGMAS[b] / (1 + SIGMAS[b]), t_a, MU, S)
    torch.testing.assert_close(u_fm, (1 + SIGMAS[b]) * u_sigma - traj[:, b])
    assert float((u_fm - u_sigma).abs().max()) > 0.1


def test_flowmap_cmt_with_endpoint_pairs_reduces_to_weighted_consistency_form():
    """With t_b = t(sigma_min), u = (z_a - (1 - t_b) f) / (t_a - t_b) turns CMT-MF into CMT-CM with weights
    (1 - t_b)^2 / (t_a - t_b)^2 on the l2 consistency error (method.md 4, reduction)."""
    traj = exact_trajectories() + 0.01 * torch.randn(64, len(SIGMAS), 3, dtype=torch.float64)
    t_all = SIGMAS / (1 + SIGMAS)
    f = lambda x, sigma: 0.9 * x + 0.1 * torch.tanh(x) * sigma.reshape(-1, 1) / 80  # noqa: E731 - any consistency fn

    class FromConsistency:
        def __call__(self, x, sigma, h):
            t = sigma / (1 + sigma)
            z = x / (1 + sigma).reshape(-1, 1)
            r = t - h
            u = (z - (1 - r).reshape(-1, 1) * f(x, sigma)) / (t - r).reshape(-1, 1)
            return z - t.reshape(-1, 1) * u

    end = len(SIGMAS) - 1
    pairs = torch.stack([torch.arange(end), torch.full((end,), end)], dim=1).expand(len(traj), -1, -1)
    flowmap = cmt_flowmap_loss(FromConsistency(), traj, SIGMAS, pairs)
    weights = (1 - t_all[end]) ** 2 / (t_all[:end] - t_all[end]) ** 2
    per_state = f(traj[:, :end].reshape(-1, 3), SIGMAS[:end].repeat(len(traj))) - traj[:, end].repeat_interleave(end, 0)
    expected = (per_state.square().sum(1) * weights.repeat(len(traj))).mean()
    assert float(flowmap) == pytest.approx(float(expected), rel=1e-9)


def test_state_variants_and_pairs():
    gen = torch.Generator().manual_seed(0)
    assert state_points("all", 4, 16, gen) is None
    assert state_points("noise", 4, 16, gen).tolist() == [[0]] * 4
    one = state_points("one", 1000, 16, gen)
    assert one.shape == (1000, 1) and set(one.flatten().tolist()) == set(range(16))
    pairs = state_pairs(16)
    assert pairs.shape == (136, 2) and bool((pairs[:, 0] < pairs[:, 1]).all()) and int(pairs.max()) == 16
    assert CMTConsistency("all", squared_l2).trajectories_per_step(128, 16) == 8
    assert CMTConsistency("one", squared_l2).trajectories_per_step(128, 16) == 128
    with pytest.raises(ValueError, match="multiple of the 16"):
        CMTFlowMap().trajectories_per_step(100, 16)


@pytest.mark.parametrize("kind,order", [("euler", 2), ("heun", 3)])
def test_ecd_teacher_step_local_error_order(kind, order):
    """One teacher step from t to r on the exact Gaussian denoiser: local error O(dt^2) Euler, O(dt^3) Heun."""
    x_t = oracle.marginal_sample((4000, 1), 2.0, MU, S, torch.Generator().manual_seed(5))
    t = torch.full((4000,), 2.0, dtype=torch.float64)
    errors = []
    for dt in (0.2, 0.1, 0.05):
        r = t - dt
        step = teacher_step(lambda x, s: oracle.denoiser(x, s, MU, S), x_t, t, r, kind)
        errors.append(float((step - oracle.trajectory_point(x_t, 2.0, 2.0 - dt, MU, S)).abs().max()))
    assert errors[0] / errors[1] == pytest.approx(2**order, rel=0.15)
    assert errors[1] / errors[2] == pytest.approx(2**order, rel=0.15)


def test_ect_target_replays_the_dropout_mask_of_a_compiled_network(monkeypatch):
    """The replay (torch.random.fork_rng) holds for a torch.compile'd network: ``prepare_model`` makes inductor draw
    dropout from torch's RNG."""
    torch.manual_seed(0)
    net = DropoutNet().train()
    prepare_model(net, Compute.from_dict({"compile": True}))
    assert_replay(net, monkeypatch)


def test_bf16_keeps_cmts_loss_within_1e_3_of_fp32_and_would_swamp_ects_finite_difference():
    """bf16 autocast of the network only: CMT's regression onto the endpoint barely moves (measured 8e-5), while
    ECT's target f(x_t) - f(x_r), O(1/q) of f, drowns in bf16's rounding as q grows (the recipe's q = 4096: the
    loss several times fp32's), which is why post-training keeps fp32 (runner.method_compute)."""
    torch.manual_seed(0)
    net = Denoiser(build_network(network_config({"preset": "digits-tiny"}))).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and p.abs().max() < 1e-4:  # EDM's zero / 1e-5 initialised layers: a non-trivial network
                p.normal_(0, p[0].numel() ** -0.5)
    y, trajectories = load_digits().images[:128], torch.randn(8, 17, 1, 8, 8)
    sigmas = torch.linspace(80, 0.002, 17, dtype=torch.float64)

    def losses():
        ect = {
            q: float(ect_loss(net, y, torch.Generator().manual_seed(1), {**CFG, "q": q}, 0, l2_norm)) for q in (2, 4096)
        }
        return float(cmt_loss(net, trajectories, sigmas, squared_l2)), ect

    cmt32, ect32 = losses()
    set_precision(net, "bf16")
    assert net(y, torch.ones(128)).dtype == torch.float32  # preconditioning and output stay fp32
    cmt16, ect16 = losses()
    assert 0 < abs(cmt16 - cmt32) < 1e-3 * cmt32
    assert abs(ect16[2] - ect32[2]) < 1e-2 * ect32[2] and abs(ect16[4096] - ect32[4096]) > ect32[4096]
    assert (
        method_compute(registry.method("posttrain", "ect"), Compute.from_dict({"precision": "bf16"})).precision
        == "fp32"
    )
