"""CMT mid-training, consistency form (method.md 3.4, 4, 7).

Every trajectory state before the last is regressed onto the trajectory's endpoint; all time points
are equally represented (no time sampling, no weighting, no stop-gradient).  The student starts
from the teacher's EMA weights and trains with EDM scalings; it is evaluated with the consistency
boundary condition.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from cmt.checkpoints import load_denoiser
from cmt.data import train_holdout
from cmt.losses import Distance, make_distance
from cmt.precond import Denoiser
from cmt.stages.student import finish, fit_student, init_student
from cmt.train import LoopConfig, resolve_device
from cmt.trajectories import OnlineTrajectories, StoredTrajectories, TrajectorySource, trajectory_spec

LOOP_DEFAULTS = {"optimizer": "radam", "lr_schedule": "linear_decay", "ema_beta": 0.999, "betas": [0.9, 0.999]}


def cmt_loss(student: Denoiser, trajectories: Tensor, sigmas: Tensor, distance: Distance) -> Tensor:
    """CMT-CM: mean over trajectories and their S states before the end of d(f(x_i, sigma_i), x_end) (method.md 4)."""
    n, points = trajectories.shape[:2]
    inputs = trajectories[:, :-1].reshape(n * (points - 1), *trajectories.shape[2:])
    sigma = sigmas[:-1].to(inputs).repeat(n)  # row order: trajectory-major, matching the reshape
    targets = trajectories[:, -1:].expand(-1, points - 1, *trajectories.shape[2:]).reshape(inputs.shape)
    return distance(student(inputs, sigma), targets).mean()


def trajectory_source(
    source: str,
    traj_cfg: dict,
    traj_dir: str | Path | None,
    teacher_dir: str | Path,
    train_images: Tensor,
    device: torch.device,
) -> TrajectorySource:
    """A stored set (``traj_dir``) or, with ``source: online``, the teacher and solver in the loop."""
    if source == "stored":
        if traj_dir is None:
            raise ValueError("midtrain.source 'stored' needs a trajectory folder")
        return StoredTrajectories(traj_dir, device)
    teacher, _ = load_denoiser(teacher_dir)
    spec = trajectory_spec(traj_cfg, tuple(train_images.shape[1:]))
    return OnlineTrajectories(teacher.to(device).eval(), spec, train_images.to(device))


def run(
    cfg: dict,
    traj_cfg: dict,
    data_cfg: dict,
    precond: dict,
    seed: int,
    teacher_dir: str | Path,
    traj_dir: str | Path | None,
    featnet: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    device_name: str = "cpu",
) -> dict:
    device = resolve_device(device_name)
    train, holdout = train_holdout(data_cfg, seed)
    source = trajectory_source(cfg["source"], traj_cfg, traj_dir, teacher_dir, train.images, device)
    student, teacher_meta = init_student(
        "diffusion", teacher_dir, teacher_dir, cfg["dropout"], precond["boundary_sigma_min"]
    )
    student = student.to(device)
    distance = make_distance(
        cfg["loss"],
        pseudo_huber_c_value=cfg.get("pseudo_huber_c"),
        lpips_net=cfg.get("lpips_net", "vgg"),
        lpips_resize=cfg.get("lpips_resize"),
        device=device,
    )
    steps = len(source.sigmas) - 1
    if cfg["batch_size"] % steps:
        raise ValueError(
            f"midtrain.batch_size ({cfg['batch_size']}) must be a multiple of the {steps} trajectory "
            "states per trajectory"
        )
    per_step = cfg["batch_size"] // steps
    sigmas = source.sigmas.to(device)

    def loss_fn(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
        return cmt_loss(model, source.sample(per_step, gen).to(device), sigmas, distance)

    loop = LoopConfig.from_dict({**LOOP_DEFAULTS, **cfg})
    result, last_fd = fit_student(
        student,
        loss_fn,
        loop,
        featnet,
        holdout,
        precond,
        cfg["eval_t_mid"],
        cfg["eval_samples"],
        seed,
        work_dir,
        desc=f"midtrain[{cfg['loss']}]",
    )
    trajectories_seen = loop.iterations * per_step
    tags = {
        "label": "cmt",
        "loss": cfg["loss"],
        "source": cfg["source"],
        "solver": source_solver(source),
        "nfe": str(steps),
    }
    final = {
        "images": loop.iterations * loop.batch_size,
        "trajectories_seen": trajectories_seen,
        "distinct_trajectories": source.distinct_seen,
        "teacher_nfe": teacher_nfe(source, trajectories_seen, steps),
        **last_fd,
    }
    tags["teacher"] = teacher_meta.get("config_hash", "?")
    meta = {"stage": "midtrain", "init": teacher_meta.get("stage", "teacher"), "config": cfg, **final}
    finish(
        out_dir,
        work_dir,
        result,
        meta,
        precond["sigma_max"],
        cfg["eval_t_mid"],
        "midtrain/cmt",
        params={**{k: v for k, v in cfg.items() if not isinstance(v, dict)}, "seed": seed},
        tags=tags,
        final=final,
    )
    return final


def source_solver(source: TrajectorySource) -> str:
    return source.index["solver"] if isinstance(source, StoredTrajectories) else source.spec.solver


def teacher_nfe(source: TrajectorySource, trajectories_seen: int, steps: int) -> int:
    """Teacher evaluations spent on trajectories: the stored set once, or every online trajectory."""
    if isinstance(source, StoredTrajectories):
        return len(source) * steps
    return trajectories_seen * steps
