"""What MeanFlow's JVP costs (issue 23, item 7; docs/latent.md 1.3): one MeanFlow training step of our objective
(``cmt.objectives.meanflow.meanflow_loss``: forward + JVP, adaptive loss, backward) against one plain
flow-matching step of the same DiT (forward at r = t, squared error to v, backward), in each mode: ``fp32`` eager
(how MeanFlow trains here), ``bf16`` autocast around the whole step, and ``compile`` (``torch.compile`` of each
step, fp32). Target: at most 1.5x (MeanFlow's JAX code reports about 16 % overhead; eager PyTorch JVPs often cost
2-3x). The FLOP ratio from PyTorch's counter is printed too: it is the bound no kernel speed moves (latent.md 1.4).

    .venv/bin/python benchmarks/meanflow_step.py [--preset dit-s4] [--batch 16] [--modes fp32 bf16 compile]
        [--steps 5] [--repeats 5] [--threads 2]

Per mode A and B alternate, repeats give medians of seconds per step; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from cmt.config import resolve
from cmt.data.labels import bound
from cmt.nets import PRESETS, build_network, count_parameters
from cmt.numerics.precond import Denoiser, fm_range, mean_velocity
from cmt.objectives.meanflow import meanflow_loss

MODES = ("fp32", "bf16", "compile")


def in_mode(step: Callable[[], None], mode: str, device: torch.device | str) -> Callable[[], None]:
    """``step`` as the mode runs it (module docstring)."""
    if mode == "compile":
        return torch.compile(step)
    if mode == "bf16":
        device_type = torch.device(device).type

        def autocast() -> None:
            with torch.autocast(device_type, torch.bfloat16):
                step()

        return autocast
    return step


def steps(
    preset: str, batch: int, device: torch.device | str = "cpu", mode: str = "fp32"
) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(one MeanFlow step, one flow-matching step, parameters) in ``mode`` on a fresh two-time network of ``preset``,
    t over the network's flow-matching range (``fm_range``: [0, 1] for a transformer)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS[preset], second_time=True)
    model = Denoiser(build_network(cfg)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    mf = resolve({"name": "bench"}, "bench")["posttrain"]["meanflow"]
    t_range = fm_range(model.parameterisation, 0.002, 80.0)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, *cfg.image_shape, generator=gen, device=device)
    eye = torch.eye(cfg.label_dim, device=device)
    labels = eye[torch.arange(batch, device=device) % cfg.label_dim] if cfg.label_dim else None
    student = model if labels is None else bound(model, labels)

    def update(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def meanflow() -> None:
        update(meanflow_loss(model, x, gen, mf, t_range, labels))

    def flow_matching() -> None:
        t = torch.rand(batch, generator=gen, device=device).clamp(*t_range)
        eps = torch.randn(x.shape, generator=gen, device=device)
        z = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * eps
        update((mean_velocity(student, z, t, t) - (eps - x)).square().mean())

    return in_mode(meanflow, mode, device), in_mode(flow_matching, mode, device), count_parameters(model)


def step_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one step as PyTorch's FLOP counter sees them (matrix products and convolutions,
    the JVP's tangent products included)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def seconds(step: Callable[[], None], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        step()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dit-s4", choices=[p for p in PRESETS if p.startswith("dit")])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meanflow, flow_matching, params = steps(args.preset, args.batch)
    flops = step_flops(meanflow) / step_flops(flow_matching)
    print(f"{args.preset} ({params / 1e6:.1f} M parameters), batch {args.batch}, {args.threads} threads")
    print(f"FLOP ratio MeanFlow / flow matching (PyTorch's counter): {flops:.2f}")
    print("| mode | MeanFlow step ms | flow-matching step ms | ratio (target <= 1.5) |\n|---|---|---|---|")
    for mode in args.modes:
        meanflow, flow_matching, _ = steps(args.preset, args.batch, mode=mode)
        meanflow(), flow_matching()  # warm-up (and compilation)
        a, b = [], []
        for _ in range(args.repeats):
            a.append(seconds(meanflow, args.steps))
            b.append(seconds(flow_matching, args.steps))
        mf, fm = statistics.median(a), statistics.median(b)
        print(f"| {mode} | {mf * 1000:.0f} | {fm * 1000:.0f} | {mf / fm:.2f} |", flush=True)


if __name__ == "__main__":
    main()
