"""The one student runner: a student stage builds its initial weights (``init_student``), its objective's loss and a
``StudentRun``; ``train_student`` fits it (with FD along training) and writes checkpoint, history, grids and record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cmt.data.labels import class_columns, label_dim_of
from cmt.data.pixels import holdout_images, sample_decoder
from cmt.errors import BadInput, about
from cmt.formats.checkpoint_import import fetch_checkpoint
from cmt.formats.checkpoints import load_denoiser, save_denoiser
from cmt.formats.images import save_grid
from cmt.inits import init_source
from cmt.nets import UNetBlock, add_second_time, build_network, network_config
from cmt.nets.edm2 import Block as EDM2Block
from cmt.numerics.precond import Denoiser
from cmt.objectives.base import Batch, Context, Objective
from cmt.objectives.registry import Method
from cmt.report.plots import save_loss_curve
from cmt.report.tracking import write_history, write_record
from cmt.sampling.samplers import Draws, sample_few_step
from cmt.seeds import seeded
from cmt.stages.evaluate import Scorer, few_step_fd_callback
from cmt.training import parallel
from cmt.training.loop import (
    Compute,
    FitOptions,
    FitResult,
    LoopConfig,
    LossFn,
    Stateful,
    clear_resume,
    fit,
    resolve_device,
)


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
    tags: dict | None = None  # the job's axes (cmt/workflow/jobs.py), written as MLflow tags
    network: dict | None = None  # config student_network: the students' own network; None: the teacher's
    autoencoder: Path | None = None  # decodes latent samples in a job that reads no latent zip (data-free CMT)
    lpips_backbone: Path | None = None  # the latent LPIPS's backbone folder (midtrain.loss latent_lpips)


def method_compute(method: Method, compute: Compute) -> Compute:
    """The compute switches a method trains with: fp32 where its registry entry gives a reason; bf16 serves the
    teacher and CMT."""
    if compute.precision != "fp32" and method.fp32_reason:
        print(f"{method.name}: compute.precision {compute.precision} does not apply: {method.fp32_reason}; fp32")
        return replace(compute, precision="fp32")
    return compute


def job_label(job: StudentJob, fallback: str) -> str:
    """The job's path (its MLflow run name) when the workflow gave its axes, else ``fallback``."""
    return (job.tags or {}).get("job", fallback)


def set_dropout(denoiser: Denoiser, p: float) -> Denoiser:
    """Dropout of every residual block (the recipe's per-stage dropout, method.md 7)."""
    for module in denoiser.modules():
        if isinstance(module, (UNetBlock, EDM2Block)):
            module.dropout = p
    return denoiser


@dataclass(frozen=True)
class InitWeights:
    """A job's initial weights: its init source (``cmt.inits``) and what that source reads: the checkpoint folder
    (the teacher's, or another job's), and for a ``file`` source the job's ``init_file`` section."""

    init: str
    folder: Path | None = None
    file: dict | None = None


def init_student(weights: InitWeights, job: StudentJob, dropout: float, method: Method) -> tuple[Denoiser, dict]:
    """The student: fresh weights of the students' network (``job.network``, else the teacher's architecture; fixed
    by the job's seed), or a checkpoint's EMA weights (a folder, or a file fetched by URL and sha256 into the job's
    work folder), which must then be of the students' network; in EDM mode with the boundary sigma_min of the job's
    preconditioning and ``dropout``. A ``method`` whose model kind takes a second time input (flow maps, MeanFlow)
    gets a zero-initialised second time branch if the weights lack it."""
    source = init_source(weights.init)
    with seeded(job.seed, "init"):
        if source.weights == "fresh":
            template, meta = load_denoiser(job.teacher_dir)
            arch = network_config(job.network) if job.network else template.model.cfg
            student = Denoiser(build_network(arch), sigma_data=template.sigma_data)
        elif source.weights == "file":
            with about(f"{method.section}.init_file"):
                student, meta = fetched_weights(weights.file, job.work_dir)
        elif weights.folder is None:
            raise BadInput(f"init {weights.init!r} needs a checkpoint folder")
        else:
            student, meta = load_denoiser(weights.folder)
        check_student_network(student, job, weights.init)
        if method.model_kind.second_time and not student.model.cfg.second_time:
            student.model = add_second_time(student.model)
    student.sigma_min = job.precond["boundary_sigma_min"]
    return set_dropout(student.set_mode("edm"), dropout), meta


CONVENTION_FIELDS = ("second_time", "time_reversed")  # how a network's inputs are read, not its architecture


def check_student_network(student: Denoiser, job: StudentJob, init: str) -> None:
    """Initial weights of another architecture than the students' network (``student_network``) are refused; a
    second time input or SiT's time (``CONVENTION_FIELDS``) may differ."""
    if not job.network:
        return
    wanted, cfg = network_config(job.network), student.model.cfg
    kept = {name: getattr(cfg, name) for name in CONVENTION_FIELDS if hasattr(wanted, name) and hasattr(cfg, name)}
    if cfg != replace(wanted, **kept):
        raise BadInput(
            f"init {init!r}: its weights are a {cfg.family} network unlike student_network "
            f"{job.network['preset']!r}; start from random or a file of that network"
        )


def fetched_weights(spec: dict | None, work_dir: Path) -> tuple[Denoiser, dict]:
    """A checkpoint fetched by the job's ``init_file`` ({url, sha256}; any format ``cmt convert-checkpoint`` reads)."""
    if not spec or not spec.get("url"):
        raise BadInput("init 'file' needs the job's init_file: {url: ..., sha256: ...}")
    return fetch_checkpoint(spec, work_dir, "init")


def objective_context(
    job: StudentJob,
    student: Denoiser,
    shape: tuple[int, ...],
    device: torch.device,
    teacher: torch.nn.Module | None = None,
) -> Context:
    """What a student's objective reads besides its config section (``cmt.objectives.base.Context``)."""
    sigmas = job.precond["sigma_min"], job.precond["sigma_max"]
    return Context(*sigmas, shape, device, teacher, student.parameterisation, job.lpips_backbone)


def student_loss(objective: Objective, batches: Callable[[int, torch.Generator], Batch]) -> LossFn:
    """The loop's loss: step ``step``'s batch from ``batches``, then the objective on it."""

    def loss(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        return objective(model, batches(step, gen), gen, step)

    return loss


@dataclass(frozen=True)
class StudentRun:
    """What a student stage constructs (``train_student`` does the rest): its registered method, the student with its
    initial weights on the device, the loss, the loop, the training-time evaluation (t_mid, sample count), a
    fingerprint of its settings (a resume checkpoint of other settings is not used), the objective's resumable state,
    and its costs (images, teacher NFE, ...) once trained."""

    method: Method
    desc: str  # the progress bar's and the messages' name of the run
    student: Denoiser
    loss: LossFn
    loop: LoopConfig
    t_mid: float
    eval_samples: int
    fingerprint: str
    costs: Callable[[], dict]
    extra: Stateful | None = None


@dataclass(frozen=True)
class Record:
    """What a finished student run records besides its costs and scores: its MLflow run name, the stage's facts for
    ``meta.json`` (``stage`` among them), params and tags."""

    run_name: str
    meta: dict
    params: dict
    tags: dict


def train_student(job: StudentJob, run: StudentRun, record: Record) -> dict:
    """Train ``run`` with feature-net FD of its evaluation samplers along training (when the job has a feature net;
    samples decoded to images when the student works in latents), then write its outputs (``finish``); returns its
    costs and last FDs."""
    evaluate = None
    if job.featnet is not None and parallel.is_main():  # FD along training: the feature net is among evaluate.metrics
        scorer = Scorer(Path(job.featnet), holdout_images(job.data))
        decode = sample_decoder(job.data, resolve_device(job.device), job.autoencoder)
        evaluate = few_step_fd_callback(
            scorer, run.method.kind, run.eval_samples, job.precond["sigma_max"], run.t_mid, job.seed, decode
        )
    options = FitOptions(evaluate, run.fingerprint, run.extra, job.compute)
    with about(run.method.section):
        result = fit(run.student, run.loss, run.loop, job.work_dir, run.desc, job.seed, options)
    evals = [h for h in result.history if "fd_1step" in h]
    final = {**run.costs(), **{k: v for k, v in (evals[-1] if evals else {}).items() if k.startswith("fd_")}}
    finish(job, result, run, record, final)
    return final


def finish(job: StudentJob, result: FitResult, run: StudentRun, record: Record, final: dict) -> None:
    """Write EMA checkpoint, metric history, loss curve, grids of the evaluation samplers and the MLflow record (the
    main process's job: the others return at once)."""
    if not parallel.is_main():
        return
    out, kind = Path(job.out_dir), run.method.model_kind
    ema = result.ema.cpu().set_mode(kind.saved_mode)
    save_denoiser(out, ema, {**record.meta, **final, "model_kind": kind.name, "tags": record.tags})
    write_history(out, result.history)
    losses = [h["loss"] for h in result.history if "loss" in h]
    save_loss_curve(losses, out / "loss.png", title=f"{record.run_name} loss")
    label_dim = label_dim_of(ema)
    count = 8 * label_dim if label_dim else 64
    noise = torch.randn((count, *ema.model.cfg.image_shape), generator=torch.Generator().manual_seed(0))
    eps = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    draws = Draws(noise, eps, class_columns(count, label_dim))
    grids = [f"grid-{steps}step.png" for steps in kind.eval_steps]
    decode = sample_decoder(job.data, autoencoder=job.autoencoder)
    for steps, name in zip(kind.eval_steps, grids):
        images = decode(sample_few_step(ema, kind.name, draws, steps, job.precond["sigma_max"], run.t_mid))
        save_grid(images, out / name, nrow=label_dim or None, scale=4)
    device = resolve_device(job.device)
    hours = parallel.device_hours(result.wall_seconds, device)
    run_facts = {"wall_seconds": result.wall_seconds, "device_hours": hours, "resumed_from": result.resumed_from}
    metrics = {**final, **run_facts, "replica_spread": result.replica_spread}  # run facts: never in the model's meta
    write_record(
        out,
        stage=record.meta["stage"],
        run_name=record.run_name,
        params=record.params,
        tags={**record.tags, "device": parallel.device_name(device)},
        metrics=metrics,
        artifacts=["loss.png", *grids],
    )
    clear_resume(job.work_dir)
