"""What every student trainer shares: initialisation from a checkpoint and writing its outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmt import parallel
from cmt.checkpoints import load_denoiser, save_denoiser
from cmt.data import Images
from cmt.images import save_grid
from cmt.labels import class_columns, label_dim_of
from cmt.nets import UNetBlock, add_second_time, build_network
from cmt.nets.edm2 import Block as EDM2Block
from cmt.objectives.base import Batch, Context, Objective
from cmt.objectives.registry import MODEL_KINDS, Method
from cmt.plots import save_loss_curve
from cmt.precond import Denoiser
from cmt.sampling import sample_few_step
from cmt.seeds import seeded
from cmt.stages.evaluate import Scorer, few_step_fd_callback
from cmt.tracking import write_history, write_record
from cmt.train import Compute, FitResult, LoopConfig, LossFn, Stateful, clear_resume, fit


@dataclass(frozen=True)
class StudentJob:
    """What every student-training job shares: data, preconditioning, seed, files, device, how it computes (config
    ``compute``), extra MLflow tags."""

    data: dict
    precond: dict
    seed: int
    teacher_dir: Path
    featnet: Path | None  # None: no FD along training (the feature net is not among evaluate.metrics)
    out_dir: Path
    work_dir: Path
    device: str
    compute: Compute = field(default_factory=Compute.from_dict)
    tags: dict | None = None  # the job's axes (cmt/jobs.py), written as MLflow tags


def job_label(job: StudentJob, fallback: str) -> str:
    """The job's path (its MLflow run name) when the workflow gave its axes, else ``fallback``."""
    return (job.tags or {}).get("job", fallback)


def set_dropout(denoiser: Denoiser, p: float) -> Denoiser:
    """Dropout of every residual block (the recipe's per-stage dropout, method.md 7)."""
    for module in denoiser.modules():
        if isinstance(module, (UNetBlock, EDM2Block)):
            module.dropout = p
    return denoiser


def init_student(
    init: str,
    init_dir: str | Path | None,
    architecture_from: str | Path,
    dropout: float,
    boundary_sigma_min: float,
    seed: int,
    method: Method,
) -> tuple[Denoiser, dict]:
    """Student from ``random`` (fresh weights, the teacher's architecture) or from a checkpoint's EMA weights.

    ``seed`` fixes every fresh weight; a ``method`` whose model kind takes a second time input (flow maps, MeanFlow)
    gets a zero-initialised second time branch if the weights lack it.
    """
    with seeded(seed, "init"):
        if init == "random":
            template, meta = load_denoiser(architecture_from)
            student = Denoiser(build_network(template.model.cfg), sigma_data=template.sigma_data)
        else:
            if init_dir is None:
                raise ValueError(f"init {init!r} needs a checkpoint folder")
            student, meta = load_denoiser(init_dir)
        if method.model_kind.second_time and not student.model.cfg.second_time:
            student.model = add_second_time(student.model)
    student.sigma_min = boundary_sigma_min
    return set_dropout(student.set_mode("edm"), dropout), meta


def objective_context(
    job: StudentJob, shape: tuple[int, ...], device: torch.device, teacher: torch.nn.Module | None = None
) -> Context:
    """What a student's objective reads besides its config section (``cmt.objectives.base.Context``)."""
    return Context(job.precond["sigma_min"], job.precond["sigma_max"], shape, device, teacher)


def student_loss(objective: Objective, batches: Callable[[int, torch.Generator], Batch]) -> LossFn:
    """The loop's loss: step ``step``'s batch from ``batches``, then the objective on it."""

    def loss(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        return objective(model, batches(step, gen), gen, step)

    return loss


def fit_student(
    student: Denoiser,
    loss_fn: LossFn,
    loop: LoopConfig,
    job: StudentJob,
    holdout: Images,
    t_mid: float,
    eval_samples: int,
    desc: str,
    kind: str = "consistency",
    fingerprint: str = "",
    extra: Stateful | None = None,
) -> tuple[FitResult, dict]:
    """``fit`` with feature-net FD of 1- and 2-step samples along training (when the job has a feature net); returns
    the result and the last FDs.

    ``fingerprint`` identifies the run's settings, so a resume checkpoint of other settings is not used.
    """
    evaluate = None
    if job.featnet is not None and parallel.is_main():  # FD along training: the feature net is among evaluate.metrics
        scorer = Scorer(Path(job.featnet), holdout)
        evaluate = few_step_fd_callback(
            scorer, kind, eval_samples, job.precond["sigma_max"], t_mid, job.seed, holdout.shape
        )
    result = fit(
        student,
        loss_fn,
        loop,
        job.work_dir,
        desc=desc,
        seed=job.seed,
        evaluate=evaluate,
        fingerprint=fingerprint,
        extra=extra,
        compute=job.compute,
    )
    evals = [h for h in result.history if "fd_1step" in h]
    return result, {k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("fd_")}


def finish(
    out_dir: str | Path,
    work_dir: str | Path,
    result: FitResult,
    meta: dict,
    sigma_max: float,
    t_mid: float,
    run_name: str,
    params: dict,
    tags: dict,
    final: dict,
    kind: str = "consistency",
) -> None:
    """Write EMA checkpoint, metric history, loss curve, 1-/2-step grids and the MLflow record (the main process's
    job: the others return at once)."""
    if not parallel.is_main():
        return
    out = Path(out_dir)
    ema = result.ema.cpu().set_mode(MODEL_KINDS[kind].saved_mode)
    save_denoiser(out, ema, {**meta, "model_kind": kind, "tags": tags})
    write_history(out, result.history)
    losses = [h["loss"] for h in result.history if "loss" in h]
    save_loss_curve(losses, out / "loss.png", title=f"{run_name} loss")
    label_dim = label_dim_of(ema)
    count = 8 * label_dim if label_dim else 64
    noise = torch.randn((count, *ema.model.cfg.image_shape), generator=torch.Generator().manual_seed(0))
    labels = class_columns(count, label_dim)
    eps = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    for steps in MODEL_KINDS[kind].eval_steps:
        images = sample_few_step(ema, kind, noise, steps, sigma_max, t_mid, eps, labels)
        save_grid(images, out / f"grid-{steps}step.png", nrow=label_dim or None, scale=4)
    write_record(
        out,
        stage=meta["stage"],
        run_name=run_name,
        params=params,
        tags=tags,
        metrics={
            **final,
            "wall_seconds": result.wall_seconds,
            "resumed_from": result.resumed_from,
            "replica_spread": result.replica_spread,
        },
        artifacts=["loss.png", "grid-1step.png", "grid-2step.png"],
    )
    clear_resume(work_dir)
