"""The autoencoder stage (docs/latent.md 4.2): fetch a pinned Hugging Face revision (each file sha256-checked), read
a local folder or cache, or train a small ``AutoencoderKL`` on the training split; then measure its reconstruction
on held-out images and write the folder ``cmt.latents.autoencoder`` loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cmt.config import config_hash
from cmt.data.batches import make_batches
from cmt.data.datasets import Images, train_holdout
from cmt.errors import BadInput, about
from cmt.formats.fetch import fetch, file_sha256
from cmt.formats.pretrained import VAE_FILES, require_vae
from cmt.latents.autoencoder import Autoencoder, read_vae, reconstruction, save_autoencoder, tiny_autoencoder
from cmt.latents.conventions import (
    EDM2_RAW_MEAN,
    EDM2_RAW_STD,
    Convention,
    edm2_convention,
    measured_convention,
    sd_convention,
)
from cmt.report.tracking import write_record
from cmt.stages.latent_job import LatentJob
from cmt.training import parallel
from cmt.training.loop import FitOptions, LoopConfig, fit, resolve_device

RECONSTRUCTION_IMAGES = 512  # held-out images the record's reconstruction error is measured on


def published_convention(name: str, vae: torch.nn.Module) -> Convention:
    """A released autoencoder's constants: its config's ``scaling_factor`` (SD) or EDM2's statistics of
    sd-vae-ft-mse (docs/latent.md 4.1)."""
    channels = int(vae.config.latent_channels)
    if name == "sd":
        return sd_convention(float(vae.config.scaling_factor), channels)
    if channels != len(EDM2_RAW_MEAN):
        raise BadInput(
            f"latent.convention edm2: EDM2's constants are for 4 latent channels, the autoencoder has {channels}"
        )
    return edm2_convention(EDM2_RAW_MEAN, EDM2_RAW_STD)


def fetched_folder(cfg: dict, work_dir: Path) -> tuple[Path, dict]:
    """Every file of ``latent.vae.files`` from <base_url>/<repo>/resolve/<revision>/<file>, sha256-checked."""
    if not cfg["repo"] or not cfg["revision"]:
        raise BadInput("latent.vae: source fetch needs repo and revision (a commit, so the files cannot change)")
    missing = [name for name in VAE_FILES if name not in cfg["files"]]
    if missing:
        raise BadInput(f"latent.vae.files: no sha256 for {missing[0]} (fetch checks every file it downloads)")
    folder = work_dir / "vae-fetch"
    folder.mkdir(parents=True, exist_ok=True)
    for name, sha256 in cfg["files"].items():
        if not (folder / name).is_file() or file_sha256(folder / name) != sha256.lower():
            fetch(
                f"{cfg['base_url'].rstrip('/')}/{cfg['repo']}/resolve/{cfg['revision']}/{name}", sha256, folder / name
            )
    return folder, {"repo": cfg["repo"], "revision": cfg["revision"]}


def trained(cfg: dict, name: str, train: Images, job: LatentJob) -> tuple[Autoencoder, dict]:
    """A small ``AutoencoderKL`` fitted to the training split: squared reconstruction error summed per image plus
    ``kl_weight`` × KL to N(0, I), one posterior draw per image (docs/latent.md 4.2); then the convention's
    constants measured on the training latents."""
    device = resolve_device(job.device)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(job.seed)
        vae = tiny_autoencoder(cfg, train.shape[0]).to(device)
    unit = Convention(name, (1.0,) * cfg["latent_channels"], (0.0,) * cfg["latent_channels"])
    batches = make_batches(train, None, cfg["batch_size"], job.seed, device, job.data["loader"])

    def loss(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        pixels = unit.pixels_in(batches(step, gen).images)
        dist = model.encode(pixels).latent_dist
        z = dist.mean + dist.std * parallel.randn(dist.mean.shape, gen).to(pixels)
        error = (model.decode(z).sample - pixels).square().flatten(1).sum(1)
        return (error + cfg["kl_weight"] * dist.kl()).mean()

    loop = LoopConfig.from_dict(cfg)
    result = fit(vae, loss, loop, job.work_dir, "vae", job.seed, FitOptions(fingerprint=config_hash(cfg)))
    ema = result.ema.cpu().eval()
    with torch.no_grad():
        raw = torch.cat([ema.encode(unit.pixels_in(chunk)).latent_dist.mean for chunk in train.images.split(256)])
    facts = {
        "iterations": loop.iterations,
        "final_loss": result.history[-1]["loss"],
        "wall_seconds": result.wall_seconds,
    }
    return Autoencoder(ema, measured_convention(name, raw)), {"train": facts}


def obtain(job: LatentJob, train: Images) -> tuple[Autoencoder, dict, Path | None]:
    """The job's autoencoder, the facts of where it came from, and the folder of its released files (None: trained)."""
    cfg, name = job.latent["vae"], job.latent["convention"]
    if cfg["source"] == "train":
        with about("latent.vae.train"):
            return *trained(cfg["train"], name, train, job), None
    with about("latent.vae"):
        if cfg["source"] == "fetch":
            folder, origin = fetched_folder(cfg, job.work_dir)
        else:
            folder, origin = require_vae(cfg["path"] or "", cfg["repo"], cfg["revision"]), {"path": str(cfg["path"])}
        vae = read_vae(folder).eval().requires_grad_(False)
    files = {file: file_sha256(folder / file) for file in VAE_FILES}
    return Autoencoder(vae, published_convention(name, vae)), {**origin, "files": files}, folder


def run(job: LatentJob) -> dict:
    """Obtain the autoencoder, measure its reconstruction, write its folder and the job's record."""
    train, holdout = train_holdout(job.data)
    auto, origin, released = obtain(job, train)
    if not parallel.is_main():
        return {}
    if int(auto.vae.config.in_channels) != train.shape[0]:
        raise BadInput(
            f"latent.vae: the autoencoder takes {auto.vae.config.in_channels} channels, the data have {train.shape[0]}"
        )
    check = holdout if len(holdout) else train
    with torch.no_grad():
        error = reconstruction(auto, check.subset(torch.arange(min(len(check), RECONSTRUCTION_IMAGES))).images)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in auto.vae.parameters())
    record = {"source": job.latent["vae"]["source"], **origin, "parameters": params, "reconstruction": error}
    save_autoencoder(auto, job.out_dir, record, released)
    shutil.rmtree(job.work_dir / "vae-fetch", ignore_errors=True)
    metrics = {"reconstruction_mse": error["mse"], "reconstruction_psnr_db": error["psnr_db"], "parameters": params}
    write_record(
        job.out_dir,
        stage="vae",
        run_name="vae",
        params={**job.latent, "seed": job.seed},
        tags={"label": "vae"},
        metrics=metrics,
    )
    print(f"autoencoder ({record['source']}, {params:,} parameters): reconstruction PSNR {error['psnr_db']:.1f} dB")
    return record
