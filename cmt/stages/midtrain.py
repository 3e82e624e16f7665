"""The CMT mid-training stage (method.md 3.4, 4, 7): a student started from the teacher's EMA weights, trained by the
objective of ``midtrain.form`` (``cmt.objectives.cmt``, ``cmt.objectives.cmt_flowmap``) on a stored trajectory set
or on trajectories solved in the loop."""

from __future__ import annotations

from pathlib import Path

import torch

from cmt.config import config_hash
from cmt.data.datasets import train_holdout
from cmt.errors import BadInput
from cmt.formats.checkpoints import read_meta
from cmt.objectives import registry
from cmt.sampling.trajectory_sets import (
    OnlineTrajectories,
    StoredTrajectories,
    TrajectoryBatches,
    TrajectorySource,
    check_solver,
    precision_error,
    teacher_calls,
    trajectory_spec,
)
from cmt.stages.student import (
    InitWeights,
    Record,
    StudentJob,
    StudentRun,
    init_student,
    job_label,
    objective_context,
    student_loss,
    train_student,
)
from cmt.teachers import load_teacher, teacher_kind
from cmt.training.loop import AMP_DTYPES, LoopConfig, resolve_device, set_precision


def trajectory_source(
    cfg: dict, traj_cfg: dict, traj_dir: str | Path | None, job: StudentJob, device: torch.device
) -> TrajectorySource:
    """A stored set (``traj_dir``, its first ``midtrain.max_trajectories``) or, with ``midtrain.source: online``, the
    job's teacher (its network in ``compute.teacher_precision``) and solver in the loop. Online trajectories from the
    prior read no training data, as the authors' ImageNet-512 CMT (x_T = σ_max·ε, uniform labels; latent.md 8.3);
    those from data plus noise read the training split."""
    if cfg["source"] == "stored":
        if traj_dir is None:
            raise BadInput("midtrain.source 'stored' needs a trajectory folder")
        return StoredTrajectories(traj_dir, device, limit=cfg["max_trajectories"])
    teacher, kind = load_teacher(job.teacher_dir)
    check_solver(traj_cfg["solver"], kind.model_kind)
    set_precision(teacher, job.compute.teacher_precision)
    spec = trajectory_spec(traj_cfg, teacher.model.cfg.image_shape, teacher)
    data = train_holdout(job.data)[0] if spec.start == "data_plus_noise" else None
    return OnlineTrajectories(teacher.to(device).eval(), spec, data)


def online_precision_error(source: TrajectorySource, precision: str) -> dict:
    """For an online teacher in reduced ``precision``: the relative error of its trajectories against fp32 (a
    metric)."""
    if not isinstance(source, OnlineTrajectories) or AMP_DTYPES[precision] is None:
        return {}
    error = precision_error(source.teacher, source.spec, source.data, AMP_DTYPES[precision])
    print(f"online teacher in {precision}: trajectory error {error:.2e} relative to fp32")
    return {"teacher_precision_error": error}


def run(cfg: dict, traj_cfg: dict, traj_dir: str | Path | None, job: StudentJob) -> dict:
    """CMT mid-training from the teacher in ``job``: a stored set in ``traj_dir`` or online trajectories."""
    device = resolve_device(job.device)
    method = registry.method("midtrain", cfg["form"])
    source = trajectory_source(cfg, traj_cfg, traj_dir, job, device)
    precision_facts = online_precision_error(source, job.compute.teacher_precision)
    weights = InitWeights(cfg["init"], job.teacher_dir, cfg["init_file"])
    student, init_meta = init_student(weights, job, cfg["dropout"], method)
    teacher_meta = read_meta(job.teacher_dir)
    objective = registry.build(method, cfg, objective_context(job, student, student.model.cfg.image_shape, device))
    per_step = objective.trajectories_per_step(cfg["batch_size"], len(source.grid) - 1)
    loop = LoopConfig.from_dict(cfg)

    def costs() -> dict:
        seen = loop.iterations * per_step
        solved = len(source) if isinstance(source, StoredTrajectories) else seen  # each trajectory is solved once
        calls = teacher_calls(source_solver(source), source.grid) * teacher_kind(teacher_meta).passes
        return {
            "images": loop.iterations * loop.batch_size,
            "trajectories_seen": seen,
            "distinct_trajectories": source.distinct_seen,
            "teacher_nfe": registry.teacher_nfe(method, solved, calls),
            **precision_facts,
        }

    plan = StudentRun(
        method,
        f"midtrain[{cfg['form']}:{cfg['loss']}]",
        student.to(device),
        student_loss(objective, TrajectoryBatches(source, objective, per_step, device)),
        loop,
        cfg["eval_t_mid"],
        cfg["eval_samples"],
        config_hash({"midtrain": cfg, "trajectories": traj_cfg, "teacher": teacher_meta}),
        costs,
        extra=source,  # which trajectories were seen survives a resume
    )
    return train_student(job, plan, record(cfg, source, teacher_meta, init_meta, job))


def record(cfg: dict, source: TrajectorySource, teacher_meta: dict, init_meta: dict, job: StudentJob) -> Record:
    """What a CMT run records: its axes and settings as tags, its config as params and meta."""
    label = job_label(job, "cmt")
    tags = {
        "label": label,
        "form": cfg["form"],
        "points": cfg["points"],
        "loss": cfg["loss"],
        "source": cfg["source"],
        "solver": source_solver(source),
        "nfe": str(len(source.grid) - 1),
        "teacher": teacher_meta.get("config_hash", "?"),
        **(job.tags or {}),
    }
    meta = {"stage": "midtrain", "init": cfg["init"], "init_stage": init_meta.get("stage"), "config": cfg}
    params = {**{k: v for k, v in cfg.items() if not isinstance(v, dict)}, "seed": job.seed, **job.compute.params()}
    return Record(f"midtrain/{label}", meta, params, tags)


def source_solver(source: TrajectorySource) -> str:
    return source.index["solver"] if isinstance(source, StoredTrajectories) else source.spec.solver
