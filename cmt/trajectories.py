"""Teacher PF-ODE trajectories: generated in shards (stored source) or in the loop (online source).

Stored sets are a documented deviation from the authors, who draw fresh trajectories every
iteration (method.md 3.1): every run records how many distinct trajectories it saw.

Shard files are safetensors holding ``states`` (n, S + 1, C, H, W) in float32, where S is the number
of solver steps, states[:, 0] = x_T and states[:, -1] is the endpoint, and, for a class-conditional
teacher, ``labels`` (n,): the class each trajectory was solved for.  ``index.json`` records the
grid, solver, counts, the per-shard seed and sha256, so any shard can be regenerated identically
and a damaged one is named on reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from cmt.atomic import atomic_save_tensors, atomic_write_json
from cmt.checkpoints import read_json
from cmt.data import ImageDataset
from cmt.fetch import file_sha256
from cmt.labels import conditioned, dataset_labels, label_dim_of
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


class Trajectories(NamedTuple):
    """A batch of trajectories (n, S + 1, C, H, W) and, for a class-conditional teacher, their labels (n,)."""

    states: Tensor
    labels: Tensor | None

    def to(self, device: torch.device | str) -> "Trajectories":
        return Trajectories(self.states.to(device), None if self.labels is None else self.labels.to(device))


def start_points(
    spec: TrajectorySpec, n: int, gen: torch.Generator, data: ImageDataset | None, label_dim: int = 0
) -> tuple[Tensor, Tensor | None]:
    """x_T for ``n`` trajectories (method.md 3.3) and, for a class-conditional teacher, their labels: the label of
    the image a ``data_plus_noise`` start was built on, else uniform draws."""
    noise = torch.randn((n, *spec.shape), generator=gen, device=gen.device)
    x_T = float(spec.sigmas[0]) * noise
    if spec.start == "data_plus_noise":
        if data is None:
            raise ValueError("trajectory start 'data_plus_noise' needs the training images")
        picked = torch.randint(len(data), (n,), generator=gen, device=gen.device)
        labels = dataset_labels(data.labels, label_dim, f"trajectories on {data.name}")
        return x_T + data.images.to(x_T.device)[picked], None if labels is None else labels.to(x_T.device)[picked]
    if spec.start != "prior":
        raise ValueError(f"unknown trajectory start {spec.start!r}; valid: prior, data_plus_noise")
    labels = torch.randint(label_dim, (n,), generator=gen, device=gen.device) if label_dim else None
    return x_T, labels


@torch.no_grad()
def generate(
    teacher: Denoiser,
    spec: TrajectorySpec,
    n: int,
    gen: torch.Generator,
    data: ImageDataset | None,
    batch_size: int = 256,
) -> Trajectories:
    """``n`` trajectories (n, S + 1, C, H, W) in float32 with their labels; the teacher runs in eval mode,
    NaN -> 0 (method.md 2)."""
    teacher.eval()
    x_T, labels = start_points(spec, n, gen, data, label_dim_of(teacher))
    sigmas = spec.sigmas.to(x_T.device)
    chunks = []
    for i in range(0, n, batch_size):
        teacher_i = conditioned(teacher, None if labels is None else labels[i : i + batch_size])

        def denoise(x: Tensor, sigma: Tensor, teacher_i=teacher_i) -> Tensor:
            return torch.nan_to_num(teacher_i(x, sigma), nan=0.0)

        chunks.append(sample_trajectory(denoise, x_T[i : i + batch_size], sigmas, spec.solver).transpose(0, 1))
    return Trajectories(torch.cat(chunks).to(torch.float32), labels)


def write_set(
    folder: str | Path,
    teacher: Denoiser,
    spec: TrajectorySpec,
    count: int,
    shard_size: int,
    seed: int,
    data: ImageDataset | None,
    provenance: dict,
) -> dict:
    """Generate ``count`` trajectories in shards of ``shard_size`` and write them plus ``index.json``."""
    out = Path(folder)
    device = next(teacher.parameters()).device
    shards = []
    for k, start in enumerate(tqdm(range(0, count, shard_size), desc="trajectory shards", leave=False)):
        n = min(shard_size, count - start)
        gen = torch.Generator(device=device).manual_seed(shard_seed(seed, k))
        batch = generate(teacher, spec, n, gen, data)
        path = out / f"shard-{k:05d}.safetensors"
        tensors = {"states": batch.states.cpu().contiguous()}
        atomic_save_tensors(tensors if batch.labels is None else {**tensors, "labels": batch.labels.cpu()}, path)
        shards.append({"file": path.name, "count": n, "seed": shard_seed(seed, k), "sha256": file_sha256(path)})
    index = {
        "solver": spec.solver,
        "nfe": len(spec.sigmas) - 1,
        "start": spec.start,
        "shape": list(spec.shape),
        "label_dim": label_dim_of(teacher),
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


def load_shard(folder: str | Path, entry: dict, shape: tuple[int, ...], steps: int, label_dim: int) -> Trajectories:
    """Read one shard, checking its sha256, tensor shape and labels against the index; errors name the shard."""
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
        tensors = load_file(path)
        states, labels = tensors["states"], tensors.get("labels")
    except (SafetensorError, KeyError) as err:
        raise ValueError(f"trajectory shard {path} cannot be read: {err}") from err
    expected = (entry["count"], steps + 1, *shape)
    if tuple(states.shape) != expected:
        raise ValueError(f"trajectory shard {path} has shape {tuple(states.shape)}, index says {expected}")
    if (labels is None) != (label_dim == 0) or (labels is not None and tuple(labels.shape) != (entry["count"],)):
        raise ValueError(f"trajectory shard {path}: its labels do not match label_dim {label_dim} in {INDEX}")
    return Trajectories(states, labels)


class TrajectorySource(Protocol):
    """Where CMT's trajectories come from; its count of what it handed out is part of a run's resume state."""

    sigmas: Tensor

    def sample(self, n: int, gen: torch.Generator) -> Trajectories: ...

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
        needed, shards, label_dim = limit or index["count"], [], index.get("label_dim", 0)
        for entry in index["shards"]:
            if sum(len(s.states) for s in shards) >= needed:
                break
            shards.append(load_shard(folder, entry, tuple(index["shape"]), index["nfe"], label_dim))
        self.states = torch.cat([s.states for s in shards])[:needed].to(device or "cpu")
        self.labels = torch.cat([s.labels for s in shards])[:needed].to(device or "cpu") if label_dim else None
        self._seen = torch.zeros(len(self.states), dtype=torch.bool, device=device)

    def __len__(self) -> int:
        return len(self.states)

    def sample(self, n: int, gen: torch.Generator) -> Trajectories:
        idx = torch.randint(len(self.states), (n,), generator=gen, device=gen.device).to(self.states.device)
        self._seen[idx] = True
        return Trajectories(self.states[idx], None if self.labels is None else self.labels[idx])

    @property
    def distinct_seen(self) -> int:
        return int(self._seen.sum())

    def state_dict(self) -> dict:
        return {"seen": self._seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self._seen.copy_(state["seen"])


class OnlineTrajectories:
    """Teacher and solver in the loop: fresh trajectories every call, as in the authors' code."""

    def __init__(self, teacher: Denoiser, spec: TrajectorySpec, data: ImageDataset | None):
        self.teacher, self.spec, self.data = teacher, spec, data
        self.sigmas = spec.sigmas
        self._count = 0

    def sample(self, n: int, gen: torch.Generator) -> Trajectories:
        self._count += n
        return generate(self.teacher, self.spec, n, gen, self.data)

    @property
    def distinct_seen(self) -> int:
        return self._count

    def state_dict(self) -> dict:
        return {"count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self._count = int(state["count"])
