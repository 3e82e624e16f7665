"""The latent LPIPS backbone stage (docs/latent.md 8.5): train the latent VGG as a classifier of the latent zip's
classes with the authors' recipe (``latent.lpips.train``), or fetch a backbone file; then measure its held-out top-1
accuracy and write the folder ``cmt.latents.lpips.load_backbone`` reads."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from cmt.config import config_hash
from cmt.data.batches import make_batches
from cmt.data.datasets import train_holdout
from cmt.data.labels import dataset_labels
from cmt.data.latent_zip import LatentDataset, LatentFiles
from cmt.errors import BadInput, about
from cmt.formats.fetch import fetch
from cmt.latents.lpips import load_backbone_file, save_backbone
from cmt.latents.vgg import BACKBONES, LatentVGG, accuracy
from cmt.nets import count_parameters
from cmt.report.tracking import write_record
from cmt.stages.latent_job import LatentJob
from cmt.training import parallel
from cmt.training.loop import FitOptions, LoopConfig, fit, resolve_device

ACCURACY_DRAWS_SEED = 1  # the posterior draws the held-out accuracy is measured on
ACCURACY_ROWS = 10000  # at most this many held-out rows (ImageNet trains on all of them: the first rows instead)


def drawn(
    data: LatentDataset | LatentFiles, seed: int, limit: int = ACCURACY_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, labels) of the first ``limit`` rows, one posterior draw each fixed by ``seed``, in the zip's
    convention as training sees them; a streamed zip is read row by row."""
    data = data.subset(torch.arange(min(limit, len(data))))
    noise = torch.randn((len(data), *data.shape), generator=torch.Generator().manual_seed(seed))
    if isinstance(data, LatentDataset):
        return data.draw(torch.arange(len(data)), noise), data.labels
    moments = torch.stack([data[i][0] for i in range(len(data))])
    return data.draws(moments, noise), data.labels


def trained(job: LatentJob, train: LatentDataset | LatentFiles, classes: int) -> tuple[LatentVGG, dict]:
    """The backbone fitted by cross-entropy on posterior draws of the training latents (``latent.lpips.train``)."""
    section = job.latent["lpips"]
    cfg = replace(BACKBONES[section["backbone"]], in_channels=train.shape[0], classes=classes)
    device = resolve_device(job.device)
    with torch.random.fork_rng():
        torch.manual_seed(job.seed)
        model = LatentVGG(cfg).to(device)
    labels = dataset_labels(train.labels, classes, f"latent LPIPS backbone on {train.name}")
    train_cfg = section["train"]
    batches = make_batches(train, labels, train_cfg["batch_size"], job.seed, device, job.data["loader"])

    def loss(net: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        batch = batches(step, gen)
        return F.cross_entropy(net(batch.images), batch.labels.to(device))

    loop = LoopConfig.from_dict(train_cfg)
    options = FitOptions(fingerprint=config_hash({"lpips": section, "classes": classes}), compute=job.compute)
    result = fit(model, loss, loop, job.work_dir, "latent-lpips", job.seed, options)
    facts = {
        "iterations": loop.iterations,
        "final_loss": result.history[-1]["loss"],
        "wall_seconds": result.wall_seconds,
    }
    return result.ema.cpu().eval(), {"train": facts}


def fetched(job: LatentJob) -> tuple[LatentVGG, dict]:
    """A backbone file (``latent.lpips.file``), sha256-checked, its config read from its header."""
    spec = job.latent["lpips"]["file"]
    path = fetch(spec["url"], spec["sha256"], job.work_dir / "backbone-fetch.safetensors")
    return load_backbone_file(path), {"url": spec["url"], "sha256": spec["sha256"]}


def run(job: LatentJob) -> dict:
    """Obtain the backbone, measure its held-out accuracy, write its folder and the job's record."""
    train, holdout = train_holdout(job.data)
    if not isinstance(train, (LatentDataset, LatentFiles)):
        raise BadInput(f"latent.lpips: the backbone trains on a latent zip, not {job.data['source']} data")
    if train.labels is None:
        raise BadInput(f"latent.lpips: {job.data['path']} has no labels for the backbone's classifier")
    classes = int(train.labels.max()) + 1
    with about("latent.lpips"):
        model, origin = fetched(job) if job.latent["lpips"]["source"] == "file" else trained(job, train, classes)
    if not parallel.is_main():
        return {}
    top1 = accuracy(model, *drawn(holdout if len(holdout) else train, ACCURACY_DRAWS_SEED))
    params = count_parameters(model)
    record = {
        "source": job.latent["lpips"]["source"],
        **origin,
        "parameters": params,
        "holdout_top1": top1,
        "classes": classes,
    }
    save_backbone(model, job.out_dir, record)
    write_record(
        job.out_dir,
        stage="latent_lpips",
        run_name="latent-lpips",
        params={**{k: v for k, v in job.latent["lpips"].items() if k != "train"}, "seed": job.seed},
        tags={"label": "latent-lpips"},
        metrics={"holdout_top1": top1, "parameters": params, **origin.get("train", {})},
    )
    name = job.latent["lpips"]["backbone"]
    print(f"latent LPIPS backbone ({name}, {params:,} parameters): held-out top-1 {top1:.3f}")
    return record
