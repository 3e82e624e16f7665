"""The one training loop shared by every trainer (teacher, CMT, ECT, ECD, MeanFlow, the feature net).

``fit`` runs an objective's ``loss(model, step, generator)`` under an optimiser, an EMA and an LR
schedule, with: a progress bar (loss, images/s); periodic resume checkpoints in a work folder that
is *not* a declared workflow output (a rerun after a kill continues from the last one); atomic
writes; gradient hygiene (NaN -> 0, +-inf -> +-1e5, as the authors); a stop with a message
naming the step when the loss itself is NaN/inf, leaving the last good checkpoint in place; and, on SIGTERM or
SIGUSR1 (SLURM's warning before a walltime kill, ``scancel``, preemption), a checkpoint of the step reached and an
exit with ``cmt.training.preemption.Preempted``, so the retried job continues from there.

Launched as N processes (``cmt.training.parallel``), each computes its share of the global batch, gradients are averaged
over the processes after the backward pass, so weights, optimiser state and EMA stay identical on every rank;
only rank 0 evaluates and writes checkpoints. The ``compute`` section's fast paths (bf16 autocast of the network,
channels_last, torch.compile, fused or foreach optimiser kernels, foreach EMA, loss read back every k steps) are
switches of ``Compute``.
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

from cmt.config import fill_defaults, load_schema
from cmt.errors import BadInput, CmtError
from cmt.formats.atomic import atomic_write_bytes, remove_stale_temporaries
from cmt.seeds import derived_seed
from cmt.training import parallel
from cmt.training.preemption import Preempted, StopRequest

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
    """``auto`` -> CUDA when available, else CPU; otherwise the named device (with several processes on CUDA, this
    process's GPU)."""
    return parallel.local_device(name)


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # config compute.precision -> the network's autocast dtype
OPTIMIZER_KERNELS = ("auto", "loop", "foreach", "fused")


@dataclass(frozen=True)
class Compute:
    """How a trainer runs, not what it computes (config ``compute``, described in the schema)."""

    precision: str  # fp32 | bf16: autocast of the network only; loss, EMA and solver arithmetic stay fp32
    channels_last: bool
    compile: bool  # torch.compile of the network
    optimizer_kernel: str  # auto (torch's choice) | loop | foreach | fused
    ema_foreach: bool
    sync_every: int  # read the loss back (and check it is finite) every k steps
    teacher_precision: str  # online trajectories' teacher: fp32 | bf16

    @classmethod
    def from_dict(cls, d: dict | None = None) -> "Compute":
        """From a config ``compute`` section; absent keys (all, for ``None``) take the schema's defaults."""
        schema = load_schema()
        full = fill_defaults(dict(d or {}), schema["properties"]["compute"], schema)
        return cls(**{k: full[k] for k in cls.__dataclass_fields__})

    def params(self) -> dict:
        """The switches as a run's params (``compute.<name>``), plus the process count."""
        return {**{f"compute.{k}": getattr(self, k) for k in self.__dataclass_fields__}, "processes": parallel.world()}


def set_precision(model: nn.Module, precision: str) -> None:
    """Autocast dtype of every preconditioned network in ``model`` (``Denoiser.amp_dtype``); others run fp32."""
    if precision not in AMP_DTYPES:
        raise BadInput(f"unknown compute.precision {precision!r}; valid: {', '.join(AMP_DTYPES)}")
    for module in model.modules():
        if hasattr(module, "amp_dtype"):
            module.amp_dtype = AMP_DTYPES[precision]


def prepare_model(model: nn.Module, compute: Compute) -> None:
    """The network's fast paths, in place (parameters stay the same objects, so the optimiser keeps them)."""
    set_precision(model, compute.precision)
    if compute.channels_last:
        model.to(memory_format=torch.channels_last)
    if compute.compile:
        import torch._inductor.config as inductor

        inductor.fallback_random = True  # dropout draws from torch's RNG, so fork_rng replays the mask (ECT)
        model.compile()


@dataclass(frozen=True)
class LoopConfig:
    """The loop's settings, read from a validated config section (defaults: the schema's ``$defs/loop``)."""

    iterations: int
    batch_size: int
    lr: float
    optimizer: str  # adam | radam | sgd
    betas: tuple[float, float]
    lr_schedule: str  # constant | linear_decay | step
    warmup_iterations: int
    checkpoint_every: int
    eval_every: int
    ema_beta: float | None = None  # fixed per-step EMA decay (CMT, ECT); the sections that have it set it
    ema_halflife_images: float | None = None  # EDM's ramped half-life EMA (teacher)
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0
    lr_step_every: int | None = None  # lr_schedule step
    lr_step_gamma: float = 0.1

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def ema_beta_halflife(batch_size: int, images_seen: int, halflife_images: float, rampup_ratio: float = 0.05) -> float:
    """EDM's EMA decay per step: beta = 0.5^(batch / half-life), half-life ramped up to ratio * images seen."""
    halflife = min(halflife_images, images_seen * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


def learning_rate(cfg: LoopConfig, step: int) -> float:
    """Linear warm-up (EDM), then constant, linear decay to 0 over the run (CMT, method.md 7) or a step decay
    (×gamma every ``lr_step_every`` iterations: torchvision's ImageNet recipe, the latent LPIPS backbone's)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_iterations, 1))
    if cfg.lr_schedule == "linear_decay":
        lr *= max(0.0, 1 - step / cfg.iterations)
    if cfg.lr_schedule == "step":
        if cfg.lr_step_every is None:
            raise BadInput("lr_schedule step needs lr_step_every (iterations between decays)")
        lr *= cfg.lr_step_gamma ** (step // cfg.lr_step_every)
    return lr


def ema_decay(cfg: LoopConfig, step: int) -> float:
    if cfg.ema_beta is not None:
        return cfg.ema_beta
    if cfg.ema_halflife_images is not None:
        return ema_beta_halflife(cfg.batch_size, (step + 1) * cfg.batch_size, cfg.ema_halflife_images)
    raise ValueError("LoopConfig needs ema_beta or ema_halflife_images")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float, foreach: bool = True) -> None:
    """ema <- beta ema + (1 - beta) model, in one foreach call or tensor by tensor; buffers copied."""
    targets, sources = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if foreach:
        torch._foreach_lerp_(targets, sources, 1 - beta)
    else:
        for e, p in zip(targets, sources):
            e.lerp_(p, 1 - beta)
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


def make_optimizer(cfg: LoopConfig, params, kernel: str = "auto") -> torch.optim.Optimizer:
    """Adam or RAdam with the loop's betas, or SGD with its momentum, all with its weight decay; ``kernel``
    (compute.optimizer_kernel) picks torch's implementation."""
    optimizers = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "sgd": torch.optim.SGD}
    if cfg.optimizer not in optimizers:
        raise BadInput(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(optimizers)}")
    if kernel not in OPTIMIZER_KERNELS:
        raise BadInput(f"unknown compute.optimizer_kernel {kernel!r}; valid: {', '.join(OPTIMIZER_KERNELS)}")
    if kernel == "fused" and cfg.optimizer != "adam":
        raise BadInput(f"compute.optimizer_kernel 'fused' exists for adam only, not {cfg.optimizer!r}")
    options = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}.get(kernel, {})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **options)
    return optimizers[cfg.optimizer](
        params, lr=cfg.lr, betas=cfg.betas, eps=1e-8, weight_decay=cfg.weight_decay, **options
    )


class NonFiniteLoss(CmtError, RuntimeError):
    """Training produced NaN or inf; the message names the step and the checkpoint kept."""


@dataclass
class FitResult:
    ema: nn.Module
    history: list[dict]
    wall_seconds: float  # all attempts together (the interrupted ones up to their last checkpoint)
    resumed_from: int
    replica_spread: float = 0.0  # several processes: how far the ranks' weights drifted apart (cmt.training.parallel)


@dataclass(frozen=True)
class FitOptions:
    """What a run adds to the plain loop: ``evaluate(ema, step)`` along training (rank 0), a ``fingerprint`` of its
    settings (a resume checkpoint of other settings is not used), the objective's own resumable state (``extra``) and
    the fast paths (``compute``; default: none)."""

    evaluate: EvalFn | None = None
    fingerprint: str = ""
    extra: Stateful | None = None
    compute: Compute | None = None


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    cfg: LoopConfig,
    work_dir: str | Path,
    desc: str,
    seed: int,
    options: FitOptions | None = None,
) -> FitResult:
    """Train ``model`` in place; returns its EMA copy and the metric history (one dict per logged step).

    Any process count resumes any checkpoint in ``work_dir``: everything in it is the same on every rank.
    """
    options = options or FitOptions()
    compute = options.compute or Compute.from_dict()
    work = Path(work_dir)
    model.train()
    parallel.broadcast_module(model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(cfg, model.parameters(), compute.optimizer_kernel)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # global-batch draws
    torch.manual_seed(_rank_seed(seed, 0))  # dropout: each rank its own stream
    train_state = _TrainState(model, ema, optimizer, generator, [], options.fingerprint, options.extra)
    start = _resume(train_state, work / RESUME_FILE, desc, seed)
    prepare_model(model, compute)
    evaluate = options.evaluate if parallel.is_main() and cfg.eval_every else None
    if evaluate is not None and start == 0:  # the initial weights: where FD curves start
        train_state.history.append({"step": 0, "images": 0, **evaluate(ema, 0)})
        model.train()
    log = _LossLog(cfg, desc, work / RESUME_FILE, train_state.history, start)
    with StopRequest() as stop:
        loop = _Loop(train_state, loss_fn, cfg, compute, log, stop, evaluate)
        for step in log.bar:
            loop.step(step)
    log.bar.close()
    spread = parallel.replica_spread(model, ema)
    if spread:
        _say(f"{desc}: the {parallel.world()} replicas differ by up to {spread:.3g} (they should agree exactly)")
    return FitResult(ema, train_state.history, train_state.seconds + log.seconds(), start, spread)


def _resume(state: "_TrainState", checkpoint: Path, desc: str, seed: int) -> int:
    """The step a run continues from: a checkpoint of these settings, else 0 (a stale ``.part`` is removed)."""
    if parallel.is_main():
        for stale in remove_stale_temporaries(checkpoint):
            print(f"{desc}: removed {stale}, a checkpoint write cut short", file=sys.stderr)
    start = state.resume(checkpoint)
    if start:
        if not parallel.is_main():  # rank 0 continues the RNG state it saved
            torch.manual_seed(_rank_seed(seed, start))
        _say(f"{desc}: resumed from step {start} (checkpoint {checkpoint})")
    return start


@dataclass
class _Loop:
    """One run's optimiser steps: what every step reads."""

    state: "_TrainState"
    loss_fn: LossFn
    cfg: LoopConfig
    compute: Compute
    log: "_LossLog"
    stop: StopRequest
    evaluate: EvalFn | None

    def step(self, step: int) -> None:
        """One optimiser step: the loss, the host sync when due (non-finite losses, signals), the averaged and cleaned
        gradients, the update, the EMA, then evaluation and checkpoint when due; raises ``Preempted`` on a signal."""
        state, cfg, log = self.state, self.cfg, self.log
        model, optimizer = state.model, state.optimizer
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        before_training_step(model)
        loss = self.loss_fn(model, step, state.generator)
        done = step + 1
        last = done == cfg.iterations
        evaluating = self.evaluate is not None and (done % cfg.eval_every == 0 or last)
        saving = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and not last
        stopping = False
        log.add(step, loss.detach(), optimizer.param_groups[0]["lr"])
        if done % self.compute.sync_every == 0 or last or evaluating or saving:
            # host sync: stops at a non-finite loss before this step updates the weights; every rank learns whether
            # any of them was signalled, so all stop after the same step
            stopping = log.flush(self.stop.requested is not None) and not last
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parallel.average_gradients(model)
        clean_gradients(model)
        optimizer.step()
        ema_update(state.ema, model, ema_decay(cfg, step), self.compute.ema_foreach)
        if evaluating:
            state.history.append({"step": done, "images": done * cfg.batch_size, **self.evaluate(state.ema, done)})
            model.train()
        if parallel.is_main() and (saving or stopping):
            atomic_write_bytes(log.checkpoint, state.to_bytes(done, log.seconds()))
        if stopping:
            parallel.barrier()  # the checkpoint is on disk before any process exits
            log.bar.close()
            raise Preempted(f"{log.desc}: stopped by a signal after step {done}; checkpoint {log.checkpoint}")


def _rank_seed(seed: int, step: int) -> int:
    """Torch's global RNG (dropout) of this rank: ``seed`` itself on rank 0 from the start, as a single process."""
    if parallel.rank() == 0 and step == 0:
        return seed
    return derived_seed(seed, f"rank/{parallel.rank()}/step/{step}")


def _say(message: str) -> None:
    if parallel.is_main():
        print(message, file=sys.stderr)


class _LossLog:
    """The losses of the steps since the last host sync: read back together, averaged over the processes, checked
    finite (a stop names the step) and appended to the history; the progress bar shows loss and images/s."""

    def __init__(self, cfg: LoopConfig, desc: str, checkpoint: Path, history: list[dict], start: int):
        self.cfg, self.desc, self.checkpoint, self.history, self.start = cfg, desc, checkpoint, history, start
        self.pending: list[tuple[int, Tensor, float]] = []
        self.t0 = time.perf_counter()
        self.bar = tqdm(
            range(start, cfg.iterations),
            desc=desc,
            initial=start,
            total=cfg.iterations,
            mininterval=1.0,
            disable=not parallel.is_main(),
        )

    def add(self, step: int, loss: Tensor, lr: float) -> None:
        self.pending.append((step, loss.float(), lr))

    def flush(self, stop: bool = False) -> bool:
        """Read the pending losses back; returns whether any process asked to stop (``stop`` is this one's wish)."""
        losses = [loss for _, loss, _ in self.pending]
        *values, stops = parallel.average(torch.stack([*losses, torch.full_like(losses[0], float(stop))])).tolist()
        for (step, _, lr), value in zip(self.pending, values):
            if not math.isfinite(value):
                kept = (
                    f"last good checkpoint kept at {self.checkpoint}"
                    if self.checkpoint.exists()
                    else "no checkpoint was written yet"
                )
                raise NonFiniteLoss(f"loss is {value} at step {step} (lr {lr:.3g}); training stopped ({kept})")
            images = (step + 1) * self.cfg.batch_size
            self.history.append({"step": step + 1, "loss": value, "lr": lr, "images": images})
        done = self.pending[-1][0] + 1
        rate = (done - self.start) * self.cfg.batch_size / max(self.seconds(), 1e-9)
        self.bar.set_postfix(loss=f"{values[-1]:.4g}", img_s=f"{rate:.0f}", refresh=False)
        self.pending = []
        return stops > 0

    def seconds(self) -> float:
        """Wall time of this process's part of the run (since start or resume)."""
        return time.perf_counter() - self.t0


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
    seconds: float = 0.0  # training wall time of the attempts before a resume

    def to_bytes(self, step: int, seconds: float) -> bytes:
        """The checkpoint after ``step`` steps, ``seconds`` of them spent since this attempt started."""
        state = {
            "step": step,
            "seconds": self.seconds + seconds,
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
        self.seconds = float(state.get("seconds", 0.0))
        return int(state["step"])


def _damaged(path: Path, err: Exception) -> BadInput:
    """A resume checkpoint that cannot be read: kept, and named, for the user to delete (a deliberate restart)."""
    return BadInput(f"{path}: cannot resume from this checkpoint ({err}); delete it to start this job over")


def clear_resume(work_dir: str | Path) -> None:
    """Remove the resume checkpoint once the final outputs are written."""
    (Path(work_dir) / RESUME_FILE).unlink(missing_ok=True)
