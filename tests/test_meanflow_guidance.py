"""MeanFlow's classifier-free guidance folded into the target and its label dropout (docs/latent.md 2): the guided
velocity's closed forms, guidance outside its interval is none, dropped rows are r = t rows on the null class."""

import dataclasses

import pytest
import torch

from cmt.config import resolve
from cmt.errors import BadInput
from cmt.nets import PRESETS, add_second_time, build_network
from cmt.numerics.precond import Denoiser, fm_time
from cmt.objectives.meanflow import Guidance, dropped_rows, guided_velocity, meanflow_loss, sample_times

T_RANGE = (fm_time(0.002), fm_time(80.0))
CFG = resolve({"name": "x"}, "x")["posttrain"]["meanflow"]  # the schema's defaults: no guidance, no label dropout
NONE = CFG["guidance"]


def test_the_guided_velocity_in_closed_form():
    gen = torch.Generator().manual_seed(0)
    v, u_null, u_cond = (torch.randn(4, 2, 3, 3, generator=gen) for _ in range(3))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    assert torch.equal(guided_velocity(v, u_null, u_cond, t, Guidance(1.0, 0.0, 0.0, 1.0)), v)  # no guidance
    cfg = guided_velocity(v, u_null, u_cond, t, Guidance(2.0, 0.0, 0.0, 1.0))  # kappa 0: classic CFG of scale omega
    torch.testing.assert_close(cfg, u_null + 2.0 * (v - u_null))
    mixed = guided_velocity(v, u_null, u_cond, t, Guidance(0.2, 0.92, 0.0, 0.75))  # MF-XL/2's setting
    inside = 0.2 * v + (1 - 0.2 - 0.92) * u_null + 0.92 * u_cond
    torch.testing.assert_close(mixed[:3], inside[:3])
    assert torch.equal(mixed[3], v[3])  # t = 0.95 lies outside [0, 0.75]: v unchanged


def _conditional_student() -> Denoiser:
    torch.manual_seed(0)
    parent = build_network(dataclasses.replace(PRESETS["digits-tiny"], label_dim=10))
    with torch.no_grad():
        for p in parent.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Denoiser(add_second_time(parent))


def _loss(student: Denoiser, labels: torch.Tensor | None, guidance: dict, dropout: float = 0.0) -> torch.Tensor:
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = {**CFG, "guidance": guidance, "label_dropout": dropout}
    return meanflow_loss(student, x, torch.Generator().manual_seed(2), cfg, T_RANGE, labels)


def test_guidance_changes_the_target_only_inside_its_interval():
    student, labels = _conditional_student(), torch.eye(10)[torch.arange(16) % 10]
    plain = _loss(student, labels, NONE)
    assert not torch.equal(_loss(student, labels, {**NONE, "omega": 2.0}), plain)
    outside = {"omega": 2.0, "kappa": 0.5, "t_min": 0.99, "t_max": 1.0}  # t never exceeds 80/81 = 0.988
    assert torch.equal(_loss(student, labels, outside), plain)
    with pytest.raises(BadInput, match="guidance/label_dropout: need a class-conditional network"):
        _loss(Denoiser(add_second_time(build_network(PRESETS["digits-tiny"]))), None, {**NONE, "omega": 2.0})


def test_dropped_rows_are_r_equals_t_rows_at_the_asked_rate_and_see_the_null_class():
    r, t = sample_times(40000, -0.4, 1.0, 0.25, T_RANGE, torch.Generator().manual_seed(3))
    drop = dropped_rows(r, t, 0.1, 0.25, torch.Generator().manual_seed(4))
    assert torch.equal(r[drop], t[drop]) and float(drop.float().mean()) == pytest.approx(0.1, abs=0.005)
    with pytest.raises(BadInput, match="label_dropout: 0.8 exceeds the share of r = t rows"):
        dropped_rows(r, t, 0.8, 0.25, torch.Generator())
    seen = []
    student = _conditional_student()
    forward = student.model.forward

    def recording(x, noise_labels, second_time=None, class_labels=None):
        seen.append(class_labels)
        return forward(x, noise_labels, second_time, class_labels)

    student.model.forward = recording
    _loss(student, torch.eye(10)[torch.arange(16) % 10], NONE, dropout=0.5)
    nulls = (seen[-1].sum(1) == 0).sum()
    assert 0 < nulls < 16 and set(seen[-1].sum(1).tolist()) == {0.0, 1.0}  # some rows on the null class
