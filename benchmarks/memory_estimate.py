"""Memory per training job at paper scale, estimated from the code: the parameter state (weights, gradients,
optimiser moments, EMA, teacher) counted exactly, and the activation memory of one training step measured per
sample on the CPU at small batches and projected to the paper's batch of 128 (fp32, as on a GPU without
activation checkpointing).

    .venv/bin/python benchmarks/memory_estimate.py                     # CIFAR-10 DDPM++ (ddpmpp-cifar10)
    .venv/bin/python benchmarks/memory_estimate.py --preset ddpmpp-64  # FFHQ-64 / AFHQv2-64
    .venv/bin/python benchmarks/memory_estimate.py --preset dit-xl2 --step meanflow --target-batch 32
                                                     # MF-XL/2, a MeanFlow step (forward + JVP + backward)
    .venv/bin/python benchmarks/memory_estimate.py --preset edm2-img512-xxl --guide edm2-img512-m --batches 1 2 \
        --target-batch 16                            # ImageNet-512 ECD on 8 GPUs: XXL, its autoguided XXL + M teacher

Each measurement runs in a fresh process (peak RSS is per process); CPU kernels keep a little workspace, so the
projection is an upper estimate of a GPU's activation memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

MB = 2**20


STEPS = {  # one training step of each kind, on `net` (its second time added for MeanFlow), x and one-hot `labels`
    "plain": "net(x, torch.rand(len(x)) * 10 + 0.01, None, labels).square().mean().backward()",
    "meanflow": (
        "from cmt.config import resolve_params\n"
        "from cmt.objectives.meanflow import meanflow_loss\n"
        "cfg = resolve_params('{\"name\": \"x\"}')['posttrain']['meanflow']\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "meanflow_loss(net, x, gen, cfg, (0.0, 1.0), labels).backward()"
    ),
}


def step_peak(preset: str, batch: int, step: str) -> float:
    """Peak RSS (MB) of a process that builds the network and runs one training ``step`` (``STEPS``) at ``batch``."""
    code = f"""
import resource, torch
from cmt.nets import add_second_time, build_network, network_config
from cmt.numerics.precond import Denoiser
torch.manual_seed(0)
net = build_network(network_config({{"preset": "{preset}"}}))
net = Denoiser(add_second_time(net) if "{step}" == "meanflow" else net).train()
shape, classes = net.model.cfg.image_shape, net.model.cfg.label_dim
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = torch.randn({batch}, *shape)
labels = torch.nn.functional.one_hot(torch.arange({batch}) % classes, classes).float() if classes else None
{STEPS[step]}
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def parameters(preset: str) -> int:
    from cmt.nets import build_network, network_config

    return sum(p.numel() for p in build_network(network_config({"preset": preset})).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ddpmpp-cifar10")
    parser.add_argument("--batches", type=int, nargs=2, default=(2, 6), help="two small batches to fit the slope")
    parser.add_argument("--target-batch", type=int, default=128)
    parser.add_argument("--step", choices=sorted(STEPS), default="plain", help="the training step measured")
    parser.add_argument("--guide", help="the preset of an autoguided teacher's guide (its weights join ECD's state)")
    args = parser.parse_args()
    params = parameters(args.preset)
    weights = params * 4 / MB
    small, large = (step_peak(args.preset, b, args.step) for b in args.batches)
    per_sample = (large - small) / (args.batches[1] - args.batches[0])
    activations = per_sample * args.target_batch
    state = {
        "weights": weights,
        "CMT (student, grads, RAdam 2 moments, EMA, teacher)": 6 * weights,
        "ECT (student, grads, RAdam 2 moments, EMA)": 5 * weights,
    }
    if args.guide:  # ECD reads the autoguided pair: a main network of the student's size and the guide
        guide = parameters(args.guide) * 4 / MB
        name = f"ECD, autoguided (student, grads, Adam 2 moments, EMA, teacher, guide {args.guide})"
        state[name] = 6 * weights + guide
    report = {
        "preset": args.preset,
        "parameters": params,
        f"activation MB per sample ({args.step} step)": round(per_sample, 1),
        f"activation MB at batch {args.target_batch}": round(activations),
        **{f"{k} MB": round(v) for k, v in state.items()},
        "peak RSS of this process MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
