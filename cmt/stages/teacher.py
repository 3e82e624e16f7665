"""The teacher stage: an EDM denoiser (Karras et al. 2022), a MeanFlow flow map, or an autoguided pair of EDM denoisers
(cmt/teachers.py), trained or fetched."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from cmt.config import config_hash, merge
from cmt.data.batches import make_batches
from cmt.data.datasets import Images, train_holdout
from cmt.data.labels import class_columns, dataset_labels, label_dim_of
from cmt.data.pixels import sample_decoder
from cmt.errors import BadInput, about
from cmt.formats.checkpoint_import import fetch_checkpoint
from cmt.formats.checkpoints import save_denoiser
from cmt.formats.images import save_grid
from cmt.formats.names import GUIDE
from cmt.nets import build_network, count_parameters, network_config
from cmt.numerics.autoguidance import Autoguided
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


Split = Callable[[], Images]  # the training split, read on first use


@dataclass(frozen=True)
class Obtained:
    """A network the teacher stage fetched or trained: its EMA weights, provenance, loss history and run facts."""

    ema: Denoiser
    meta: dict
    losses: list[float]
    run_facts: dict


def run(job: TeacherJob) -> dict:
    """Teacher stage: train (``source: train``) or fetch a checkpoint, and an autoguided kind's guide likewise; writes
    our format (the guide in ``names.GUIDE``), a grid and a record (the main process; with several processes the
    others only train)."""
    device = resolve_device(job.device)
    kind = TEACHER_KINDS[job.cfg["kind"]]
    split = functools.cache(lambda: train_holdout(job.data)[0])  # read once, by whichever network trains first
    main = _main_network(job, kind, device, split)
    guide = _guide_network(job, device, split) if kind.guided else None
    if not parallel.is_main():
        return {}
    ema, meta, losses = main.ema.to(device), main.meta, main.losses
    sampled = ema if guide is None else Autoguided(ema, guide.ema.to(device), job.cfg["guidance"])
    samples = sample_grid_images(sampled, job, ema.model.cfg.image_shape, device)
    images = sample_decoder(job.data, device)(samples)
    save_grid(images, job.out_dir / "samples.png", nrow=label_dim_of(ema) or None, scale=4)
    if guide is not None:
        meta = {
            **meta,
            "guidance": job.cfg["guidance"],
            "guide": {**guide.meta, "parameters": count_parameters(guide.ema)},
        }
        save_denoiser(job.out_dir / GUIDE, guide.ema.cpu().set_mode("edm"), {**guide.meta, "stage": "teacher-guide"})
    meta = {
        **meta,
        "stage": "teacher",
        "model_kind": kind.model_kind,
        "teacher_kind": kind.name,
        "tags": {"label": "teacher", "teacher_kind": kind.name, **(job.tags or {})},
        "data": meta.get("data", {"shape": list(ema.model.cfg.image_shape)}),  # a fetched network reads none
        "config": job.subtree(),
        "config_hash": config_hash(job.subtree()),
        "parameters": count_parameters(ema),
    }  # content only: wall time, resume point and commit go to run.json, so equal weights give equal files
    save_denoiser(job.out_dir, ema.cpu().set_mode("edm"), meta)
    _write_run(job, meta, losses, _summed(main.run_facts, guide.run_facts if guide else {}))
    return meta


def _main_network(job: TeacherJob, kind: TeacherKind, device: torch.device, split: Split) -> Obtained | None:
    """The teacher's own network, fetched or trained on the training ``split``; None in the other processes."""
    if job.cfg["source"] == "fetch":
        return _fetched(job.cfg["fetch"], job.work_dir, "teacher.fetch", "fetched", kind)
    denoiser = build_denoiser(job.network, job.precond, job.seed, MODEL_KINDS[kind.model_kind].second_time)
    return _trained(denoiser, job.cfg["train"], job, device, split)


def _guide_network(job: TeacherJob, device: torch.device, split: Split) -> Obtained | None:
    """An autoguided teacher's guide (``teacher.guide``): fetched, or trained like the main network for its own
    iterations on its own network overrides, resumable in ``<work>/guide``."""
    cfg = job.cfg["guide"]
    if cfg["source"] == "fetch":
        return _fetched(cfg["fetch"], job.work_dir, "teacher.guide.fetch", "guide")
    network = merge(job.network, cfg["network"])
    train = {**job.cfg["train"], "iterations": cfg["iterations"] or job.cfg["train"]["iterations"]}
    guide_job = replace(job, network=network, work_dir=job.work_dir / GUIDE)
    denoiser = build_denoiser(network, job.precond, job.seed)
    obtained = _trained(denoiser, train, guide_job, device, split, "loss-guide")
    return obtained and replace(obtained, meta={**obtained.meta, "network": network})


def _trained(
    denoiser: Denoiser, train: dict, job: TeacherJob, device: torch.device, split: Split, plot: str = "loss"
) -> Obtained | None:
    """``denoiser`` trained by ``train`` (a ``teacher.train`` section) on the training ``split``, its loss curve in
    ``<plot>.png``; None in the processes other than the main one."""
    train_set = split()
    sigmas = job.precond["sigma_min"], job.precond["sigma_max"]
    context = Context(*sigmas, train_set.shape, device, None, denoiser.parameterisation)
    result = train_teacher(denoiser, train_set, train, job, context)
    if not parallel.is_main():
        return None
    losses = [h["loss"] for h in result.history]
    save_loss_curve(losses, job.out_dir / f"{plot}.png", title="EDM teacher loss (per pixel)")
    run_facts = {
        "wall_seconds": result.wall_seconds,
        "device_hours": parallel.device_hours(result.wall_seconds, device),
        "resumed_from": result.resumed_from,
        "replica_spread": result.replica_spread,
    }
    data = {"name": train_set.name, "shape": list(train_set.shape), "count": len(train_set)}
    meta = {"source": "train", "train": _training_facts(losses, train["batch_size"]), "data": data}
    return Obtained(result.ema, meta, losses, run_facts)


def _summed(main: dict, guide: dict) -> dict:
    """The run facts of a teacher job: the main network's, with the guide's wall time and device-hours added."""
    return {k: v + guide[k] if k in ("wall_seconds", "device_hours") and k in guide else v for k, v in main.items()}


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
        artifacts=[p.name for p in (out / "samples.png", out / "loss.png", out / "loss-guide.png") if p.exists()],
    )
    clear_resume(job.work_dir)
    clear_resume(job.work_dir / GUIDE)


def _fetched(
    cfg: dict, work_dir: str | Path, section: str, stem: str, kind: TeacherKind | None = None
) -> Obtained | None:
    """The checkpoint of a fetch section (``teacher.fetch``, ``teacher.guide.fetch``; sha256-verified; ours, an EDM
    or an EDM2 network pickle read without running it) as our denoiser, with its provenance, in the main process only
    (one download; None in the others); a flow-map ``kind`` needs a network with a second time input."""
    if not parallel.is_main():
        return None
    with about(section):
        denoiser, meta = fetch_checkpoint(cfg, work_dir, stem)
        if kind and MODEL_KINDS[kind.model_kind].second_time and not denoiser.model.cfg.second_time:
            raise BadInput(
                f"{cfg['url']} holds a network without a second time input; teacher.kind {kind.name} needs a "
                f"mean-flow model (one trained by {kind.method})"
            )
    provenance = {"source": "fetch", "url": cfg["url"], "sha256": cfg["sha256"], "fetched_meta": meta}
    return Obtained(denoiser, provenance, [], {"wall_seconds": 0.0, "resumed_from": 0})
