"""The midtrain stage: teacher NFE counted from real teacher calls (online and stored), and training helps."""

import json

import pytest
from helpers.models import count_teacher_loads
from helpers.project import smoke_config, smoke_job

from cmt.sampling.trajectory_sets import StoredTrajectories
from cmt.stages import midtrain
from cmt.stages import trajectories as trajectories_stage

CFG = smoke_config()
TINY = {"iterations": 4, "eval_every": 2, "eval_samples": 50, "checkpoint_every": 0}


def traj_cfg(**changes):
    return {**CFG["trajectories"], **changes, "sigma_min": 0.002, "sigma_max": 80.0}


def test_online_midtrain_reports_the_teacher_calls_it_made(smoke, tmp_path, monkeypatch):
    teachers = count_teacher_loads(monkeypatch, midtrain)
    final = midtrain.run(
        {**CFG["midtrain"], **TINY, "source": "online"}, traj_cfg(nfe=4), None, smoke_job(smoke, tmp_path / "out", CFG)
    )
    per_step = CFG["midtrain"]["batch_size"] // 4
    assert final["trajectories_seen"] == final["distinct_trajectories"] == 4 * per_step
    assert len(teachers) == 1 and teachers[0].rows > 0
    assert final["teacher_nfe"] == teachers[0].rows
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["tags"]["source"] == "online" and record["metrics"]["teacher_nfe"] == teachers[0].rows
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "fd_1step" in h] == [0, 2, 4]  # from the initial weights on


@pytest.mark.parametrize("solver", ["heun", "dpmpp3m_legacy"])
def test_stored_midtrain_reports_the_calls_that_made_its_set(smoke, tmp_path, monkeypatch, solver):
    teachers = count_teacher_loads(monkeypatch, trajectories_stage)
    cfg = traj_cfg(solver=solver, nfe=4, count=40, shard_size=16)
    trajectories_stage.run(cfg, CFG["data"], 0, smoke / "results" / "smoke" / "teacher", tmp_path / "traj", "cpu")
    assert len(StoredTrajectories(tmp_path / "traj", "cpu")) == 40
    final = midtrain.run({**CFG["midtrain"], **TINY}, cfg, tmp_path / "traj", smoke_job(smoke, tmp_path / "out", CFG))
    assert final["teacher_nfe"] == teachers[0].rows  # the set, generated once


def test_the_smoke_cmt_run_beats_its_initial_weights(smoke):
    """CMT starts from the teacher (a poor 1-step model) and must end better on both samplers."""
    history = [
        json.loads(line)
        for line in next((smoke / "results" / "smoke" / "mid").glob("base/*/s0/metrics.jsonl")).read_text().splitlines()
    ]
    evals = [h for h in history if "fd_1step" in h]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == CFG["midtrain"]["iterations"]
    for metric in ("fd_1step", "fd_2step"):
        assert evals[-1][metric] < 0.95 * evals[0][metric]
