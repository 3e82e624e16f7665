"""What MeanFlow's JVP costs (issue 23, item 7; docs/latent.md 1.3): one MeanFlow training step of our objective
(``cmt.objectives.meanflow.meanflow_loss``: forward + JVP, adaptive loss, backward) against one plain
flow-matching step of the same DiT (forward at r = t, squared error to v, backward), fp32, in eager PyTorch.
Target: at most 1.5x (MeanFlow's JAX code reports about 16 % overhead; eager PyTorch JVPs often cost 2-3x).

    .venv/bin/python benchmarks/meanflow_step.py [--preset dit-s4] [--batch 16] [--steps 5] [--repeats 5] [--threads 2]

A and B alternate, repeats give medians of seconds per step; nothing is written.
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


def steps(
    preset: str, batch: int, device: torch.device | str = "cpu"
) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(one MeanFlow step, one flow-matching step, parameters) on a fresh two-time network of ``preset``, t over the
    network's flow-matching range (``fm_range``: [0, 1] for a transformer)."""
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

    return meanflow, flow_matching, count_parameters(model)


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
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meanflow, flow_matching, params = steps(args.preset, args.batch)
    meanflow(), flow_matching()  # warm-up
    a, b = [], []
    for _ in range(args.repeats):
        a.append(seconds(meanflow, args.steps))
        b.append(seconds(flow_matching, args.steps))
    mf, fm = statistics.median(a), statistics.median(b)
    print(f"{args.preset} ({params / 1e6:.1f} M parameters), batch {args.batch}, {args.threads} threads, fp32 eager")
    print(
        f"MeanFlow step {mf * 1000:.0f} ms, flow-matching step {fm * 1000:.0f} ms, ratio {mf / fm:.2f} (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
