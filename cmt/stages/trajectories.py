"""The trajectories stage: a stored set of teacher trajectories for one (teacher, solver, NFE): PF-ODE solutions, or
a flow-map teacher's k-step paths (solver ``flowmap``)."""

from __future__ import annotations

from pathlib import Path

from cmt.data.datasets import train_holdout
from cmt.formats.fetch import file_sha256
from cmt.sampling.trajectory_sets import SetSize, check_solver, trajectory_spec, write_set
from cmt.teachers import load_teacher
from cmt.training.loop import resolve_device


def run(
    cfg: dict, data_cfg: dict, seed: int, teacher_dir: str | Path, out_dir: str | Path, device_name: str = "cpu"
) -> dict:
    """Write ``cfg['count']`` trajectories in shards; the teacher's weights sha256 is recorded."""
    device = resolve_device(device_name)
    teacher, kind = load_teacher(teacher_dir)
    check_solver(cfg["solver"], kind.model_kind)
    train, _ = train_holdout(data_cfg)
    spec = trajectory_spec(cfg, train.shape, teacher)
    provenance = {"teacher_sha256": file_sha256(Path(teacher_dir) / "model.safetensors")}
    return write_set(
        out_dir,
        teacher.to(device),
        spec,
        SetSize(cfg["count"], cfg["shard_size"], seed + cfg["seed_offset"]),
        train,
        provenance,
    )
