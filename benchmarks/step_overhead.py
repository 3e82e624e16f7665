"""What the shared machinery costs on top of plain PyTorch (issue 12, CPU):

* a full trainer step (``cmt.training.loop.fit``: LR schedule, gradient hygiene, EMA, history, progress bar) against a
  bare loop with the same network, ECT loss and RAdam optimiser (target <= 1.05);
* ``sample_trajectory`` over 16 DPM-Solver++ 3M steps against 16 bare denoiser calls (target <= 1.03).

    .venv/bin/python benchmarks/step_overhead.py [--steps 40] [--repeats 5] [--threads 2]

A and B alternate, repeats give medians; nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from cmt.config import resolve
from cmt.data.datasets import load_digits
from cmt.nets import build_network, network_config
from cmt.numerics.precond import Denoiser
from cmt.numerics.solvers import logsnr_sigmas, sample_trajectory
from cmt.objectives import registry
from cmt.objectives.base import Context
from cmt.stages.posttrain.runner import make_loss
from cmt.training.loop import LoopConfig, fit, make_optimizer

CPU = torch.device("cpu")


def trainer_step_ratio(steps: int, repeats: int) -> tuple[float, float]:
    """(median seconds per step of fit, of the bare loop)."""
    cfg = resolve({"name": "bench"}, "bench")
    ect = {**cfg["posttrain"]["ect"], "iterations": steps, "checkpoint_every": 0, "eval_every": 0}
    data = load_digits()
    context = Context(cfg["precond"]["sigma_min"], cfg["precond"]["sigma_max"], data.shape, CPU)
    loss_fn, _ = make_loss(registry.method("posttrain", "ect"), ect, data, 0, context, 0, cfg["data"]["loader"])
    torch.manual_seed(0)
    template = Denoiser(build_network(network_config(cfg["network"])))
    loop = LoopConfig.from_dict(ect)

    def full() -> float:
        model = copy.deepcopy(template)
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            fit(model, loss_fn, loop, work, desc="fit", seed=0)
            return (time.perf_counter() - start) / steps

    def bare() -> float:
        model = copy.deepcopy(template).train()
        optimizer = make_optimizer(loop, model.parameters())
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for step in range(steps):
            loss = loss_fn(model, step, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps

    times = {"full": [], "bare": []}
    for _ in range(repeats):
        times["full"].append(full())
        times["bare"].append(bare())
    return statistics.median(times["full"]), statistics.median(times["bare"])


@torch.no_grad()
def trajectory_ratio(repeats: int, batch: int = 128) -> tuple[float, float]:
    """(median seconds of a 16-step dpmpp3m_legacy trajectory, of 16 bare denoiser calls)."""
    torch.manual_seed(0)
    teacher = Denoiser(build_network(network_config({"preset": "digits-tiny"}))).eval()
    sigmas = logsnr_sigmas(16, 0.002, 80.0).float()
    x = torch.randn(batch, 1, 8, 8) * 80

    def solve() -> float:
        start = time.perf_counter()
        sample_trajectory(teacher, x, sigmas, "dpmpp3m_legacy")
        return time.perf_counter() - start

    def bare() -> float:
        start = time.perf_counter()
        for sigma in sigmas[:-1]:
            teacher(x, sigma.expand(batch))
        return time.perf_counter() - start

    times = {"solve": [], "bare": []}
    for _ in range(repeats):
        times["solve"].append(solve())
        times["bare"].append(bare())
    return statistics.median(times["solve"]), statistics.median(times["bare"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full, bare = trainer_step_ratio(args.steps, args.repeats)
    print(f"trainer step: fit {1e3 * full:.1f} ms, bare loop {1e3 * bare:.1f} ms", end=" ")
    print(f"ratio {full / bare:.3f} (target <= 1.05)")
    solve, calls = trajectory_ratio(args.repeats)
    print(f"16-step trajectory: {1e3 * solve:.1f} ms, 16 bare calls {1e3 * calls:.1f} ms", end=" ")
    print(f"ratio {solve / calls:.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
