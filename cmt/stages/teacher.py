"""EDM diffusion teacher: training objective and trainer (Karras et al. 2022, 'EDM')."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from cmt.checkpoints import atomic_write_json, git_commit, save_denoiser
from cmt.config import config_hash
from cmt.data import ImageDataset, load_dataset, split
from cmt.images import save_grid
from cmt.nets import build_unet, count_parameters, network_config
from cmt.plots import save_loss_curve
from cmt.precond import Denoiser, edm_loss_weight
from cmt.sampling import sample_diffusion
from cmt.solvers import sigma_grid
from cmt.train import FitResult, LoopConfig, clear_resume, fit, resolve_device

DEFAULTS = {"warmup_iterations": 200, "ema_halflife_images": 50_000, "p_mean": -1.2, "p_std": 1.2}


def edm_loss(denoiser: Denoiser, images: Tensor, p_mean: float, p_std: float,
             generator: torch.Generator | None = None) -> Tensor:
    """EDM loss: lambda(sigma) ||D(y + sigma n, sigma) - y||^2, ln sigma ~ N(p_mean, p_std^2) (EDM eq. 2, 8).

    Per-sample sum over pixels, mean over the batch (numerics.md 2.2).
    """
    b = images.shape[0]
    sigma = (torch.randn(b, generator=generator, device=images.device) * p_std + p_mean).exp()
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    denoised = denoiser(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma)
    per_sample = (denoised - images).square().flatten(1).sum(1)
    return (edm_loss_weight(sigma) * per_sample).mean()


def build_denoiser(network: dict, precond: dict) -> Denoiser:
    """Fresh EDM-preconditioned denoiser from the config's ``network`` and ``precond`` sections."""
    net = build_unet(network_config(network))
    return Denoiser(net, sigma_data=precond["sigma_data"], sigma_min=precond["sigma_min"], mode="edm")


def train_teacher(denoiser: Denoiser, train_set: ImageDataset, cfg: dict, seed: int, device: torch.device,
                  work_dir: str | Path) -> FitResult:
    """EDM training: Adam, linear LR warm-up, EDM's ramped half-life EMA; resumable from ``work_dir``."""
    cfg = {**DEFAULTS, **cfg}
    loop = LoopConfig.from_dict({**cfg, "optimizer": "adam"})
    images = train_set.images.to(device)
    pixels = images[0].numel()

    def loss_fn(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
        idx = torch.randint(len(images), (loop.batch_size,), generator=gen, device=device)
        return edm_loss(model, images[idx], cfg["p_mean"], cfg["p_std"], gen) / pixels  # logged per pixel, as EDM

    return fit(denoiser.to(device), loss_fn, loop, work_dir, desc="teacher", seed=seed)


def sample_grid_images(denoiser: Denoiser, sampling: dict, precond: dict, seed: int, shape: tuple[int, ...],
                       device: torch.device) -> Tensor:
    """``sampling.num_samples`` teacher samples with the configured solver and grid (eval mode, no grad)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn((sampling["num_samples"], *shape), generator=gen, device=device)
    sigmas = sigma_grid(sampling["grid"], sampling["steps"], sigma_min=precond["sigma_min"],
                        sigma_max=precond["sigma_max"])
    return sample_diffusion(denoiser.eval(), noise, sigmas, sampling["solver"])


def run(cfg: dict, out_dir: str | Path, work_dir: str | Path) -> dict:
    """Train the teacher on the configured data, write checkpoint, sample grid and loss curve to ``out_dir``."""
    out = Path(out_dir)
    device = resolve_device(cfg["device"])
    train_set, _ = split(load_dataset(cfg["data"]), cfg["data"]["holdout_fraction"], cfg["seed"])
    denoiser = build_denoiser(cfg["network"], cfg["precond"])
    result = train_teacher(denoiser, train_set, cfg["teacher"]["train"], cfg["seed"], device, work_dir)
    ema = result.ema
    samples = sample_grid_images(ema, cfg["sampling"], cfg["precond"], cfg["seed"] + 1, train_set.shape, device)
    save_grid(samples, out / "samples.png", scale=4)
    losses = [h["loss"] for h in result.history if "loss" in h]
    save_loss_curve(losses, out / "loss.png", title="EDM teacher loss (per pixel)")
    meta = {
        "stage": "teacher",
        "source": "train",
        "data": {"name": train_set.name, "shape": list(train_set.shape), "count": len(train_set)},
        "config": {k: cfg[k] for k in ("data", "network", "precond", "teacher", "seed")},
        "config_hash": config_hash({k: cfg[k] for k in ("data", "network", "precond", "teacher", "seed")}),
        "git_commit": git_commit(),
        "parameters": count_parameters(ema),
        "train": {"iterations": len(losses), "images_seen": len(losses) * cfg["teacher"]["train"]["batch_size"],
                  "wall_seconds": result.wall_seconds, "resumed_from": result.resumed_from,
                  "final_loss": sum(losses[-50:]) / len(losses[-50:])},
    }
    save_denoiser(out, ema.cpu(), meta)
    atomic_write_json(out / "train_log.json", {"loss": losses})
    clear_resume(work_dir)
    return meta
