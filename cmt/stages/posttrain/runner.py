"""The post-training stage: one runner for ECT, ECD and MeanFlow from random, diffusion or CMT weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from cmt.batches import make_batches
from cmt.checkpoints import load_denoiser
from cmt.config import config_hash
from cmt.data import Images, train_holdout
from cmt.labels import conditioned, dataset_labels, label_dim_of
from cmt.losses import make_distance
from cmt.meanflow import meanflow_loss
from cmt.precond import Denoiser
from cmt.stages.posttrain.ecd import ecd_loss, ecd_teacher_nfe
from cmt.stages.posttrain.ect import ect_loss, ect_stage
from cmt.stages.student import StudentJob, finish, fit_student, init_student, job_label
from cmt.train import Compute, LoopConfig, LossFn, resolve_device

METHODS = ("ect", "ecd", "meanflow")


def make_loss(
    method: str,
    cfg: dict,
    data: Images,
    loader: dict,
    label_dim: int,
    seed: int,
    teacher_dir: str | Path,
    device: torch.device,
) -> LossFn:
    """The minibatch loss of one method, drawing images (and, for a student of ``label_dim`` classes, their labels)
    from ``data`` (``cmt.batches``); the student and ECD's teacher see each image's class."""
    if method not in METHODS:
        raise ValueError(f"unknown post-training method {method!r}; valid: {', '.join(METHODS)}")
    labels = dataset_labels(data.labels, label_dim, f"post-training on {data.name}")
    batches = make_batches(data, labels, cfg["batch_size"], seed, device, loader)
    if method == "meanflow":

        def meanflow(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
            y, lab = batches(step, gen)
            return meanflow_loss(conditioned(model, lab), y, gen, cfg)

        return meanflow
    distance = make_distance(cfg["loss"], pseudo_huber_c_value=cfg["pseudo_huber_c"])

    def stage(step: int) -> int:
        return ect_stage(step, cfg["iterations_per_tick"], cfg["double_ticks"])

    if method == "ect":

        def ect(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
            y, lab = batches(step, gen)
            return ect_loss(conditioned(model, lab), y, gen, cfg, stage(step), distance)

        return ect
    teacher = load_denoiser(teacher_dir)[0].to(device).eval().requires_grad_(False)

    def ecd(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
        y, lab = batches(step, gen)
        return ecd_loss(conditioned(model, lab), conditioned(teacher, lab), y, gen, cfg, stage(step), distance)

    return ecd


FP32_REASONS = {  # why a post-training method ignores compute.precision: bf16 would change what it computes
    "meanflow": "its JVP and target stay in fp32 (numerics.md 9.4)",
    "ect": "its target f(x_t) - f(x_r) is O(1/q) of f, below bf16's 2^-8 resolution at the recipe's q (measured)",
    "ecd": "its target f(x_t) - f(x_r) is O(1/q) of f, below bf16's 2^-8 resolution at the recipe's q (measured)",
}


def method_compute(method: str, compute: Compute) -> Compute:
    """The compute switches a post-training method trains with: every one of them in fp32 (``FP32_REASONS``); bf16
    serves the teacher and CMT."""
    if compute.precision != "fp32":
        print(f"{method}: compute.precision {compute.precision} does not apply: {FP32_REASONS[method]}; fp32")
        return replace(compute, precision="fp32")
    return compute


def run(method: str, cfg: dict, init: str, init_dir: str | Path | None, job: StudentJob) -> dict:
    """Post-train one (method, init) pair; writes the EMA checkpoint, history, grids and record."""
    job = replace(job, compute=method_compute(method, job.compute))
    device = resolve_device(job.device)
    train, holdout = train_holdout(job.data)
    kind = "meanflow" if method == "meanflow" else "consistency"
    student, init_meta = init_student(
        init,
        init_dir,
        job.teacher_dir,
        cfg["dropout"],
        job.precond["boundary_sigma_min"],
        job.seed,
        second_time=kind == "meanflow",
    )
    student: Denoiser = student.to(device)
    loss_fn = make_loss(
        method, cfg, train, job.data["loader"], label_dim_of(student), job.seed, job.teacher_dir, device
    )
    loop = LoopConfig.from_dict(cfg)
    result, last_fd = fit_student(
        student,
        loss_fn,
        loop,
        job,
        holdout,
        cfg["t_mid"],
        cfg["eval_samples"],
        desc=f"{method}[{init}]",
        kind=kind,
        fingerprint=config_hash({method: cfg, "init": init, "init_model": init_meta}),
    )
    label = job_label(job, f"{method}-{init}")
    final = {
        "images": loop.iterations * loop.batch_size,
        "teacher_nfe": ecd_teacher_nfe(cfg, loop) if method == "ecd" else 0,
        **last_fd,
    }
    tags = {
        "label": label,
        "method": method,
        "init": init,
        **(job.tags or {}),
    }
    meta = {
        "stage": "posttrain",
        "method": method,
        "init": init,
        "init_stage": init_meta.get("stage"),
        "config": cfg,
        **final,
    }
    params = {
        **{k: v for k, v in cfg.items() if not isinstance(v, dict)},
        "init": init,
        "seed": job.seed,
        **job.compute.params(),
    }
    finish(
        job.out_dir,
        job.work_dir,
        result,
        meta,
        job.precond["sigma_max"],
        cfg["t_mid"],
        f"posttrain/{label}",
        params=params,
        tags=tags,
        final=final,
        kind=kind,
    )
    return final
