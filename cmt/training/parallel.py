"""Data parallelism across the processes of one job (``accelerate launch``): ranks, shares, gradient averaging.

Every process draws the randomness of the whole global batch from the loss's generator, which is seeded alike on
every rank, and keeps its own contiguous share of the rows before any network call (``randn``, ``rand``,
``randint``, ``share``). The gradient of each rank's mean loss, averaged over the ranks, is then the gradient of the
global batch's mean loss (equal shares), so N processes train the same weights as one process with the same global
batch. Gradients are all-reduced by hand after the backward pass (``average_gradients``) instead of through DDP's
hooks, which ``torch.func.jvp`` (MeanFlow) bypasses (numerics.md 9.4). A process started without a launcher is a
world of one, and every function here is then the identity.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from cmt.errors import BadInput

COLLECTIVE_TIMEOUT_S = 4 * 3600  # a collective waiting longer than this is a hung job


def launched() -> bool:
    """Whether a launcher (``accelerate launch``, torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_name: str) -> None:
    """Join the job's process group when launched with several processes (accelerate picks gloo on CPU, NCCL on
    CUDA, and this process's GPU); a no-op for a single process. The other ranks wait in their next all-reduce
    while rank 0 evaluates along training, hence the long timeout."""
    if launched() and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=device_name == "cpu", timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def gpus(device: torch.device) -> int:
    """GPUs a run uses: its process count on CUDA, none on the CPU."""
    return world() if device.type == "cuda" else 0


def device_hours(wall_seconds: float, device: torch.device) -> float:
    """Wall time × max(1, GPUs), in hours: GPU-hours as the paper counts them, a CPU job as one device
    (docs/latent.md 7)."""
    return wall_seconds * max(1, gpus(device)) / 3600


def device_name(device: torch.device) -> str:
    """The device model a run's device-hours are counted on: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if gpus(device) else "cpu"


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """The process that writes checkpoints, records, grids and evaluates (rank 0)."""
    return rank() == 0


def local_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; with several processes on CUDA, this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def local_count(total: int, key: str) -> int:
    """This process's share of ``total`` rows; ``key`` names the setting when the processes cannot share it equally."""
    if total % world():
        raise BadInput(f"{key} ({total}) must be a multiple of the {world()} processes of this job")
    return total // world()


def share(x: Tensor, dim: int = 0) -> Tensor:
    """This process's contiguous share of the global rows of ``x`` along ``dim``."""
    count = local_count(x.shape[dim], f"a batch of {x.shape[dim]} rows")
    return x.narrow(dim, rank() * count, count)


def _global(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    return tuple(n * world() if k == dim else n for k, n in enumerate(shape))


def randn(shape: tuple[int, ...], gen: torch.Generator, dim: int = 0) -> Tensor:
    """Normal draws for this process's ``shape`` rows: the global batch's draws (``world`` times the rows along
    ``dim``) from ``gen``, of which this share is kept."""
    return share(torch.randn(_global(tuple(shape), dim), generator=gen, device=gen.device), dim)


def rand(shape: tuple[int, ...], gen: torch.Generator, dim: int = 0) -> Tensor:
    """Uniform [0, 1) draws, shared out as ``randn``."""
    return share(torch.rand(_global(tuple(shape), dim), generator=gen, device=gen.device), dim)


def randint(high: int, shape: tuple[int, ...], gen: torch.Generator, dim: int = 0) -> Tensor:
    """Integer draws in [0, high), shared out as ``randn``."""
    return share(torch.randint(high, _global(tuple(shape), dim), generator=gen, device=gen.device), dim)


def average_gradients(model: nn.Module) -> None:
    """Replace every gradient by its mean over the processes, in one all-reduce of a flat buffer (a parameter
    without a gradient counts as zero)."""
    if world() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world()
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view(p.shape))


def average(values: Tensor) -> Tensor:
    """The mean over the processes of ``values`` (e.g. each rank's losses)."""
    if world() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world()


def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a checkpoint that all then rely on)."""
    if world() > 1:
        dist.barrier()


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (replicas start identical whatever they loaded)."""
    if world() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def replica_spread(*modules: nn.Module) -> float:
    """The largest difference of any rank's parameters from rank 0's (0.0 when the replicas agree bit for bit)."""
    if world() == 1:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1) for m in modules for p in m.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    spread = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


def stop() -> None:
    """Leave the process group (at the end of a launched job)."""
    if dist.is_initialized():
        dist.destroy_process_group()
