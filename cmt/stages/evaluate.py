"""Evaluation: 1- and 2-step sampling (or the teacher's multi-step sampler), feature-net FD/KID against held-out data
and FID against training-set statistics, grids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cmt.data.datasets import Images
from cmt.data.labels import class_grid_order, draw_labels, label_dim_of
from cmt.data.pixels import Decode, holdout_images, identity, sample_decoder
from cmt.errors import BadInput
from cmt.evaluation.featnet_fd import (
    class_probs,
    extract,
    kernel_distance,
    load_feature_net,
    probs_scores,
)
from cmt.evaluation.frechet import feature_distance
from cmt.evaluation.inception_fid import InceptionFeatures, fid, load_statistics
from cmt.formats.atomic import atomic_write_json
from cmt.formats.images import save_grid
from cmt.numerics.precond import Denoiser
from cmt.numerics.solvers import denoiser_calls, sigma_grid
from cmt.objectives.registry import MODEL_KINDS
from cmt.report.tracking import write_record
from cmt.sampling.samplers import Draws, Sampler, SamplerSettings, make_sampler, sample_few_step
from cmt.seeds import index_normal
from cmt.teachers import load_model, teacher_kind


@dataclass
class Scorer:
    """Scores generated images: FD/KID (and class scores) in the offline feature net's space against the held-out
    images, and FID against reference Inception statistics; either or both (config ``evaluate.metrics``)."""

    featnet_path: Path | None
    reference: Images | None
    fid_reference: Path | None = None
    fid_mode: str = "legacy_tensorflow"
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if self.featnet_path is None and self.fid_reference is None:
            raise BadInput("nothing to score with: give a feature net, FID reference statistics, or both")
        self.net = self.inception = self.fid_stats = None
        if self.featnet_path is not None:
            if self.reference is None or len(self.reference) == 0:
                raise BadInput(
                    "the feature-net FD needs held-out images: set data.holdout_fraction > 0, "
                    "or score with FID only (evaluate.metrics: [fid])"
                )
            self.net = load_feature_net(self.featnet_path)
            self.ref_feats = extract(self.net, self.reference.images)
        if self.fid_reference is not None:
            self.inception = InceptionFeatures(self.fid_mode, self.device)
            self.fid_stats = load_statistics(self.fid_reference)
            if self.fid_stats["mode"] != self.fid_mode:
                raise BadInput(
                    f"{self.fid_reference}: statistics of mode {self.fid_stats['mode']!r}, "
                    f"evaluate.fid.mode is {self.fid_mode!r} (never compare across modes)"
                )

    def fd(self, images: Tensor) -> float:
        """Feature-net FD of a set of images (the training-time evaluation)."""
        return feature_distance(extract(self.net, images.clamp(-1, 1).cpu()), self.ref_feats)

    def measure(self, images: Tensor) -> dict:
        """One batch's features (feature net and/or Inception) and class probabilities: what the scores come from."""
        images = images.clamp(-1, 1)
        measured = {}
        if self.net is not None:
            measured["featnet"] = extract(self.net, images.cpu())
            measured["probs"] = class_probs(self.net, images.cpu())
        if self.inception is not None:
            measured["inception"] = self.inception(images)
        return measured

    def score(self, batches: list[dict]) -> dict:
        """Scores of all measured batches: fd, kid, confidence, class_entropy (feature net), fid (Inception)."""
        scores = {}
        if self.net is not None:
            feats = np.concatenate([m["featnet"] for m in batches])
            scores["fd"] = feature_distance(feats, self.ref_feats)
            scores["kid"] = kernel_distance(feats, self.ref_feats)
            scores.update(probs_scores(torch.cat([m["probs"] for m in batches])))
        if self.inception is not None:
            scores["fid"] = fid(np.concatenate([m["inception"] for m in batches]), self.fid_stats)
        return scores


def few_step_fd_callback(
    scorer: Scorer, kind: str, n: int, sigma_max: float, t_mid: float, seed: int, decode: Decode = identity
):
    """Training-time evaluation: FD of 1-step and 2-step samples of the EMA model (decoded to images when the model
    works in latents), noise fixed per sample index."""

    def evaluate(ema: Denoiser, step: int) -> dict:
        device, shape = next(ema.parameters()).device, ema.model.cfg.image_shape
        noise, eps = (index_normal(seed, purpose, 0, n, shape, device) for purpose in ("noise", "renoise"))
        draws = Draws(noise, eps, draw_labels(n, label_dim_of(ema), seed, device=device))
        return {
            f"fd_{steps}step": scorer.fd(decode(sample_few_step(ema, kind, draws, steps, sigma_max, t_mid)))
            for steps in MODEL_KINDS[kind].eval_steps
        }

    return evaluate


def sampler_settings(cfg: dict, precond: dict) -> SamplerSettings:
    """The samplers' settings from the ``evaluate`` section (with the teacher's ``sample`` section under ``sample``) and
    the ``precond`` section."""
    sample = cfg["sample"]
    return SamplerSettings(precond["sigma_min"], precond["sigma_max"], cfg["t_mid"], sample["solver"], sample["grid"])


def samplers(model: Denoiser, meta: dict, cfg: dict, precond: dict) -> dict[str, Sampler]:
    """The samplers a model is evaluated with, by name: the teacher's own sampler (named by its NFE: its ODE solver,
    or a flow-map teacher's ``sample.steps`` steps; network passes, so an autoguided call counts two), or its kind's
    evaluation step counts (1 and 2 steps)."""
    kind, settings = meta.get("model_kind", "consistency"), sampler_settings(cfg, precond)
    passes = teacher_kind(meta).passes if meta.get("stage") == "teacher" else 1
    if kind == "meanflow" and meta.get("stage") == "teacher":
        steps = cfg["sample"]["steps"]
        return {f"{steps}nfe": make_sampler(model, kind, steps, settings)}
    if kind == "diffusion":
        steps = cfg["sample"]["steps"]
        sigmas = sigma_grid(settings.grid, steps, sigma_min=settings.sigma_min, sigma_max=settings.sigma_max)
        return {f"{denoiser_calls(settings.solver, sigmas) * passes}nfe": make_sampler(model, kind, steps, settings)}
    return {f"{steps}step": make_sampler(model, kind, steps, settings) for steps in MODEL_KINDS[kind].eval_steps}


def sample_batches(
    model: Denoiser,
    named: dict[str, Sampler],
    cfg: dict,
    shape: tuple[int, ...],
    device: torch.device,
    decode: Decode = identity,
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """(sampler, images, labels) batch by batch over ``cfg['num_samples']`` samples, decoded to images when the model
    works in latents; sample i's noise, re-noise draw and label are fixed by (``cfg['seed']``, i), so no result
    depends on ``cfg['batch_size']``."""
    total, size, seed, label_dim = cfg["num_samples"], cfg["batch_size"], cfg["seed"], label_dim_of(model)
    for first in range(0, total, size):
        count = min(size, total - first)
        z = index_normal(seed, "noise", first, count, shape, device)
        eps = index_normal(seed, "renoise", first, count, shape, device)
        labels = draw_labels(count, label_dim, seed, first, device)
        for name, sampler in named.items():
            yield name, decode(sampler(Draws(z, eps, labels))), labels


def save_sample_grid(images: Tensor, labels: Tensor | None, label_dim: int, path: Path) -> None:
    """The first 100 samples, or for a class-conditional model a per-class grid (column k: class k)."""
    if labels is None:
        save_grid(images[:100], path, scale=4)
    else:
        save_grid(images[class_grid_order(labels, label_dim, rows=10)], path, nrow=label_dim, scale=4)


def score_samples(
    model: Denoiser,
    named: dict[str, Sampler],
    cfg: dict,
    scorer: Scorer,
    device: torch.device,
    out: Path,
    decode: Decode = identity,
) -> dict:
    """Scores per sampler over all samples (decoded images), measured batch by batch; one grid per sampler (per
    class if class-conditional) from the first samples."""
    label_dim = label_dim_of(model)
    keep = 20 * label_dim or 100  # enough for a 10-deep per-class grid
    measured, grids = ({name: [] for name in named} for _ in range(2))
    shape = model.model.cfg.image_shape
    for name, images, labels in sample_batches(model, named, cfg, shape, device, decode):
        measured[name].append(scorer.measure(images))
        if sum(len(images) for images, _ in grids[name]) < keep:
            grids[name].append((images.cpu(), None if labels is None else labels.cpu()))
    scores = {}
    for name in named:
        scores.update({f"{k}_{name}": v for k, v in scorer.score(measured[name]).items()})
        images = torch.cat([images for images, _ in grids[name]])
        labels = torch.cat([labels for _, labels in grids[name]]) if label_dim else None
        save_sample_grid(images, labels, label_dim, out / f"grid-{name}.png")
    return scores


def training_cost(meta: dict) -> dict:
    """Images and teacher NFE of the evaluated model's own training stage (headline columns of the runs table)."""
    train = meta.get("train", meta)  # the teacher keeps them under `train`
    return {k: train[k] for k in ("images", "teacher_nfe") if k in train}


@dataclass(frozen=True)
class EvalJob:
    """The evaluate rule's job: the model folder, the feature net and FID reference it scores with (either may be
    absent), its label, where it writes, and the device."""

    model_dir: Path
    featnet: Path | None
    fid_reference: Path | None
    label: str
    out_dir: Path
    device: torch.device


def run(job: EvalJob, cfg: dict, data_cfg: dict, precond: dict, tags: dict | None = None) -> dict:
    """Evaluate one model by the ``evaluate`` section ``cfg`` (the teacher's ``sample`` section under ``sample``):
    scores.json, one grid per sampler, and a record for MLflow. ``tags``: the job's own axes where they are not the
    model's (an evaluation-only job)."""
    model, meta = load_model(job.model_dir)
    holdout = holdout_images(data_cfg)
    scorer = Scorer(job.featnet, holdout, job.fid_reference, cfg["fid"]["mode"], job.device)
    named = samplers(model, meta, cfg, precond)
    decode = sample_decoder(data_cfg, job.device)
    scores = score_samples(model.to(job.device).eval(), named, cfg, scorer, job.device, job.out_dir, decode)
    fid = {"fid_mode": scorer.fid_mode, "fid_reference": scorer.fid_stats["source"]} if scorer.fid_stats else {}
    result = {
        "label": job.label,
        "model": str(job.model_dir),
        "model_kind": meta.get("model_kind"),
        "num_samples": cfg["num_samples"],
        "reference_count": len(holdout),
        **({**fid, "fid_reference_count": scorer.fid_stats["count"]} if scorer.fid_stats else {}),
        **scores,
    }
    atomic_write_json(job.out_dir / "scores.json", result)
    params = {"label": job.label, "t_mid": cfg["t_mid"], "metrics": ",".join(cfg["metrics"])}
    write_record(
        job.out_dir,
        stage="evaluate",
        run_name=f"eval/{job.label}",
        params={**params, "num_samples": cfg["num_samples"], **fid},
        tags={**meta.get("tags", {}), **(tags or {}), "label": job.label},
        metrics={**scores, **training_cost(meta)},
        artifacts=sorted(p.name for p in job.out_dir.glob("grid-*.png")),
    )
    return result
