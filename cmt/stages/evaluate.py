"""Evaluation: 1- and 2-step sampling (or the teacher's multi-step sampler), feature-net FD/KID against held-out data
and each detector's Fréchet distance (FID, FD_DINOv2) against reference statistics, over one or more seed ranges;
grids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cmt.data.datasets import Images
from cmt.data.labels import class_grid_order, draw_labels, label_dim_of
from cmt.data.pixels import Decode, holdout_images, identity, sample_decoder
from cmt.errors import BadInput
from cmt.evaluation.detectors import DETECTORS
from cmt.evaluation.featnet_fd import (
    class_probs,
    extract,
    kernel_distance,
    load_feature_net,
    probs_scores,
)
from cmt.evaluation.frechet import feature_distance
from cmt.evaluation.reference_stats import distance_to, load_statistics
from cmt.formats.atomic import atomic_write_json
from cmt.formats.images import save_grid
from cmt.numerics.precond import Denoiser
from cmt.numerics.solvers import denoiser_calls, sigma_grid
from cmt.objectives.registry import MODEL_KINDS
from cmt.report.tracking import write_record
from cmt.sampling.samplers import Draws, Sampler, SamplerSettings, make_sampler, sample_few_step
from cmt.seeds import index_normal
from cmt.teachers import load_model, teacher_kind

DISTANCES = ("fd", "kid")  # the feature net's scores that a seed protocol reduces, with every detector's


@dataclass
class Scorer:
    """Scores generated images: FD/KID (and class scores) in the offline feature net's space against the held-out
    images, and each detector's Fréchet distance (FID, FD_DINOv2) against its reference statistics; any of them
    (config ``evaluate.metrics``). ``references``: statistics file by detector; ``modes``: the detector's mode."""

    featnet_path: Path | None
    reference: Images | None
    references: dict[str, Path] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if self.featnet_path is None and not self.references:
            raise BadInput("nothing to score with: give a feature net, reference statistics, or both")
        self.net, self.detectors = None, {}
        if self.featnet_path is not None:
            if self.reference is None or len(self.reference) == 0:
                raise BadInput(
                    "the feature-net FD needs held-out images: set data.holdout_fraction > 0, "
                    "or score with a detector only (evaluate.metrics: [fid])"
                )
            self.net = load_feature_net(self.featnet_path)
            self.ref_feats = extract(self.net, self.reference.images)
        for name, path in self.references.items():
            mode = self.modes[name]
            features = DETECTORS[name].build(mode, self.device)
            stats = load_statistics(path, name, features.features)
            if stats["mode"] != mode:
                raise BadInput(
                    f"{path}: statistics of mode {stats['mode']!r}, evaluate.{name}.mode is {mode!r} "
                    "(never compare across modes)"
                )
            self.detectors[name] = (features, stats)

    def fd(self, images: Tensor) -> float:
        """Feature-net FD of a set of images (the training-time evaluation)."""
        return feature_distance(extract(self.net, images.clamp(-1, 1).cpu()), self.ref_feats)

    def measure(self, images: Tensor) -> dict:
        """One batch's features (feature net, detectors) and class probabilities: what the scores come from."""
        images = images.clamp(-1, 1)
        measured = {name: features(images) for name, (features, _) in self.detectors.items()}
        if self.net is not None:
            measured["featnet"] = extract(self.net, images.cpu())
            measured["probs"] = class_probs(self.net, images.cpu())
        return measured

    def score(self, batches: list[dict]) -> dict:
        """Scores of all measured batches: fd, kid, confidence, class_entropy (feature net), one per detector."""
        scores = {}
        if self.net is not None:
            feats = np.concatenate([m["featnet"] for m in batches])
            scores["fd"] = feature_distance(feats, self.ref_feats)
            scores["kid"] = kernel_distance(feats, self.ref_feats)
            scores.update(probs_scores(torch.cat([m["probs"] for m in batches])))
        for name, (_, stats) in self.detectors.items():
            scores[name] = distance_to(np.concatenate([m[name] for m in batches]), stats)
        return scores

    def reference_facts(self) -> dict:
        """Which statistics each detector scored against: mode, source (a published URL or the training set) and
        image count."""
        facts = {}
        for name, (_, stats) in self.detectors.items():
            facts |= {f"{name}_mode": stats["mode"], f"{name}_reference": stats["source"]}
            facts[f"{name}_reference_count"] = stats["count"]
        return facts


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
    start: int = 0,
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """(sampler, images, labels) batch by batch over samples ``start`` .. ``start + cfg['num_samples']``, decoded to
    images when the model works in latents; sample i's noise, re-noise draw and label are fixed by
    (``cfg['seed']``, i), so no result depends on ``cfg['batch_size']``."""
    end, size, seed, label_dim = start + cfg["num_samples"], cfg["batch_size"], cfg["seed"], label_dim_of(model)
    for first in range(start, end, size):
        count = min(size, end - first)
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


def reduce_ranges(per_range: list[dict], reduce: str) -> dict:
    """Headline scores over disjoint seed ranges: each distance (feature-net FD and KID, every detector's) reduced
    by ``reduce`` (EDM2 reports the minimum, docs/latent.md 8.7), the class scores averaged."""
    reduced = {}
    for key in per_range[0]:
        values = [scores[key] for scores in per_range]
        distance = key.rpartition("_")[0] in (*DISTANCES, *DETECTORS)
        reduced[key] = float(min(values) if distance and reduce == "min" else np.mean(values))
    return reduced


def score_samples(
    model: Denoiser,
    named: dict[str, Sampler],
    cfg: dict,
    scorer: Scorer,
    device: torch.device,
    out: Path,
    decode: Decode = identity,
) -> tuple[dict, list[dict]]:
    """(headline scores, scores per seed range) per sampler: ``cfg['seed_ranges']['count']`` disjoint ranges of
    ``cfg['num_samples']`` sample indices, each scored on its own, measured batch by batch on decoded images; one
    grid per sampler (per class if class-conditional) from the first samples."""
    label_dim, shape = label_dim_of(model), model.model.cfg.image_shape
    keep = 20 * label_dim or 100  # enough for a 10-deep per-class grid
    grids, per_range = {name: [] for name in named}, []
    for index in range(cfg["seed_ranges"]["count"]):
        measured = {name: [] for name in named}
        start = index * cfg["num_samples"]
        for name, images, labels in sample_batches(model, named, cfg, shape, device, decode, start):
            measured[name].append(scorer.measure(images))
            if sum(len(images) for images, _ in grids[name]) < keep:
                grids[name].append((images.cpu(), None if labels is None else labels.cpu()))
        per_range.append({f"{k}_{name}": v for name in named for k, v in scorer.score(measured[name]).items()})
    for name in named:
        images = torch.cat([images for images, _ in grids[name]])
        labels = torch.cat([labels for _, labels in grids[name]]) if label_dim else None
        save_sample_grid(images, labels, label_dim, out / f"grid-{name}.png")
    return reduce_ranges(per_range, cfg["seed_ranges"]["reduce"]), per_range


def training_cost(meta: dict) -> dict:
    """Images and teacher NFE of the evaluated model's own training stage (headline columns of the runs table)."""
    train = meta.get("train", meta)  # the teacher keeps them under `train`
    return {k: train[k] for k in ("images", "teacher_nfe") if k in train}


@dataclass(frozen=True)
class EvalJob:
    """The evaluate rule's job: the model folder, the feature net (or None) and the reference statistics by detector
    it scores with, its label, where it writes, and the device."""

    model_dir: Path
    featnet: Path | None
    references: dict[str, Path]
    label: str
    out_dir: Path
    device: torch.device


def protocol(cfg: dict) -> dict:
    """The seed protocol recorded with every result: sample count per range, range count, reduction."""
    ranges = cfg["seed_ranges"]
    return {"num_samples": cfg["num_samples"], "seed_ranges": ranges["count"], "seed_reduce": ranges["reduce"]}


def run(job: EvalJob, cfg: dict, data_cfg: dict, precond: dict, tags: dict | None = None) -> dict:
    """Evaluate one model by the ``evaluate`` section ``cfg`` (the teacher's ``sample`` section under ``sample``):
    scores.json (headline scores, each seed range's, the protocol and the reference statistics), one grid per
    sampler, and a record for MLflow. ``tags``: the job's own axes where they are not the model's (an
    evaluation-only job)."""
    model, meta = load_model(job.model_dir)
    holdout = holdout_images(data_cfg)
    modes = {name: cfg[name]["mode"] for name in job.references}
    scorer = Scorer(job.featnet, holdout, job.references, modes, job.device)
    named = samplers(model, meta, cfg, precond)
    decode = sample_decoder(data_cfg, job.device)
    model = model.to(job.device).eval()
    scores, per_range = score_samples(model, named, cfg, scorer, job.device, job.out_dir, decode)
    references = scorer.reference_facts()
    result = {
        "label": job.label,
        "model": str(job.model_dir),
        "model_kind": meta.get("model_kind"),
        **protocol(cfg),
        "reference_count": len(holdout),
        **references,
        **scores,
        **({"ranges": per_range} if len(per_range) > 1 else {}),
    }
    atomic_write_json(job.out_dir / "scores.json", result)
    params = {"label": job.label, "t_mid": cfg["t_mid"], "metrics": ",".join(cfg["metrics"]), **protocol(cfg)}
    write_record(
        job.out_dir,
        stage="evaluate",
        run_name=f"eval/{job.label}",
        params={**params, **{k: v for k, v in references.items() if not k.endswith("_count")}},
        tags={**meta.get("tags", {}), **(tags or {}), "label": job.label},
        metrics={**scores, **training_cost(meta)},
        artifacts=sorted(p.name for p in job.out_dir.glob("grid-*.png")),
    )
    return result
