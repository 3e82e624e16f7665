"""Evaluation: 1- and 2-step sampling (or the teacher's multi-step sampler), FD/KID against held-out data, grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cmt.atomic import atomic_write_json
from cmt.checkpoints import load_denoiser
from cmt.data import ImageDataset, train_holdout
from cmt.images import save_grid
from cmt.labels import class_grid_order, conditioned, draw_labels, label_dim_of
from cmt.metrics import (
    classifier_scores,
    extract,
    frechet_distance,
    inception_features,
    kernel_distance,
    load_feature_net,
)
from cmt.precond import Denoiser
from cmt.sampling import sample_diffusion, sample_few_step
from cmt.solvers import denoiser_calls, sigma_grid
from cmt.tracking import write_record


@dataclass
class Scorer:
    """Scores generated images against held-out data in the feature net's (or Inception's) space."""

    featnet_path: Path
    reference: ImageDataset
    features: str = "classifier"  # classifier | inception
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        self.net = load_feature_net(self.featnet_path)
        self.ref_feats = self._features(self.reference.images)

    def _features(self, images: Tensor) -> np.ndarray:
        if self.features == "inception":
            return inception_features(images, self.device)
        return extract(self.net, images.cpu())

    def fd(self, images: Tensor) -> float:
        return frechet_distance(self._features(images.clamp(-1, 1)), self.ref_feats)

    def score(self, images: Tensor) -> dict:
        images = images.clamp(-1, 1).cpu()
        feats = self._features(images)
        return {
            "fd": frechet_distance(feats, self.ref_feats),  # FID when features == "inception"
            "kid": kernel_distance(feats, self.ref_feats),
            **classifier_scores(self.net, images),
        }


def few_step_fd_callback(
    scorer: Scorer, kind: str, n: int, sigma_max: float, t_mid: float, seed: int, shape: tuple[int, ...]
):
    """Training-time evaluation: FD of 1-step and 2-step samples of the EMA model, fixed noise."""
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))

    def evaluate(ema: Denoiser, step: int) -> dict:
        device = next(ema.parameters()).device
        labels = draw_labels(n, label_dim_of(ema), seed, device=device)
        fds = {}
        for steps in (1, 2):
            gen = torch.Generator(device).manual_seed(seed + 1)
            fds[f"fd_{steps}step"] = scorer.fd(
                sample_few_step(ema, kind, noise.to(device), steps, sigma_max, t_mid, gen, labels)
            )
        return fds

    return evaluate


def generate(
    model: Denoiser,
    meta: dict,
    cfg: dict,
    precond: dict,
    shape: tuple[int, ...],
    device: torch.device,
    labels: Tensor | None,
) -> dict[str, Tensor]:
    """Samples per sampler name: the teacher's ODE sampler, or 1-step and 2-step consistency sampling; ``labels``:
    one class per sample for a class-conditional model."""
    gen = torch.Generator(device).manual_seed(cfg["seed"])
    noise = torch.randn((cfg["num_samples"], *shape), generator=gen, device=device)
    model = model.to(device).eval()
    if meta.get("model_kind") == "diffusion":
        sample = cfg["sample"]
        sigmas = sigma_grid(
            sample["grid"], sample["steps"], sigma_min=precond["sigma_min"], sigma_max=precond["sigma_max"]
        )
        nfe = denoiser_calls(sample["solver"], sigmas)
        return {f"{nfe}nfe": sample_diffusion(conditioned(model, labels), noise, sigmas, sample["solver"])}
    kind = meta.get("model_kind", "consistency")
    return {
        f"{steps}step": sample_few_step(
            model,
            kind,
            noise,
            steps,
            precond["sigma_max"],
            cfg["t_mid"],
            torch.Generator(device).manual_seed(cfg["seed"] + 1),
            labels,
        )
        for steps in (1, 2)
    }


def save_sample_grid(images: Tensor, labels: Tensor | None, label_dim: int, path: Path) -> None:
    """The first 100 samples, or for a class-conditional model a per-class grid (column k: class k)."""
    if labels is None:
        save_grid(images[:100], path, scale=4)
    else:
        save_grid(images[class_grid_order(labels, label_dim, rows=10)], path, nrow=label_dim, scale=4)


def training_cost(meta: dict) -> dict:
    """Images and teacher NFE of the evaluated model's own training stage (headline columns of the runs table)."""
    train = meta.get("train", meta)  # the teacher keeps them under `train`
    return {k: train[k] for k in ("images", "teacher_nfe") if k in train}


def run(
    model_dir: str | Path,
    featnet: str | Path,
    cfg: dict,
    data_cfg: dict,
    precond: dict,
    seed: int,
    label: str,
    out_dir: str | Path,
    device: torch.device,
) -> dict:
    """Evaluate one model: scores.json, one grid per sampler, and a record for MLflow."""
    out = Path(out_dir)
    model, meta = load_denoiser(model_dir)
    _, holdout = train_holdout(data_cfg)
    scorer = Scorer(Path(featnet), holdout, cfg["features"], device)
    label_dim = label_dim_of(model)
    labels = draw_labels(cfg["num_samples"], label_dim, cfg["seed"], device=device)
    scores = {}
    for sampler, images in generate(model, meta, cfg, precond, holdout.shape, device, labels).items():
        scores.update({f"{k}_{sampler}": v for k, v in scorer.score(images).items()})
        save_sample_grid(images, labels, label_dim, out / f"grid-{sampler}.png")
    result = {
        "label": label,
        "model": str(model_dir),
        "model_kind": meta.get("model_kind"),
        "num_samples": cfg["num_samples"],
        "reference_count": len(holdout),
        **scores,
    }
    atomic_write_json(out / "scores.json", result)
    write_record(
        out,
        stage="evaluate",
        run_name=f"eval/{label}",
        params={"label": label, "t_mid": cfg["t_mid"], "features": cfg["features"], "num_samples": cfg["num_samples"]},
        tags={**meta.get("tags", {}), "label": label},
        metrics={**scores, **training_cost(meta)},
        artifacts=sorted(p.name for p in out.glob("grid-*.png")),
    )
    return result
