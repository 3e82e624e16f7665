"""CMT mid-training, consistency form (method.md 3.4, 4, 7).

Every trajectory state before the last is regressed onto the trajectory's endpoint; all time points
are equally represented (no time sampling, no weighting, no stop-gradient).  The student starts
from the teacher's EMA weights and trains with EDM scalings; it is evaluated with the consistency
boundary condition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from cmt import parallel
from cmt.checkpoints import load_denoiser
from cmt.config import config_hash
from cmt.data import Images, train_holdout
from cmt.labels import conditioned
from cmt.losses import Distance, make_distance, squared_l2
from cmt.meanflow import mean_velocity
from cmt.precond import Denoiser
from cmt.solvers import denoiser_calls
from cmt.stages.student import StudentJob, finish, fit_student, init_student, job_label
from cmt.train import AMP_DTYPES, LoopConfig, LossFn, resolve_device, set_precision
from cmt.trajectories import (
    OnlineTrajectories,
    StoredTrajectories,
    TrajectorySource,
    precision_error,
    trajectory_spec,
)


def cmt_loss(
    student: Denoiser,
    trajectories: Tensor,
    sigmas: Tensor,
    distance: Distance,
    points: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """CMT-CM: mean of d(f(x_i, sigma_i), x_end) over trajectories and states i (method.md 4).

    ``points`` (n, k) selects k state indices per trajectory; default: all S states before the end.  ``labels``
    (n,): each trajectory's class, for a class-conditional student.
    """
    n, count = trajectories.shape[:2]
    if points is None:
        points = torch.arange(count - 1, device=trajectories.device).expand(n, -1)
    rows = torch.arange(n, device=trajectories.device)[:, None].expand_as(points)
    inputs = trajectories[rows, points].flatten(0, 1)
    sigma = sigmas.to(inputs)[points.flatten()]
    targets = trajectories[:, -1:].expand(-1, points.shape[1], *trajectories.shape[2:]).flatten(0, 1)
    return distance(with_labels(student, labels, rows)(inputs, sigma), targets).mean()


def with_labels(student: Denoiser, labels: Tensor | None, rows: Tensor) -> Callable[..., Tensor]:
    """The student, conditioned on the class of each input's trajectory (``rows``: trajectory per input)."""
    return conditioned(student, None if labels is None else labels[rows.flatten()])


def state_points(variant: str, n: int, states: int, gen: torch.Generator) -> Tensor | None:
    """Which states of this process's ``n`` trajectories regress onto the endpoint: ``all`` (CMT), ``one`` random state
    per trajectory (our reading of the paper's endpoint-only 'slow' CMT), or ``noise`` (x_T only: knowledge
    distillation)."""
    if variant == "all":
        return None
    if variant == "one":
        return parallel.randint(states, (n, 1), gen)
    if variant == "noise":
        return torch.zeros((n, 1), dtype=torch.long, device=gen.device)
    raise ValueError(f"unknown CMT variant {variant!r}; valid: all, one, noise")


def state_pairs(states: int, device: torch.device | None = None) -> Tensor:
    """Every pair (a, b), a < b <= states, of trajectory indices (sigma_a > sigma_b): (P, 2)."""
    return torch.triu_indices(states + 1, states + 1, offset=1, device=device).T


def cmt_flowmap_loss(
    student: Denoiser, trajectories: Tensor, sigmas: Tensor, pairs: Tensor, labels: Tensor | None = None
) -> Tensor:
    """CMT-MF in flow-matching time: u(z_a, t_b, t_a) regressed onto (z_a - z_b) / (t_a - t_b), l2 (method.md 4).

    States and times are converted from EDM first (z = x / (1 + sigma), t = sigma / (1 + sigma)); ``pairs``
    (n, k, 2) holds k index pairs (a, b) per trajectory.
    """
    n = trajectories.shape[0]
    sig = sigmas.to(trajectories)
    t_all = sig / (1 + sig)  # numerics.md 6.1
    z_all = trajectories / (1 + sig).reshape(1, -1, *([1] * (trajectories.ndim - 2)))
    rows = torch.arange(n, device=trajectories.device)[:, None].expand(n, pairs.shape[1])
    a, b = pairs[..., 0], pairs[..., 1]
    z_a, z_b = z_all[rows, a].flatten(0, 1), z_all[rows, b].flatten(0, 1)
    t_a, t_b = t_all[a.flatten()], t_all[b.flatten()]
    target = (z_a - z_b) / (t_a - t_b).reshape(-1, *([1] * (z_a.ndim - 1)))
    return squared_l2(mean_velocity(with_labels(student, labels, rows), z_a, t_b, t_a), target).mean()


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
    form, points = cfg["form"], cfg["points"]
    kind = "meanflow" if form == "flowmap" else "consistency"
    student, teacher_meta = init_student(
        "diffusion",
        job.teacher_dir,
        job.teacher_dir,
        cfg["dropout"],
        job.precond["boundary_sigma_min"],
        job.seed,
        second_time=kind == "meanflow",
    )
    student = student.to(device)
    steps = len(source.sigmas) - 1
    per_step = trajectories_per_step(cfg["batch_size"], steps, form, points)
    loss_fn = make_loss(cfg, form, points, source, steps, per_step, device)
    loop = LoopConfig.from_dict(cfg)
    result, last_fd = fit_student(
        student,
        loss_fn,
        loop,
        job,
        holdout,
        cfg["eval_t_mid"],
        cfg["eval_samples"],
        desc=f"midtrain[{form}:{cfg['loss']}]",
        kind=kind,
        fingerprint=config_hash({"midtrain": cfg, "trajectories": traj_cfg, "teacher": teacher_meta}),
        extra=source,  # which trajectories were seen survives a resume
    )
    trajectories_seen = loop.iterations * per_step
    label = job_label(job, "cmt")
    tags = {
        "label": label,
        "form": form,
        "points": points,
        "loss": cfg["loss"],
        "source": cfg["source"],
        "solver": source_solver(source),
        "nfe": str(steps),
    }
    final = {
        "images": loop.iterations * loop.batch_size,
        "trajectories_seen": trajectories_seen,
        "distinct_trajectories": source.distinct_seen,
        "teacher_nfe": teacher_nfe(source, trajectories_seen),
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
        kind=kind,
    )
    return final


def trajectories_per_step(batch_size: int, steps: int, form: str, points: str) -> int:
    """Trajectories drawn per step: batch/S when every trajectory gives S student inputs, else one each."""
    if form == "consistency" and points != "all":
        return batch_size
    if batch_size % steps:
        raise ValueError(f"midtrain.batch_size ({batch_size}) must be a multiple of the {steps} states per trajectory")
    return batch_size // steps


def make_loss(
    cfg: dict, form: str, points: str, source: TrajectorySource, steps: int, per_step: int, device: torch.device
) -> LossFn:
    """The minibatch loss of the consistency form (with its state variant) or the flow-map form; ``per_step``
    trajectories a step over all processes."""
    sigmas = source.sigmas.to(device)
    local = parallel.local_count(per_step, "midtrain.batch_size's trajectories per step")
    if form == "flowmap":
        if cfg["loss"] != "l2":
            raise ValueError("midtrain.form 'flowmap' uses the l2 loss (method.md 4); set midtrain.loss: l2")
        pairs = state_pairs(steps, device)

        def flowmap(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
            chosen = pairs[parallel.randint(len(pairs), (local, steps), gen).to(device)]
            batch = source.sample(local, gen).to(device)
            return cmt_flowmap_loss(model, batch.states, sigmas, chosen, batch.labels)

        return flowmap
    if form != "consistency":
        raise ValueError(f"unknown midtrain.form {form!r}; valid: consistency, flowmap")
    distance = make_distance(
        cfg["loss"],
        pseudo_huber_c_value=cfg["pseudo_huber_c"],
        lpips_net=cfg["lpips_net"],
        lpips_resize=cfg["lpips_resize"],
        device=device,
    )

    def consistency(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
        chosen = state_points(points, local, steps, gen)
        batch = source.sample(local, gen).to(device)
        return cmt_loss(
            model, batch.states, sigmas, distance, None if chosen is None else chosen.to(device), batch.labels
        )

    return consistency


def source_solver(source: TrajectorySource) -> str:
    return source.index["solver"] if isinstance(source, StoredTrajectories) else source.spec.solver


def teacher_nfe(source: TrajectorySource, trajectories_seen: int) -> int:
    """Teacher evaluations spent on trajectories: the stored set once, or every online trajectory."""
    calls = denoiser_calls(source_solver(source), source.sigmas)
    if isinstance(source, StoredTrajectories):
        return len(source) * calls
    return trajectories_seen * calls
