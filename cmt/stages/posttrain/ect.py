"""Easy Consistency Tuning (Geng et al., ICLR 2025) as CMT's post-training (method.md 8.1, numerics.md 8).

Pairs (x_t, x_r) share the noise; the target is the same online network at r under no-grad with
the same dropout mask (RNG replayed); rows with r = 0 use the clean image; weight 1/(t - r).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from cmt.data import train_holdout
from cmt.losses import Distance, make_distance
from cmt.precond import Denoiser
from cmt.stages.student import finish, fit_student, init_student
from cmt.train import LoopConfig, resolve_device

LOOP_DEFAULTS = {"optimizer": "radam", "lr_schedule": "linear_decay", "betas": [0.9, 0.999]}


def ect_r(t: Tensor, q: float, stage: int, k: float = 8.0, b: float = 1.0) -> Tensor:
    """r = max(0, t (1 - q^-(s+1) n(t))), n(t) = 1 + k sigmoid(-b t) (ECT 'sigmoid' mapping; numerics.md 8)."""
    return (t * (1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t)))).clamp_min(0)


def ect_stage(step: int, iterations_per_tick: int, double_ticks: int) -> int:
    """Stage s = floor((completed ticks - 1) / double), 0 before the first tick; double = 0 never advances."""
    ticks = step // iterations_per_tick
    return 0 if double_ticks <= 0 or ticks == 0 else (ticks - 1) // double_ticks


def ect_loss(model: Denoiser, y: Tensor, gen: torch.Generator, cfg: dict, stage: int, distance: Distance) -> Tensor:
    """One ECT minibatch loss (method.md 8.1 steps 1-5)."""
    b = y.shape[0]
    t = (cfg["p_mean"] + cfg["p_std"] * torch.randn(b, generator=gen, device=y.device)).exp()
    r = ect_r(t, cfg["q"], stage, cfg["k"], cfg["b"])
    eps = torch.randn(y.shape, generator=gen, device=y.device)
    view = (-1,) + (1,) * (y.ndim - 1)
    x_t = y + t.reshape(view) * eps
    has_r = r > 0
    r_eval = torch.where(has_r, r, t)  # rows with r = 0 never use the network output
    x_r = y + r_eval.reshape(view) * eps
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    f_t = model(x_t, t)
    torch.set_rng_state(cpu_state)  # replay: same dropout mask for the target pass (numerics.md 8)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    with torch.no_grad():
        f_r = torch.nan_to_num(model(x_r, r_eval), nan=0.0)
    target = torch.where(has_r.reshape(view), f_r, y)
    return (distance(f_t, target) / (t - r)).mean()


def run(
    cfg: dict,
    data_cfg: dict,
    precond: dict,
    seed: int,
    init: str,
    init_dir: str | Path | None,
    teacher_dir: str | Path,
    featnet: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    device_name: str = "cpu",
) -> dict:
    device = resolve_device(device_name)
    train, holdout = train_holdout(data_cfg, seed)
    student, init_meta = init_student(init, init_dir, teacher_dir, cfg["dropout"], precond["boundary_sigma_min"])
    student = student.to(device)
    images = train.images.to(device)
    distance = make_distance(cfg["loss"], pseudo_huber_c_value=cfg.get("pseudo_huber_c"))
    loop = LoopConfig.from_dict({**LOOP_DEFAULTS, **cfg})

    def loss_fn(model: Denoiser, step: int, gen: torch.Generator) -> Tensor:
        y = images[torch.randint(len(images), (loop.batch_size,), generator=gen, device=device)]
        return ect_loss(model, y, gen, cfg, ect_stage(step, cfg["iterations_per_tick"], cfg["double_ticks"]), distance)

    result, last_fd = fit_student(
        student,
        loss_fn,
        loop,
        featnet,
        holdout,
        precond,
        cfg["t_mid"],
        cfg["eval_samples"],
        seed,
        work_dir,
        desc=f"ect[{init}]",
    )
    final = {"images": loop.iterations * loop.batch_size, **last_fd}
    tags = {"label": f"ect-{init}", "method": "ect", "init": init, "init_model": init_meta.get("config_hash", "?")}
    meta = {
        "stage": "posttrain",
        "method": "ect",
        "init": init,
        "init_stage": init_meta.get("stage"),
        "config": cfg,
        **final,
    }
    finish(
        out_dir,
        work_dir,
        result,
        meta,
        precond["sigma_max"],
        cfg["t_mid"],
        f"posttrain/ect-{init}",
        params={**{k: v for k, v in cfg.items() if not isinstance(v, dict)}, "init": init, "seed": seed},
        tags=tags,
        final=final,
    )
    return final
