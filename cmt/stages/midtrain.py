"""The CMT mid-training stage (method.md 3.4, 4, 7): a student started from the teacher's EMA weights, trained by the
objective of ``midtrain.form`` (``cmt.objectives.cmt``, ``cmt.objectives.cmt_flowmap``) on a stored trajectory set
or on trajectories solved in the loop."""

from __future__ import annotations

from pathlib import Path

import torch

from cmt.checkpoints import load_denoiser
from cmt.config import config_hash
from cmt.data import Images, train_holdout
from cmt.objectives import registry
from cmt.solvers import denoiser_calls
from cmt.stages.student import (
    StudentJob,
    finish,
    fit_student,
    init_student,
    job_label,
    objective_context,
    student_loss,
)
from cmt.train import AMP_DTYPES, LoopConfig, resolve_device, set_precision
from cmt.trajectories import (
    OnlineTrajectories,
    StoredTrajectories,
    TrajectoryBatches,
    TrajectorySource,
    precision_error,
    trajectory_spec,
)


def trajectory_source(
    source: str,
    traj_cfg: dict,
    traj_dir: str | Path | None,
    teacher_dir: str | Path,
    train: Images,
    device: torch.device,
    limit: int | None = None,
    teacher_precision: str = "fp32",
) -> TrajectorySource:
    """A stored set (``traj_dir``, its first ``limit`` trajectories) or, with ``source: online``, the
    teacher (its network in ``teacher_precision``) and solver in the loop."""
    if source == "stored":
        if traj_dir is None:
            raise ValueError("midtrain.source 'stored' needs a trajectory folder")
        return StoredTrajectories(traj_dir, device, limit=limit)
    teacher, _ = load_denoiser(teacher_dir)
    set_precision(teacher, teacher_precision)
    spec = trajectory_spec(traj_cfg, train.shape)
    return OnlineTrajectories(teacher.to(device).eval(), spec, train)


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
    entry = registry.method("midtrain", cfg["form"])
    train, holdout = train_holdout(job.data)
    source = trajectory_source(
        cfg["source"],
        traj_cfg,
        traj_dir,
        job.teacher_dir,
        train,
        device,
        cfg["max_trajectories"],
        job.compute.teacher_precision,
    )
    precision_facts = online_precision_error(source, job.compute.teacher_precision)
    student, teacher_meta = init_student(
        "diffusion",
        job.teacher_dir,
        job.teacher_dir,
        cfg["dropout"],
        job.precond["boundary_sigma_min"],
        job.seed,
        entry,
    )
    student = student.to(device)
    steps = len(source.sigmas) - 1
    objective = registry.build(entry, cfg, objective_context(job, train.shape, device))
    per_step = objective.trajectories_per_step(cfg["batch_size"], steps)
    loop = LoopConfig.from_dict(cfg)
    result, last_fd = fit_student(
        student,
        student_loss(objective, TrajectoryBatches(source, objective, per_step, device)),
        loop,
        job,
        holdout,
        cfg["eval_t_mid"],
        cfg["eval_samples"],
        desc=f"midtrain[{cfg['form']}:{cfg['loss']}]",
        kind=entry.kind,
        fingerprint=config_hash({"midtrain": cfg, "trajectories": traj_cfg, "teacher": teacher_meta}),
        extra=source,  # which trajectories were seen survives a resume
    )
    trajectories_seen = loop.iterations * per_step
    label = job_label(job, "cmt")
    tags = {
        "label": label,
        "form": cfg["form"],
        "points": cfg["points"],
        "loss": cfg["loss"],
        "source": cfg["source"],
        "solver": source_solver(source),
        "nfe": str(steps),
    }
    solved = len(source) if isinstance(source, StoredTrajectories) else trajectories_seen  # each solved once
    final = {
        "images": loop.iterations * loop.batch_size,
        "trajectories_seen": trajectories_seen,
        "distinct_trajectories": source.distinct_seen,
        "teacher_nfe": registry.teacher_nfe(entry, solved, denoiser_calls(source_solver(source), source.sigmas)),
        **precision_facts,
        **last_fd,
    }
    tags.update(teacher=teacher_meta.get("config_hash", "?"), **(job.tags or {}))
    meta = {"stage": "midtrain", "init": teacher_meta.get("stage", "teacher"), "config": cfg, **final}
    finish(
        job.out_dir,
        job.work_dir,
        result,
        meta,
        job.precond["sigma_max"],
        cfg["eval_t_mid"],
        f"midtrain/{label}",
        params={**{k: v for k, v in cfg.items() if not isinstance(v, dict)}, "seed": job.seed, **job.compute.params()},
        tags=tags,
        final=final,
        kind=entry.kind,
    )
    return final


def source_solver(source: TrajectorySource) -> str:
    return source.index["solver"] if isinstance(source, StoredTrajectories) else source.spec.solver
