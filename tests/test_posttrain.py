"""Post-training runs end to end on tiny budgets: ECD and MeanFlow from each kind of weights, and
CMT in flow-map form handing a two-time student to MeanFlow."""

import json

import pytest
import torch
import yaml
from conftest import ROOT

from cmt.checkpoints import load_denoiser
from cmt.stages import midtrain
from cmt.stages.posttrain import runner
from cmt.stages.student import StudentJob

CFG = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
TINY = {"iterations": 4, "eval_every": 2, "eval_samples": 50, "checkpoint_every": 0}


def run_post(smoke, tmp_path, method, init, init_dir):
    results = smoke / "results" / "smoke"
    cfg = {**CFG["posttrain"][method], **TINY}
    job = StudentJob(
        CFG["data"],
        CFG["precond"],
        0,
        results / "teacher",
        results / "featnet" / "featnet.safetensors",
        tmp_path / "out",
        tmp_path / "work",
    )
    final = runner.run(method, cfg, init, init_dir, job)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    return final, record


@pytest.mark.parametrize("init", ["random", "diffusion", "cmt"])
def test_ecd_from_each_init(smoke, tmp_path, init):
    results = smoke / "results" / "smoke"
    init_dir = {"random": None, "diffusion": results / "teacher", "cmt": results / "mid" / "cmt"}[init]
    final, record = run_post(smoke, tmp_path, "ecd", init, init_dir)
    assert record["tags"]["label"] == f"ecd-{init}" and final["teacher_nfe"] == 4 * 128 * 2  # Heun: 2 calls
    assert final["fd_2step"] > 0


def test_meanflow_from_diffusion_writes_a_two_time_model(smoke, tmp_path):
    final, record = run_post(smoke, tmp_path, "meanflow", "diffusion", smoke / "results" / "smoke" / "teacher")
    model, meta = load_denoiser(tmp_path / "out")
    assert meta["model_kind"] == "meanflow" and model.model.cfg.second_time
    assert record["tags"]["method"] == "meanflow" and final["fd_1step"] > 0
    assert (tmp_path / "out" / "grid-2step.png").exists()


def test_flowmap_cmt_then_meanflow(smoke, tmp_path):
    results = smoke / "results" / "smoke"
    mid_cfg = {**CFG["midtrain"], **TINY, "form": "flowmap", "loss": "l2", "label": "cmt-flowmap"}
    traj_cfg = {**CFG["trajectories"], "sigma_min": 0.002, "sigma_max": 80.0}
    job = StudentJob(
        CFG["data"],
        CFG["precond"],
        0,
        results / "teacher",
        results / "featnet" / "featnet.safetensors",
        tmp_path / "mid",
        tmp_path / "mid-work",
    )
    final = midtrain.run(mid_cfg, traj_cfg, results / "traj" / "dpmpp3m_legacy-nfe16", job)
    model, meta = load_denoiser(tmp_path / "mid")
    assert meta["model_kind"] == "meanflow" and model.model.cfg.second_time and final["fd_2step"] > 0
    assert torch.isfinite(torch.tensor(final["fd_1step"]))
    post, record = run_post(smoke, tmp_path / "post", "meanflow", "cmt", tmp_path / "mid")
    assert record["tags"]["init"] == "cmt" and post["fd_2step"] > 0
