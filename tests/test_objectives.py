"""CMT and ECT objectives against exact answers on the Gaussian oracle, plus ECT's schedules."""

import pytest
import torch
from torch import nn

from cmt import oracle
from cmt.losses import l2_norm, pseudo_huber, pseudo_huber_c, squared_l2
from cmt.stages.midtrain import cmt_loss
from cmt.stages.posttrain.ect import ect_loss, ect_r, ect_stage

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


CFG = {"p_mean": -1.1, "p_std": 2.0, "k": 8.0, "b": 1.0}


def test_ect_target_replays_the_dropout_mask(monkeypatch):
    """x_r is close to x_t (q = 1e4): the same mask keeps f_t - f_r small; other masks make it O(1) / (t - r)."""
    torch.manual_seed(0)
    net = DropoutNet().train()
    y = torch.randn(256, 3)

    def loss():
        return float(ect_loss(net, y, torch.Generator().manual_seed(1), {**CFG, "q": 1e4}, 0, l2_norm).detach())

    shared = loss()
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)  # break the replay
    assert shared < 50 < 1000 * shared < loss()


def test_ect_rows_with_r_zero_target_the_clean_image():
    """t = 0.5 for every row and q = 2, stage 0: r = 0 everywhere, so the target is y itself."""
    y = torch.randn(64, 3)
    constant = torch.full((64, 3), 0.25)
    cfg = {**CFG, "q": 2.0, "p_mean": float(torch.log(torch.tensor(0.5))), "p_std": 0.0}
    loss = ect_loss(lambda x, s: constant, y, torch.Generator().manual_seed(2), cfg, 0, l2_norm)
    assert float(loss) == pytest.approx(float(l2_norm(constant, y).mean() / 0.5), rel=1e-5)
