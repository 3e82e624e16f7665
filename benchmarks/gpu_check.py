"""One GPU, one table: what our training costs at CIFAR-10 scale and what the fast paths buy (issue 12).

* DDPM++ (ddpmpp-cifar10, 55.7 M parameters) forward + backward at batch 128 in images/s: fp32, bf16, and
  bf16 + torch.compile + channels_last;
* trajectory generation, 16 NFE of DPM-Solver++ 3M (the paper's teacher solve), in trajectories/s, teacher fp32
  and bf16, with the bf16 trajectories' error against fp32;
* full trainer steps (``cmt.training.loop.fit``: loss, backward, optimiser, EMA) of CMT (online, 8 trajectories x 16
  states), ECT, ECD and MeanFlow at the paper's batch of 128, in fp32 (the authors' setting) and with the fast paths;
* a MeanFlow step (forward + JVP + backward) against a flow-matching step of the same DiT (MF-B/4 at batch 64), in
  fp32 and bf16 autocast: ms, their ratio, and the MeanFlow step's achieved TFLOP/s (FLOPs from PyTorch's counter;
  benchmarks/meanflow_step.py);
* FD_DINOv2's detector (DINOv2 ViT-L/14 on 512 x 512 samples resized to 224, fp32 as EDM2 runs it) in images/s,
  and the GPU-hours of EDM2's protocol, three ranges of 50 000 samples (docs/latent.md 8.7);
* peak GPU memory of every row;
* the projected GPU-hours of the CIFAR-10 paper schedule (300k CMT + 100k ECT iterations, config/paper.yaml) on
  this GPU, for fp32 and for the fast paths.

    python benchmarks/gpu_check.py            # on one H100/H200: under 8 minutes
    python benchmarks/gpu_check.py --quick    # the digits-tiny network on CPU, seconds (run by the tests)

The networks have random weights (timing does not depend on them). CMT's LPIPS-VGG loss needs the VGG-16 trunk in
the torch hub cache; without it the table says so and CMT is timed with the l2 loss. Nothing is written outside a
temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cmt.config import load_config
from cmt.data.datasets import ImageDataset
from cmt.evaluation.dinov2 import DinoVit, VitShape, detector_input
from cmt.formats.pretrained import MissingWeights, require_lpips_trunk
from cmt.nets import add_second_time, build_network, network_config
from cmt.numerics.precond import Denoiser
from cmt.objectives import registry
from cmt.objectives.base import Context
from cmt.objectives.registry import Method
from cmt.sampling.trajectory_sets import (
    OnlineTrajectories,
    TrajectoryBatches,
    precision_error,
    trajectory_section,
    trajectory_spec,
)
from cmt.stages.posttrain.runner import make_loss, method_compute
from cmt.stages.student import set_dropout, student_loss
from cmt.training.loop import Compute, FitOptions, LoopConfig, fit, prepare_model

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"precision": "fp32"}
FAST = {"precision": "bf16", "channels_last": True, "compile": True, "optimizer_kernel": "foreach", "sync_every": 50}


@dataclasses.dataclass
class Setting:
    config: dict  # the resolved config (paper's CIFAR-10, or the embedded default with --quick)
    device: torch.device
    batch: int
    warmup: int  # steps before the clock starts (compilation, cuDNN autotuning)
    steps: int  # timed steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def network(s: Setting, second_time: bool = False) -> Denoiser:
    """The configured network with random weights; the layers EDM initialises at zero or 1e-5 scale get fan-in
    scaled normal weights, so the network's output, and the bf16 error, is not trivially small."""
    torch.manual_seed(0)
    net = Denoiser(build_network(network_config(s.config["network"])))
    if second_time:
        net.model = add_second_time(net.model)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and p.abs().max() < 1e-4:
                p.normal_(0, p[0].numel() ** -0.5)
    return net.to(s.device)


def forward_backward(s: Setting, compute: dict) -> tuple[float, float | None]:
    """Images/s of D(x, sigma) forward + backward at the setting's batch; peak memory."""
    model = network(s).train()
    prepare_model(model, Compute.from_dict(compute))
    shape = model.model.cfg.image_shape
    x = torch.randn(s.batch, *shape, device=s.device)
    sigma = torch.rand(s.batch, device=s.device) * 10 + 0.01
    if compute.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model(x, sigma).square().mean().backward()

    return timed(s, step, s.batch)


def timed(s: Setting, step: Callable[[], None], images: int) -> tuple[float, float | None]:
    for _ in range(s.warmup):
        step()
    synchronize(s.device)
    peak_reset(s.device)
    start = time.perf_counter()
    for _ in range(s.steps):
        step()
    synchronize(s.device)
    return images * s.steps / (time.perf_counter() - start), peak_gib(s.device)


def trajectories(s: Setting, precision: str, data: ImageDataset) -> tuple[float, float | None, float]:
    """Trajectories/s of the 16-NFE teacher solve (one batch of the setting's size); peak memory; error vs fp32."""
    teacher = network(s).eval()
    traj = {**s.config["trajectories"], "sigma_min": 0.002, "sigma_max": 80.0}
    spec = trajectory_spec(traj, teacher.model.cfg.image_shape)
    source = OnlineTrajectories(teacher, spec, data)
    teacher.amp_dtype = torch.bfloat16 if precision == "bf16" else None
    gen = torch.Generator(device=s.device).manual_seed(0)
    rate, peak = timed(s, lambda: source.sample(s.batch, gen), s.batch)
    error = precision_error(teacher, spec, data, torch.bfloat16, n=min(s.batch, 64)) if precision == "bf16" else 0.0
    return rate, peak, error


def objectives(s: Setting, data: ImageDataset, cmt_loss: str) -> dict[str, tuple[Method, dict, Callable]]:
    """name -> (its registry entry, its loop section, a factory of (student, loss)) at the paper's settings: CMT's
    consistency form on online trajectories and every registered post-training method."""
    cfg, device = s.config, s.device
    mid = {**cfg["midtrain"], "loss": cmt_loss, "lpips_resize": None}
    shape = network(s).model.cfg.image_shape

    def context(teacher: Denoiser | None = None) -> Context:
        return Context(cfg["precond"]["sigma_min"], cfg["precond"]["sigma_max"], shape, device, teacher)

    def cmt() -> tuple[Denoiser, Callable]:
        teacher = network(s).eval()
        source = OnlineTrajectories(teacher, trajectory_spec(trajectory_section(cfg), shape), data)
        objective = registry.build(registry.method("midtrain", "consistency"), mid, context())
        per_step = objective.trajectories_per_step(mid["batch_size"], len(source.grid) - 1)
        loss = student_loss(objective, TrajectoryBatches(source, objective, per_step, device))
        return set_dropout(network(s), mid["dropout"]), loss

    def post(entry: Method) -> Callable[[], tuple[Denoiser, Callable]]:
        def build() -> tuple[Denoiser, Callable]:
            section = cfg["posttrain"][entry.name]
            teacher = network(s).eval().requires_grad_(False) if "teacher" in entry.reads else None
            loss, _ = make_loss(entry, section, data, 0, context(teacher), 0, cfg["data"]["loader"])
            student = network(s, second_time=entry.model_kind.second_time)
            return set_dropout(student, section["dropout"]), loss

        return build

    found = {"cmt": (registry.method("midtrain", "consistency"), mid, cmt)}
    for name in registry.names("posttrain"):
        entry = registry.method("posttrain", name)
        found[name] = (entry, cfg["posttrain"][name], post(entry))
    return found


def step_seconds(
    s: Setting, section: dict, build: Callable, compute: Compute, work: Path
) -> tuple[float, float | None]:
    """Seconds per full ``fit`` step (the clock runs from the first step after warm-up to the last); peak memory."""
    student, loss_fn = build()
    marks: dict[int, float] = {}

    def clocked(model: torch.nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        if step in (s.warmup, s.warmup + s.steps - 1):
            synchronize(s.device)
            marks[step] = time.perf_counter()
            if step == s.warmup:
                peak_reset(s.device)
        return loss_fn(model, step, gen)

    loop = LoopConfig.from_dict({**section, "iterations": s.warmup + s.steps, "checkpoint_every": 0, "eval_every": 0})
    fit(student, clocked, loop, work, desc="step", seed=0, options=FitOptions(compute=compute))
    return (marks[s.warmup + s.steps - 1] - marks[s.warmup]) / (s.steps - 1), peak_gib(s.device)


def lpips_available() -> bool:
    try:
        require_lpips_trunk("vgg")
    except MissingWeights:
        return False
    return True


def meanflow_rows(s: Setting, quick: bool) -> list[str]:
    """The MeanFlow step against the flow-matching step of the same DiT, fp32 and bf16 autocast: ms, ratio, achieved
    TFLOP/s."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark that builds both steps
    import meanflow_step

    preset, batch = ("dit-digits-tiny", 8) if quick else ("dit-b4", 64)
    rows = []
    for mode in ("fp32", "bf16"):
        meanflow, flow_matching, params = meanflow_step.steps(preset, batch, s.device, mode)
        ms = {}
        for name, step in (("MeanFlow", meanflow), ("flow matching", flow_matching)):
            flops = meanflow_step.step_flops(step)
            rate, peak = timed(s, step, batch)
            ms[name] = 1e3 * batch / rate
            note = f"{flops / (ms[name] / 1e3) / 1e12:.2f} TFLOP/s"
            rows.append(row(f"{name} step, {preset} batch {batch}, {mode}", f"{ms[name]:.1f} ms", peak, note))
        ratio = ms["MeanFlow"] / ms["flow matching"]
        note = f"{params / 1e6:.1f} M parameters, {mode}"
        rows.append(row(f"MeanFlow / flow-matching step, {mode}", f"{ratio:.2f}x", None, note))
    return rows


def dinov2_row(s: Setting, quick: bool) -> str:
    """Images/s of the FD_DINOv2 features (resize, normalisation, ViT) on uint8 samples, random weights."""
    shape, batch, size = (VitShape(64, 2, 1, 14, 37), 4, 32) if quick else (VitShape(1024, 24, 16, 14, 37), 64, 512)
    vit = DinoVit(shape).to(s.device).eval()
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=s.device)

    @torch.no_grad()
    def step() -> None:
        vit(detector_input(pixels))

    rate, peak = timed(s, step, batch)
    hours = 3 * 50_000 / rate / 3600
    return row(
        f"FD_DINOv2 features, width {shape.width}, {size}px", f"{rate:.0f} img/s", peak, f"3 x 50k: {hours:.2f} h"
    )


def row(name: str, value: str, peak: float | None, note: str = "") -> str:
    memory = f"{peak:.2f}" if peak is not None else "n/a"
    return f"| {name} | {value} | {memory} | {note} |"


def setting(quick: bool) -> Setting:
    """The paper's CIFAR-10 settings on the GPU; with ``quick``, the embedded default on CPU at batch 8 (one
    trajectory a CMT step), two timed steps."""
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    if not quick:
        return Setting(
            load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "cifar10.yaml"), device, 128, 10, 30
        )
    config = load_config(ROOT / "config" / "config.yaml")
    config["midtrain"]["batch_size"] = config["trajectories"]["nfe"]
    for method in registry.names("posttrain"):
        config["posttrain"][method]["batch_size"] = 8
    return Setting(config, device, batch=8, warmup=1, steps=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits-tiny network on CPU, a few steps")
    parser.add_argument("--compile", action="store_true", help="with --quick: compile the fast rows too")
    args = parser.parse_args()
    s = setting(args.quick)
    fast = {**FAST, "compile": not args.quick or args.compile}  # compiling on CPU takes minutes
    shape = network(s).model.cfg.image_shape
    data = ImageDataset(torch.rand(1024, *shape) * 2 - 1, None, "random")
    cmt_loss = "lpips" if lpips_available() and not args.quick else "l2"
    name = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "CPU"
    print(f"## gpu_check: {s.config['network']['preset']} on {name}, batch {s.batch}, torch {torch.__version__}\n")
    print("| measurement | value | peak GiB | note |\n|---|---|---|---|")
    for label, compute in (("fp32", PLAIN), ("bf16", {"precision": "bf16"}), ("bf16+compile+channels_last", fast)):
        rate, peak = forward_backward(s, compute)
        print(row(f"forward+backward {label}", f"{rate:.0f} img/s", peak), flush=True)
    for precision in ("fp32", "bf16"):
        rate, peak, error = trajectories(s, precision, data)
        note = f"error vs fp32 {error:.1e}" if precision == "bf16" else ""
        print(row(f"trajectories 16 NFE, teacher {precision}", f"{rate:.0f} traj/s", peak, note), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        steps = {}
        for method, (entry, section, build) in objectives(s, data, cmt_loss).items():
            for label, compute in (("fp32", PLAIN), ("fast", fast)):
                how = method_compute(entry, Compute.from_dict(compute))
                seconds, peak = step_seconds(s, section, build, how, Path(tmp) / f"{method}-{label}")
                steps[method, label] = seconds
                note = (
                    f"loss {cmt_loss}"
                    if method == "cmt"
                    else ("" if label == "fp32" or not entry.fp32_reason else f"fp32: {entry.fp32_reason}")
                )
                print(row(f"{method} step, {label}", f"{1e3 * seconds:.1f} ms", peak, note), flush=True)
    print("\n".join(meanflow_rows(s, args.quick)), flush=True)
    print(dinov2_row(s, args.quick), flush=True)
    mid, post = s.config["midtrain"]["iterations"], s.config["posttrain"]["ect"]["iterations"]
    for label in ("fp32", "fast"):
        hours = (mid * steps["cmt", label] + post * steps["ect", label]) / 3600
        print(row(f"CIFAR-10 schedule, {label}", f"{hours:.1f} GPU-h", None, f"{mid} CMT + {post} ECT iterations"))
    print(f"\nCMT step speed-up, fast over fp32: {steps['cmt', 'fp32'] / steps['cmt', 'fast']:.2f}x")
    print(f"fast = {fast}")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
    main()
