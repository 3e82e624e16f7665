"""The one training loop shared by every trainer (teacher, CMT, ECT, ...).

``fit`` runs an objective's ``loss(model, step, generator)`` under an optimiser, an EMA and an LR
schedule, with: a progress bar (loss, images/s); periodic resume checkpoints in a work folder that
is *not* a declared workflow output (a rerun after a kill continues from the last one); atomic
writes; gradient hygiene (NaN -> 0, +-inf -> +-1e5, as the authors); and a stop with a message
naming the step when the loss itself is NaN/inf, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import copy
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cmt.atomic import atomic_write_bytes, remove_stale_temporaries

RESUME_FILE = "resume.pt"

LossFn = Callable[[nn.Module, int, torch.Generator], Tensor]
EvalFn = Callable[[nn.Module, int], dict]


class Stateful(Protocol):
    """State of an objective that a resumed run must get back (e.g. which trajectories it has seen)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels for this process (config ``deterministic``), or torch's fastest ones.

    On: ``torch.use_deterministic_algorithms`` (CUDA convolutions, scatter/index adds and cumsum switch to
    deterministic kernels; an op with none warns instead of stopping the run), no cuDNN autotuning, and
    cuBLAS with a fixed workspace, whose environment variable must be set before the first CUDA matmul
    (PyTorch notes "Reproducibility").  CPU kernels are deterministic for a fixed thread count either way.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class LoopConfig:
    """The loop's settings, read from a validated config section (defaults: the schema's ``$defs/loop``)."""

    iterations: int
    batch_size: int
    lr: float
    optimizer: str  # adam | radam
    betas: tuple[float, float]
    lr_schedule: str  # constant | linear_decay
    warmup_iterations: int
    checkpoint_every: int
    eval_every: int
    ema_beta: float | None = None  # fixed per-step EMA decay (CMT, ECT); the sections that have it set it
    ema_halflife_images: float | None = None  # EDM's ramped half-life EMA (teacher)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def ema_beta_halflife(batch_size: int, images_seen: int, halflife_images: float, rampup_ratio: float = 0.05) -> float:
    """EDM's EMA decay per step: beta = 0.5^(batch / half-life), half-life ramped up to ratio * images seen."""
    halflife = min(halflife_images, images_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


def learning_rate(cfg: LoopConfig, step: int) -> float:
    """Linear warm-up (EDM), then constant or linear decay to 0 over the run (CMT, method.md 7)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_iterations, 1))
    if cfg.lr_schedule == "linear_decay":
        lr *= max(0.0, 1 - step / cfg.iterations)
    return lr


def ema_decay(cfg: LoopConfig, step: int) -> float:
    if cfg.ema_beta is not None:
        return cfg.ema_beta
    if cfg.ema_halflife_images is not None:
        return ema_beta_halflife(cfg.batch_size, (step + 1) * cfg.batch_size, cfg.ema_halflife_images)
    raise ValueError("LoopConfig needs ema_beta or ema_halflife_images")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - beta)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def before_training_step(model: nn.Module) -> None:
    """What a network does to its stored weights before each training step (EDM2's forced weight normalisation)."""
    for module in model.modules():
        hook = getattr(module, "before_training_step", None)
        if hook is not None:
            hook()


def clean_gradients(model: nn.Module) -> None:
    """NaN -> 0, +-inf -> +-1e5 in every gradient (the authors' gradient hygiene, method.md 7)."""
    for p in model.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


def make_optimizer(cfg: LoopConfig, params) -> torch.optim.Optimizer:
    optimizers = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}
    if cfg.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(optimizers)}")
    return optimizers[cfg.optimizer](params, lr=cfg.lr, betas=cfg.betas, eps=1e-8)


class NonFiniteLoss(RuntimeError):
    """Training produced NaN or inf; the message names the step and the checkpoint kept."""


@dataclass
class FitResult:
    ema: nn.Module
    history: list[dict]
    wall_seconds: float
    resumed_from: int


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    cfg: LoopConfig,
    work_dir: str | Path,
    desc: str,
    seed: int,
    evaluate: EvalFn | None = None,
    fingerprint: str = "",
    extra: Stateful | None = None,
) -> FitResult:
    """Train ``model`` in place; returns its EMA copy and the metric history (one dict per logged step).

    A resume checkpoint in ``work_dir`` is used only if it carries the same ``fingerprint`` (a hash of
    the run's configuration): a run whose settings changed starts over instead of resuming.  ``extra``
    is the objective's own state, saved and restored with the checkpoint.
    """
    work = Path(work_dir)
    device = next(model.parameters()).device
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    history: list[dict] = []
    train_state = _TrainState(model, ema, optimizer, generator, history, fingerprint, extra)
    for stale in remove_stale_temporaries(work / RESUME_FILE):
        print(f"{desc}: removed {stale}, a checkpoint write cut short", file=sys.stderr)
    start = train_state.resume(work / RESUME_FILE)
    if start:
        print(f"{desc}: resumed from step {start} (checkpoint {work / RESUME_FILE})", file=sys.stderr)
    if evaluate is not None and cfg.eval_every and start == 0:  # the initial weights: where every FD curve starts
        history.append({"step": 0, "images": 0, **evaluate(ema, 0)})
        model.train()
    images, t0 = 0, time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), desc=desc, initial=start, total=cfg.iterations, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        before_training_step(model)
        loss = loss_fn(model, step, generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            kept = (
                f"last good checkpoint kept at {work / RESUME_FILE}"
                if (work / RESUME_FILE).exists()
                else "no checkpoint was written yet"
            )
            raise NonFiniteLoss(f"{desc}: loss is {value} at step {step}; training stopped ({kept})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clean_gradients(model)
        optimizer.step()
        ema_update(ema, model, ema_decay(cfg, step))
        images += cfg.batch_size
        seconds = time.perf_counter() - t0
        history.append(
            {
                "step": step + 1,
                "loss": value,
                "lr": optimizer.param_groups[0]["lr"],
                "images": (step + 1) * cfg.batch_size,
            }
        )
        bar.set_postfix(loss=f"{value:.4g}", img_s=f"{images / max(seconds, 1e-9):.0f}", refresh=False)
        done = step + 1
        if evaluate is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.iterations):
            history.append({"step": done, "images": done * cfg.batch_size, **evaluate(ema, done)})
            model.train()
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
            atomic_write_bytes(work / RESUME_FILE, train_state.to_bytes(done))
    bar.close()
    return FitResult(ema=ema, history=history, wall_seconds=time.perf_counter() - t0, resumed_from=start)


@dataclass
class _TrainState:
    """Everything a resume checkpoint holds, besides the step."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: list[dict]
    fingerprint: str
    extra: Stateful | None = None

    def to_bytes(self, step: int) -> bytes:
        state = {
            "step": step,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "extra": self.extra.state_dict() if self.extra is not None else {},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def resume(self, path: Path) -> int:
        """Load ``path`` if it exists and was written for these settings; returns the step to continue from."""
        if not path.exists():
            return 0
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any damage to the file means the same thing to the user
            raise _damaged(path, err) from err
        if state.get("fingerprint", "") != self.fingerprint:
            print(f"{path}: written for other settings; starting over", file=sys.stderr)
            return 0
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.extra is not None:
                self.extra.load_state_dict(state["extra"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise _damaged(path, err) from err
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history.extend(state["history"])
        return int(state["step"])


def _damaged(path: Path, err: Exception) -> ValueError:
    """A resume checkpoint that cannot be read: kept, and named, for the user to delete (a deliberate restart)."""
    return ValueError(f"{path}: cannot resume from this checkpoint ({err}); delete it to start this job over")


def clear_resume(work_dir: str | Path) -> None:
    """Remove the resume checkpoint once the final outputs are written."""
    (Path(work_dir) / RESUME_FILE).unlink(missing_ok=True)
