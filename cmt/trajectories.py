"""Teacher PF-ODE trajectories: generated in shards (stored source) or in the loop (online source).

Stored sets are a documented deviation from the authors, who draw fresh trajectories every
iteration (method.md 3.1): every run records how many distinct trajectories it saw.

Shard files are safetensors holding ``states`` (n, S + 1, C, H, W) in float32, where S is the number
of solver steps, states[:, 0] = x_T and states[:, -1] is the endpoint.  ``index.json`` records the
grid, solver, counts, the per-shard seed and sha256, so any shard can be regenerated identically
and a damaged one is named on reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from cmt.atomic import atomic_save_tensors, atomic_write_json
from cmt.checkpoints import read_json
from cmt.fetch import file_sha256
from cmt.precond import Denoiser
from cmt.solvers import sample_trajectory, sigma_grid

INDEX = "index.json"


@dataclass(frozen=True)
class TrajectorySpec:
    solver: str
    sigmas: Tensor  # (S + 1,) float64, decreasing, ending at sigma_min
    start: str  # "prior" (x_T = sigma_max * eps) or "data_plus_noise" (x_T = y + sigma_max * eps, authors' code)
    shape: tuple[int, ...]


def trajectory_spec(cfg: dict, shape: tuple[int, ...]) -> TrajectorySpec:
    """Spec from a config section {solver, nfe, grid, sigma_min, sigma_max, start}."""
    sigmas = sigma_grid(cfg["grid"], cfg["nfe"], sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"])
    return TrajectorySpec(cfg["solver"], sigmas, cfg["start"], shape)


def shard_seed(seed: int, shard: int) -> int:
    """Seed of one shard: distinct per (seed, shard), independent of the shard count."""
    return seed * 1_000_003 + shard


def start_points(spec: TrajectorySpec, n: int, gen: torch.Generator, data: Tensor | None) -> Tensor:
    """x_T for ``n`` trajectories (method.md 3.3)."""
    noise = torch.randn((n, *spec.shape), generator=gen, device=gen.device)
    x_T = float(spec.sigmas[0]) * noise
    if spec.start == "data_plus_noise":
        if data is None:
            raise ValueError("trajectory start 'data_plus_noise' needs the training images")
        x_T = x_T + data[torch.randint(len(data), (n,), generator=gen, device=gen.device)]
    elif spec.start != "prior":
        raise ValueError(f"unknown trajectory start {spec.start!r}; valid: prior, data_plus_noise")
    return x_T


@torch.no_grad()
def generate(
    teacher: Denoiser, spec: TrajectorySpec, n: int, gen: torch.Generator, data: Tensor | None, batch_size: int = 256
) -> Tensor:
    """``n`` trajectories (n, S + 1, C, H, W) in float32; the teacher runs in eval mode, NaN -> 0 (method.md 2)."""
    teacher.eval()
    x_T = start_points(spec, n, gen, data)
    sigmas = spec.sigmas.to(x_T.device)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        return torch.nan_to_num(teacher(x, sigma), nan=0.0)

    chunks = [
        sample_trajectory(denoise, x_T[i : i + batch_size], sigmas, spec.solver).transpose(0, 1)
        for i in range(0, n, batch_size)
    ]
    return torch.cat(chunks).to(torch.float32)


def write_set(
    folder: str | Path,
    teacher: Denoiser,
    spec: TrajectorySpec,
    count: int,
    shard_size: int,
    seed: int,
    data: Tensor | None,
    provenance: dict,
) -> dict:
    """Generate ``count`` trajectories in shards of ``shard_size`` and write them plus ``index.json``."""
    out = Path(folder)
    device = next(teacher.parameters()).device
    shards = []
    for k, start in enumerate(tqdm(range(0, count, shard_size), desc="trajectory shards", leave=False)):
        n = min(shard_size, count - start)
        gen = torch.Generator(device=device).manual_seed(shard_seed(seed, k))
        states = generate(teacher, spec, n, gen, data)
        path = out / f"shard-{k:05d}.safetensors"
        atomic_save_tensors({"states": states.cpu().contiguous()}, path)
        shards.append({"file": path.name, "count": n, "seed": shard_seed(seed, k), "sha256": file_sha256(path)})
    index = {
        "solver": spec.solver,
        "nfe": len(spec.sigmas) - 1,
        "start": spec.start,
        "shape": list(spec.shape),
        "sigmas": [float(s) for s in spec.sigmas],
        "count": count,
        "shard_size": shard_size,
        "seed": seed,
        "shards": shards,
        **provenance,
    }
    atomic_write_json(out / INDEX, index)
    return index


def read_index(folder: str | Path) -> dict:
    return read_json(Path(folder) / INDEX, "trajectory index")


def load_shard(folder: str | Path, entry: dict, shape: tuple[int, ...], steps: int) -> Tensor:
    """Read one shard, checking its sha256 and tensor shape against the index; errors name the shard."""
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"trajectory shard missing: {path}")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"trajectory shard {path} is damaged or truncated: sha256 {digest[:12]}... "
            f"does not match {entry['sha256'][:12]}... in {INDEX}; regenerate it"
        )
    try:
        states = load_file(path)["states"]
    except (SafetensorError, KeyError) as err:
        raise ValueError(f"trajectory shard {path} cannot be read: {err}") from err
    expected = (entry["count"], steps + 1, *shape)
    if tuple(states.shape) != expected:
        raise ValueError(f"trajectory shard {path} has shape {tuple(states.shape)}, index says {expected}")
    return states


class TrajectorySource(Protocol):
    """Where CMT's trajectories come from; its count of what it handed out is part of a run's resume state."""

    sigmas: Tensor

    def sample(self, n: int, gen: torch.Generator) -> Tensor: ...

    @property
    def distinct_seen(self) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class StoredTrajectories:
    """A finite stored set; ``sample`` draws trajectories uniformly with replacement.

    ``limit`` keeps only the first ``limit`` trajectories (reading only the shards they live in), so
    smaller sets for the set-size ablation come from one generated set.
    """

    def __init__(self, folder: str | Path, device: torch.device | None = None, limit: int | None = None):
        index = read_index(folder)
        if limit is not None and not 0 < limit <= index["count"]:
            raise ValueError(f"{Path(folder) / INDEX}: cannot take {limit} of its {index['count']} trajectories")
        self.index = index
        self.sigmas = torch.tensor(index["sigmas"], dtype=torch.float64)
        needed, shards = limit or index["count"], []
        for entry in index["shards"]:
            if sum(len(s) for s in shards) >= needed:
                break
            shards.append(load_shard(folder, entry, tuple(index["shape"]), index["nfe"]))
        self.states = torch.cat(shards)[:needed].to(device or "cpu")
        self._seen = torch.zeros(len(self.states), dtype=torch.bool, device=device)

    def __len__(self) -> int:
        return len(self.states)

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        idx = torch.randint(len(self.states), (n,), generator=gen, device=gen.device).to(self.states.device)
        self._seen[idx] = True
        return self.states[idx]

    @property
    def distinct_seen(self) -> int:
        return int(self._seen.sum())

    def state_dict(self) -> dict:
        return {"seen": self._seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self._seen.copy_(state["seen"])


class OnlineTrajectories:
    """Teacher and solver in the loop: fresh trajectories every call, as in the authors' code."""

    def __init__(self, teacher: Denoiser, spec: TrajectorySpec, data: Tensor | None):
        self.teacher, self.spec, self.data = teacher, spec, data
        self.sigmas = spec.sigmas
        self._count = 0

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        self._count += n
        return generate(self.teacher, self.spec, n, gen, self.data)

    @property
    def distinct_seen(self) -> int:
        return self._count

    def state_dict(self) -> dict:
        return {"count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self._count = int(state["count"])
