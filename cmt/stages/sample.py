"""The ``sample`` verb: images from any of our checkpoints with its model kind's sampler, drawn as ``evaluate`` draws
them (sample i's noise, re-noising draw and label fixed by ``evaluate.seed`` and i), written as a PNG grid, a folder
of PNGs or an ``.npz`` in the format of ADM's evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cmt.data.pixels import sample_decoder
from cmt.formats.atomic import atomic_write_bytes, writing
from cmt.formats.checkpoint_import import load_any
from cmt.formats.images import png_bytes, tile, to_uint8
from cmt.objectives.registry import MODEL_KINDS
from cmt.sampling.samplers import make_sampler
from cmt.stages.evaluate import sample_batches, sampler_settings
from cmt.teachers import load_model


@dataclass(frozen=True)
class SampleJob:
    """One ``cmt sample`` call: the checkpoint, the step count (None: the kind's default), how many samples, where."""

    checkpoint: Path
    steps: int | None
    num: int
    out: Path
    device: torch.device


def model_kind(meta: dict) -> str:
    """The kind a checkpoint records; a network pickle converted on the fly is EDM's or EDM2's diffusion model."""
    if "model_kind" in meta:
        return meta["model_kind"]
    return "diffusion" if meta["converted_from"]["format"].endswith("pickle") else "consistency"


def default_steps(kind: str, config: dict) -> int:
    """Steps when none are asked for: the teacher's configured ODE steps, else the kind's fewest evaluation steps."""
    return config["teacher"]["sample"]["steps"] if kind == "diffusion" else MODEL_KINDS[kind].eval_steps[0]


def run(job: SampleJob, config: dict) -> dict:
    """Draw ``job.num`` samples in batches of ``evaluate.batch_size`` with a progress bar and write them to ``job.out``
    (``.npz``: ``arr_0`` uint8 NHWC and, for a class-conditional model, ``arr_1`` labels; ``.png``: one grid; else a
    folder of ``000000.png`` ...); returns what was written."""
    model, meta = load_model(job.checkpoint) if Path(job.checkpoint).is_dir() else load_any(job.checkpoint)
    kind = model_kind(meta)
    steps = job.steps or default_steps(kind, config)
    evaluate = {**config["evaluate"], "sample": config["teacher"]["sample"]}
    sampler = make_sampler(model.to(job.device).eval(), kind, steps, sampler_settings(evaluate, config["precond"]))
    draw = {"num_samples": job.num, "batch_size": evaluate["batch_size"], "seed": evaluate["seed"]}
    images, labels = [], []
    decode = sample_decoder(config["data"], job.device)
    batches = sample_batches(model, {"samples": sampler}, draw, model.model.cfg.image_shape, job.device, decode)
    with tqdm(total=job.num, desc=f"sample {kind} {steps}-step", unit="img") as bar:
        for _, batch, batch_labels in batches:
            images.append(to_uint8(batch))
            labels.append(None if batch_labels is None else batch_labels.cpu().numpy())
            bar.update(len(batch))
    pixels = np.concatenate(images)
    classes = None if labels[0] is None else np.concatenate(labels)
    write_samples(job.out, pixels, classes)
    return {"checkpoint": str(job.checkpoint), "model_kind": kind, "steps": steps, "count": len(pixels)}


def write_samples(out: Path, pixels: np.ndarray, labels: np.ndarray | None) -> None:
    """uint8 NHWC samples as an ``.npz`` (labels as ``arr_1``), one ``.png`` grid in index order, or a folder of PNGs;
    every file written atomically."""
    if out.suffix == ".npz":
        with writing(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, arr_0=pixels, **({} if labels is None else {"arr_1": labels}))
    elif out.suffix == ".png":
        atomic_write_bytes(out, png_bytes(tile(pixels)))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(pixels):
            atomic_write_bytes(out / f"{i:06d}.png", png_bytes(image))
