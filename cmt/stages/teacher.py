"""EDM diffusion teacher: training objective and trainer (Karras et al. 2022, 'EDM')."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from cmt.config import config_hash
from cmt.data.batches import make_batches
from cmt.data.datasets import Images, train_holdout
from cmt.data.labels import class_columns, dataset_labels, label_dim_of
from cmt.data.pixels import sample_decoder
from cmt.errors import BadInput, about
from cmt.formats.checkpoint_import import fetch_checkpoint
from cmt.formats.checkpoints import save_denoiser
from cmt.formats.images import save_grid
from cmt.nets import build_network, count_parameters, network_config
from cmt.numerics.precond import Denoiser
from cmt.objectives import registry
from cmt.objectives.base import Context
from cmt.objectives.registry import MODEL_KINDS
from cmt.report.plots import save_loss_curve
from cmt.report.tracking import write_history, write_record
from cmt.sampling.samplers import Draws, SamplerSettings, make_sampler
from cmt.seeds import seeded
from cmt.stages.student import method_compute, student_loss
from cmt.teachers import TEACHER_KINDS, TeacherKind
from cmt.training import parallel
from cmt.training.loop import Compute, FitOptions, FitResult, LoopConfig, clear_resume, fit, resolve_device


def build_denoiser(network: dict, precond: dict, seed: int, second_time: bool = False) -> Denoiser:
    """Fresh denoiser from the config's ``network`` and ``precond`` sections, with a second time input when the
    teacher's kind trains a flow map; ``seed`` fixes its initialisation."""
    cfg = network_config(network)
    with seeded(seed, "init"):
        net = build_network(replace(cfg, second_time=True) if second_time else cfg)
    return Denoiser(net, sigma_data=precond["sigma_data"], sigma_min=precond["boundary_sigma_min"], mode="edm")


@dataclass(frozen=True)
class TeacherJob:
    """The teacher rule's job: its config sections, seed, folders, device, fast paths and MLflow tags."""

    cfg: dict  # the ``teacher`` section
    network: dict
    precond: dict
    data: dict
    seed: int
    out_dir: Path
    work_dir: Path
    device: str = "cpu"
    compute: Compute = field(default_factory=Compute.from_dict)
    tags: dict | None = None

    def subtree(self) -> dict:
        """The config the teacher's weights depend on (hashed into its meta)."""
        return {
            "teacher": self.cfg,
            "network": self.network,
            "precond": self.precond,
            "data": self.data,
            "seed": self.seed,
        }


def train_teacher(denoiser: Denoiser, train_set: Images, cfg: dict, job: TeacherJob, context: Context) -> FitResult:
    """Training by the teacher kind's method on ``context``'s device: EDM by ``cfg`` (a ``teacher.train`` section;
    ``cmt.objectives.edm``) or MeanFlow by its ``meanflow`` subsection (a flowmap teacher); Adam, linear LR warm-up,
    EDM's ramped half-life EMA; resumable from the job's work folder."""
    loop = LoopConfig.from_dict(cfg)
    labels = dataset_labels(train_set.labels, label_dim_of(denoiser), f"teacher on {train_set.name}")
    batches = make_batches(train_set, labels, loop.batch_size, job.seed, context.device, job.data["loader"])
    method = registry.method("teacher", TEACHER_KINDS[job.cfg["kind"]].method)
    objective_cfg = cfg[method.name] if method.name in cfg else cfg  # EDM's settings are teacher.train's own
    loss_fn = student_loss(registry.build(method, objective_cfg, context), batches)
    fingerprint = config_hash({"train": cfg, "architecture": denoiser.model.cfg.to_dict(), "seed": job.seed})
    options = FitOptions(fingerprint=fingerprint, compute=method_compute(method, job.compute))
    with about("teacher.train"):
        return fit(denoiser.to(context.device), loss_fn, loop, job.work_dir, "teacher", job.seed, options)


def sample_grid_images(denoiser: Denoiser, job: TeacherJob, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """``teacher.sample.num_samples`` samples by the teacher kind's sampler: the configured solver and grid, or the
    flow map in ``steps`` steps (no grad); a class-conditional teacher draws class k in column k."""
    sample, precond, kind = job.cfg["sample"], job.precond, TEACHER_KINDS[job.cfg["kind"]]
    gen = torch.Generator(device=device).manual_seed(job.seed + 1)
    noise = torch.randn((sample["num_samples"], *shape), generator=gen, device=device)
    labels = class_columns(sample["num_samples"], label_dim_of(denoiser))
    settings = SamplerSettings(precond["sigma_min"], precond["sigma_max"], 0.0, sample["solver"], sample["grid"])
    sampler = make_sampler(denoiser.eval(), kind.model_kind, sample["steps"], settings)
    return sampler(Draws(noise, None, None if labels is None else labels.to(device)))


def run(job: TeacherJob) -> dict:
    """Teacher stage: train (``source: train``) or fetch a checkpoint; writes our format, a grid and a record (the
    main process; with several processes the others only train)."""
    device = resolve_device(job.device)
    train_set, _ = train_holdout(job.data)
    if job.cfg["source"] == "fetch":
        if not parallel.is_main():  # one download
            return {}
        ema, meta, losses = _fetched(job.cfg["fetch"], job.work_dir, TEACHER_KINDS[job.cfg["kind"]])
        ema, run_facts = ema.to(device), {"wall_seconds": 0.0, "resumed_from": 0}
    else:
        second_time = MODEL_KINDS[TEACHER_KINDS[job.cfg["kind"]].model_kind].second_time
        denoiser = build_denoiser(job.network, job.precond, job.seed, second_time)
        sigmas = job.precond["sigma_min"], job.precond["sigma_max"]
        context = Context(*sigmas, train_set.shape, device, None, denoiser.parameterisation)
        result = train_teacher(denoiser, train_set, job.cfg["train"], job, context)
        if not parallel.is_main():
            return {}
        ema, losses = result.ema, [h["loss"] for h in result.history]
        meta = {"source": "train", "train": _training_facts(losses, job.cfg["train"]["batch_size"])}
        run_facts = {
            "wall_seconds": result.wall_seconds,
            "device_hours": parallel.device_hours(result.wall_seconds, device),
            "resumed_from": result.resumed_from,
            "replica_spread": result.replica_spread,
        }
        save_loss_curve(losses, job.out_dir / "loss.png", title="EDM teacher loss (per pixel)")
    samples = sample_grid_images(ema, job, train_set.shape, device)
    images = sample_decoder(job.data, device)(samples)
    save_grid(images, job.out_dir / "samples.png", nrow=label_dim_of(ema) or None, scale=4)
    meta = {
        **meta,
        "stage": "teacher",
        "model_kind": TEACHER_KINDS[job.cfg["kind"]].model_kind,
        "teacher_kind": job.cfg["kind"],
        "tags": {"label": "teacher", "teacher_kind": job.cfg["kind"], **(job.tags or {})},
        "data": {"name": train_set.name, "shape": list(train_set.shape), "count": len(train_set)},
        "config": job.subtree(),
        "config_hash": config_hash(job.subtree()),
        "parameters": count_parameters(ema),
    }  # content only: wall time, resume point and commit go to run.json, so equal weights give equal files
    save_denoiser(job.out_dir, ema.cpu().set_mode("edm"), meta)
    _write_run(job, meta, losses, run_facts)
    return meta


def _training_facts(losses: list[float], batch_size: int) -> dict:
    """Iterations, images and the final loss (mean of the last 50 steps) of a trained teacher."""
    return {
        "iterations": len(losses),
        "images": len(losses) * batch_size,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
    }


def _write_run(job: TeacherJob, meta: dict, losses: list[float], run_facts: dict) -> None:
    """The teacher's metric history and MLflow record; its resume checkpoint goes."""
    out = job.out_dir
    write_history(out, [{"step": k + 1, "loss": v} for k, v in enumerate(losses)])
    params = {
        "source": job.cfg["source"],
        "seed": job.seed,
        "parameters": meta["parameters"],
        **{f"train.{k}": v for k, v in job.cfg["train"].items()},
        **job.compute.params(),
    }
    write_record(
        out,
        stage="teacher",
        run_name="teacher",
        params=params,
        tags={**meta["tags"], "device": parallel.device_name(resolve_device(job.device))},
        metrics={"images": meta.get("train", {}).get("images", 0), **run_facts},
        artifacts=[p.name for p in (out / "samples.png", out / "loss.png") if p.exists()],
    )
    clear_resume(job.work_dir)


def _fetched(cfg: dict, work_dir: str | Path, kind: TeacherKind) -> tuple[Denoiser, dict, list[float]]:
    """The checkpoint of ``teacher.fetch`` (sha256-verified; ours, an EDM or an EDM2 network pickle read without
    running it) as our denoiser, with its provenance; a flow-map kind needs a network with a second time input."""
    with about("teacher.fetch"):
        denoiser, meta = fetch_checkpoint(cfg, work_dir, "fetched")
        if MODEL_KINDS[kind.model_kind].second_time and not denoiser.model.cfg.second_time:
            raise BadInput(
                f"{cfg['url']} holds a network without a second time input; teacher.kind {kind.name} needs a "
                f"mean-flow model (one trained by {kind.method})"
            )
    provenance = {"source": "fetch", "url": cfg["url"], "sha256": cfg["sha256"], "fetched_meta": meta}
    return denoiser, provenance, []
