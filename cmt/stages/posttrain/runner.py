"""The post-training stage: one runner for every registered post-training method (``cmt.objectives.registry``) from
random, diffusion or CMT weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cmt.config import config_hash
from cmt.data.batches import make_batches
from cmt.data.datasets import Images, train_holdout
from cmt.data.labels import dataset_labels, label_dim_of
from cmt.formats.checkpoints import read_meta
from cmt.inits import init_source
from cmt.numerics.precond import Denoiser
from cmt.objectives import registry
from cmt.objectives.base import Context, Objective
from cmt.objectives.registry import Method
from cmt.stages.student import (
    InitWeights,
    Record,
    StudentJob,
    StudentRun,
    init_student,
    job_label,
    method_compute,
    objective_context,
    student_loss,
    train_student,
)
from cmt.teachers import load_teacher, teacher_kind
from cmt.training.loop import LoopConfig, LossFn, resolve_device


def make_loss(
    method: Method, cfg: dict, data: Images, label_dim: int, context: Context, seed: int, loader: dict
) -> tuple[LossFn, Objective]:
    """A method's loss on minibatches of ``data`` (``cmt.data.batches``; for a student of ``label_dim`` classes, with
    each image's label), and its objective."""
    labels = dataset_labels(data.labels, label_dim, f"post-training on {data.name}")
    batches = make_batches(data, labels, cfg["batch_size"], seed, context.device, loader)
    objective = registry.build(method, cfg, context)
    return student_loss(objective, batches), objective


def run(method: str, cfg: dict, init: str, init_dir: str | Path | None, job: StudentJob) -> dict:
    """Post-train one (method, init) pair; writes the EMA checkpoint, history, grids and record."""
    entry = registry.method("posttrain", method)
    job = replace(job, compute=method_compute(entry, job.compute))
    device = resolve_device(job.device)
    train, _ = train_holdout(job.data)
    folder = job.teacher_dir if init_source(init).weights == "teacher" else init_dir
    student, init_meta = init_student(InitWeights(init, folder, cfg["init_file"]), job, cfg["dropout"], entry)
    student: Denoiser = student.to(device)
    teacher = load_teacher(job.teacher_dir)[0].to(device) if "teacher" in entry.reads else None
    context = objective_context(job, student, train.shape, device, teacher)
    loss_fn, objective = make_loss(entry, cfg, train, label_dim_of(student), context, job.seed, job.data["loader"])
    loop = LoopConfig.from_dict(cfg)
    rows = loop.iterations * loop.batch_size
    passes = teacher_kind(read_meta(job.teacher_dir)).passes
    calls = objective.calls_per_row * passes if entry.teacher_nfe == "per_row" else 0
    plan = StudentRun(
        entry,
        f"{method}[{init}]",
        student,
        loss_fn,
        loop,
        cfg["t_mid"],
        cfg["eval_samples"],
        config_hash({method: cfg, "init": init, "init_model": init_meta}),
        lambda: {"images": rows, "teacher_nfe": registry.teacher_nfe(entry, rows, calls)},
    )
    label = job_label(job, f"{method}-{init}")
    tags = {"label": label, "method": method, "init": init, **(job.tags or {})}
    meta = {"stage": "posttrain", "method": method, "init": init, "init_stage": init_meta.get("stage"), "config": cfg}
    params = {
        **{k: v for k, v in cfg.items() if not isinstance(v, dict)},
        "init": init,
        "seed": job.seed,
        **job.compute.params(),
    }
    return train_student(job, plan, Record(f"posttrain/{label}", meta, params, tags))
