"""Post-training end to end on tiny budgets: ECD's teacher NFE from real teacher calls, MeanFlow's two-time
student, CMT's flow-map form handing a two-time student to MeanFlow; and what the smoke run's students achieved."""

import copy
import json
import math

import pytest
import torch
from helpers.models import conditional_denoiser, count_teacher_loads
from helpers.project import smoke_config, smoke_job

from cmt.config import resolve
from cmt.data.datasets import ImageDataset
from cmt.formats.checkpoints import load_denoiser
from cmt.nets import add_second_time
from cmt.numerics.precond import Denoiser
from cmt.objectives import registry
from cmt.objectives.base import Context
from cmt.stages import midtrain
from cmt.stages.posttrain import runner

CFG = smoke_config()
TINY = {"iterations": 4, "eval_every": 2, "eval_samples": 50, "checkpoint_every": 0}


def scores(smoke, job):
    return json.loads((smoke / "results" / "smoke" / "eval" / job / "scores.json").read_text())


def history(smoke, job):
    lines = (smoke / "results" / "smoke" / job / "metrics.jsonl").read_text().splitlines()
    return [h for h in map(json.loads, lines) if "fd_1step" in h]


def run_post(smoke, tmp_path, method, init, init_dir, **changes):
    cfg = {**CFG["posttrain"][method], **TINY, **changes}
    final = runner.run(method, cfg, init, init_dir, smoke_job(smoke, tmp_path / "out", CFG))
    return final, json.loads((tmp_path / "out" / "run.json").read_text())


@pytest.mark.parametrize(("init", "step"), [("random", "heun"), ("diffusion", "euler"), ("cmt", "heun")])
def test_ecd_reports_the_teacher_calls_it_made(smoke, tmp_path, monkeypatch, init, step):
    results = smoke / "results" / "smoke"
    init_dir = {"random": None, "diffusion": results / "teacher", "cmt": next(results.glob("mid/base/*/s0"))}[init]
    teachers = count_teacher_loads(monkeypatch, runner)
    final, record = run_post(smoke, tmp_path, "ecd", init, init_dir, teacher_step=step)
    assert record["tags"]["init"] == init and len(teachers) == 1 and teachers[0].rows > 0
    assert final["teacher_nfe"] == teachers[0].rows


def test_ect_spends_no_teacher_calls(smoke, tmp_path, monkeypatch):
    teachers = count_teacher_loads(monkeypatch, runner)
    final, _ = run_post(smoke, tmp_path, "ect", "diffusion", smoke / "results" / "smoke" / "teacher")
    assert final["teacher_nfe"] == 0 and sum(t.rows for t in teachers) == 0


def test_meanflow_from_diffusion_writes_a_two_time_model(smoke, tmp_path):
    final, record = run_post(smoke, tmp_path, "meanflow", "diffusion", smoke / "results" / "smoke" / "teacher")
    model, meta = load_denoiser(tmp_path / "out")
    assert meta["model_kind"] == "meanflow" and model.model.cfg.second_time
    assert record["tags"]["method"] == "meanflow" and torch.isfinite(torch.tensor(final["fd_1step"]))


def test_flowmap_cmt_then_meanflow(smoke, tmp_path):
    mid_cfg = {**CFG["midtrain"], **TINY, "form": "flowmap", "loss": "l2"}
    traj = {**CFG["trajectories"], "sigma_min": 0.002, "sigma_max": 80.0}
    results = smoke / "results" / "smoke"
    final = midtrain.run(
        mid_cfg, traj, results / "traj" / "dpmpp3m_legacy-nfe16", smoke_job(smoke, tmp_path / "mid", CFG)
    )
    model, meta = load_denoiser(tmp_path / "mid")
    assert meta["model_kind"] == "meanflow" and model.model.cfg.second_time
    assert torch.isfinite(torch.tensor([final["fd_1step"], final["fd_2step"]])).all()
    post, record = run_post(smoke, tmp_path / "post", "meanflow", "cmt", tmp_path / "mid")
    assert record["tags"]["init"] == "cmt" and torch.isfinite(torch.tensor(post["fd_2step"]))


def test_ect_from_cmt_init_ends_far_below_ect_from_random_init(smoke):
    """The paper's claim on the smoke budget: equal ECT iterations, CMT weights vs random weights."""
    cmt, random = scores(smoke, "post/ect-cmt/base/it40/s0"), scores(smoke, "post/ect-random/none/it40/s0")
    for metric in ("fd_1step", "fd_2step"):
        assert cmt[metric] < 0.6 * random[metric]  # measured: 0.37-0.42 over three smoke runs


def test_every_student_beats_its_initial_weights_and_starts_where_its_init_ended(smoke):
    mid = history(smoke, "mid/base/dpmpp3m_legacy-nfe16/s0")
    for init in ("random/none", "diffusion/none", "cmt/base"):
        evals = history(smoke, f"post/ect-{init}/it40/s0")
        assert evals[0]["step"] == 0
        for metric in ("fd_1step", "fd_2step"):
            assert evals[-1][metric] < 0.95 * evals[0][metric], (init, metric)
    # the CMT init's EMA is the CMT student: same weights, same evaluation noise, same 1-step FD
    assert history(smoke, "post/ect-cmt/base/it40/s0")[0]["fd_1step"] == pytest.approx(mid[-1]["fd_1step"], rel=1e-6)


@pytest.mark.parametrize("method", ["ect", "ecd", "meanflow"])
def test_every_method_gives_a_class_conditional_student_and_teacher_each_images_class(tmp_path, method):
    """A conditional network refuses a call without labels, so each loss running through proves the labels arrive;
    swapping the labels changes the loss (they are the images' own)."""
    teacher = conditional_denoiser()
    entry = registry.method("posttrain", method)
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
    context = Context(0.002, 80.0, (1, 8, 8), torch.device("cpu"), frozen)
    student = add_second_time_if(teacher, method == "meanflow").train()
    cfg = {**resolve({"name": "x"}, "test")["posttrain"][method], "batch_size": 8}
    data = ImageDataset(torch.randn(20, 1, 8, 8), torch.arange(20) % 10, "noise")
    losses = []
    for labels in (data.labels, (data.labels + 3) % 10):
        loss_fn, _ = runner.make_loss(entry, cfg, ImageDataset(data.images, labels, "noise"), 10, context, 0, LOADER)
        losses.append(float(loss_fn(student, 0, torch.Generator().manual_seed(0)).detach()))
    assert all(map(math.isfinite, losses)) and losses[0] != losses[1]
    with pytest.raises(ValueError, match="class-conditional .* no labels"):
        runner.make_loss(entry, cfg, ImageDataset(data.images, None, "bare"), 10, context, 0, LOADER)


LOADER = resolve({"name": "x"}, "test")["data"]["loader"]


def add_second_time_if(denoiser, second_time: bool):
    return Denoiser(add_second_time(denoiser.model), sigma_data=denoiser.sigma_data) if second_time else denoiser
