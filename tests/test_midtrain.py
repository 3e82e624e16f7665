"""The midtrain stage with the online trajectory source: teacher in the loop, counts recorded."""

import json

import yaml
from conftest import ROOT

from cmt.stages import midtrain
from cmt.stages.student import StudentJob


def test_online_midtrain_records_fresh_trajectories(smoke, tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    mid = {
        **cfg["midtrain"],
        "source": "online",
        "iterations": 4,
        "eval_every": 2,
        "eval_samples": 50,
        "checkpoint_every": 0,
    }
    traj = {**cfg["trajectories"], "nfe": 4, "sigma_min": 0.002, "sigma_max": 80.0}
    results = smoke / "results" / "smoke"
    final = midtrain.run(
        mid,
        traj,
        None,
        StudentJob(
            cfg["data"],
            cfg["precond"],
            0,
            results / "teacher",
            results / "featnet" / "featnet.safetensors",
            tmp_path / "out",
            tmp_path / "work",
        ),
    )
    per_step = mid["batch_size"] // 4
    assert final["trajectories_seen"] == final["distinct_trajectories"] == 4 * per_step
    assert final["teacher_nfe"] == 4 * per_step * 4
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["tags"]["source"] == "online" and record["metrics"]["fd_2step"] > 0
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "fd_1step" in h] == [2, 4]
