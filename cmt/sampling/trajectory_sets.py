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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cmt.data.datasets import Images
from cmt.data.labels import conditioned, dataset_labels, label_dim_of
from cmt.errors import BadInput, MissingInput
from cmt.formats.atomic import atomic_save_tensors, atomic_write_json
from cmt.formats.checkpoints import read_json
from cmt.formats.fetch import file_sha256
from cmt.formats.names import TRAJ_INDEX as INDEX
from cmt.formats.names import shard_name
from cmt.numerics.precond import Denoiser, fm_range
from cmt.numerics.solvers import denoiser_calls, sample_trajectory, sigma_grid
from cmt.objectives.base import TrajectoryBatch, TrajectoryObjective
from cmt.sampling.samplers import flowmap_path
from cmt.training import parallel

TIMES = ("sigma", "fm")  # a set's time: EDM's sigma (states x_sigma) or flow-matching t (states z_t; latent.md 6)
FLOWMAP = "flowmap"  # the solver name of a flow-map teacher's own k-step sampler


@dataclass(frozen=True)
class TrajectorySpec:
    solver: str
    grid: Tensor  # (S + 1,) float64, decreasing: sigmas ending at sigma_min, or flow-matching times ending at 0
    start: str  # "prior" (x_T = sigma_max * eps) or "data_plus_noise" (x_T = y + sigma_max * eps, authors' code)
    shape: tuple[int, ...]
    time: str = "sigma"  # of TIMES


def trajectory_section(config: Mapping) -> dict:
    """A config's ``trajectories`` section with the sigma range of its ``precond`` section (the teacher's)."""
    precond = config["precond"]
    return {**config["trajectories"], "sigma_min": precond["sigma_min"], "sigma_max": precond["sigma_max"]}


def check_solver(solver: str, teacher_model_kind: str) -> None:
    """A flow-map teacher (model kind ``meanflow``) is followed by its own k-step sampler, ``flowmap``; a diffusion
    teacher by an ODE solver."""
    if (solver == FLOWMAP) != (teacher_model_kind == "meanflow"):
        need = "solver flowmap" if teacher_model_kind == "meanflow" else "an ODE solver (not flowmap)"
        raise BadInput(f"trajectories.solver {solver!r}: a {teacher_model_kind} teacher's trajectories need {need}")


def teacher_calls(solver: str, grid: Tensor) -> int:
    """Teacher evaluations one trajectory costs: one per flow-map step, or the ODE solver's count."""
    return len(grid) - 1 if solver == FLOWMAP else denoiser_calls(solver, grid)


def trajectory_spec(cfg: dict, shape: tuple[int, ...], teacher: Denoiser | None = None) -> TrajectorySpec:
    """Spec from a config section {solver, nfe, grid, sigma_min, sigma_max, start}: a sigma grid for the ODE solvers,
    or for ``flowmap`` the ``nfe`` uniform steps of a flow-map teacher's sampler in flow-matching time, from the top
    of its range (``fm_range``: 1 for a flow-parameterised teacher) to 0 (numerics.md 9.5, latent.md 6)."""
    if cfg["solver"] != FLOWMAP:
        sigmas = sigma_grid(cfg["grid"], cfg["nfe"], sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"])
        return TrajectorySpec(cfg["solver"], sigmas, cfg["start"], shape)
    if cfg["start"] != "prior":
        raise BadInput("trajectories.start: a flow-map teacher's path starts from the prior (start: prior)")
    parameterisation = "edm" if teacher is None else teacher.parameterisation
    t_max = fm_range(parameterisation, cfg["sigma_min"], cfg["sigma_max"])[1]
    return TrajectorySpec(
        FLOWMAP, torch.linspace(t_max, 0.0, cfg["nfe"] + 1, dtype=torch.float64), "prior", shape, "fm"
    )


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
    spec: TrajectorySpec, n: int, gen: torch.Generator, data: Images | None, label_dim: int = 0
) -> tuple[Tensor, Tensor | None]:
    """x_T for ``n`` trajectories (method.md 3.3) and, for a class-conditional teacher, their labels: the label of
    the image a ``data_plus_noise`` start was built on, else uniform draws. With several processes, this process's
    share of the global draws (``cmt.training.parallel``)."""
    noise = parallel.randn((n, *spec.shape), gen)
    x_T = float(spec.grid[0]) * noise  # sigma_max eps, or t_max eps: pure noise at t = 1 (latent.md 6)
    if spec.start == "data_plus_noise":
        if data is None or not hasattr(data, "read"):  # a latent zip holds posterior moments, not images
            held = "none were given" if data is None else f"data {data.name!r} is a latent zip; use start: prior"
            raise BadInput(f"trajectory start 'data_plus_noise' adds noise to training images: {held}")
        picked = parallel.randint(len(data), (n,), gen)
        labels = dataset_labels(data.labels, label_dim, f"trajectories on {data.name}")
        return x_T + data.read(picked).to(x_T.device), None if labels is None else labels.to(x_T.device)[picked]
    if spec.start != "prior":
        raise BadInput(f"unknown trajectory start {spec.start!r}; valid: prior, data_plus_noise")
    labels = parallel.randint(label_dim, (n,), gen) if label_dim else None
    return x_T, labels


@torch.no_grad()
def generate(
    teacher: Denoiser,
    spec: TrajectorySpec,
    n: int,
    gen: torch.Generator,
    data: Images | None,
    batch_size: int = 256,
) -> Trajectories:
    """``n`` trajectories (n, S + 1, C, H, W) in float32 with their labels; the teacher runs in eval mode,
    NaN -> 0 (method.md 2)."""
    teacher.eval()
    x_T, labels = start_points(spec, n, gen, data, label_dim_of(teacher))
    grid = spec.grid.to(x_T.device)
    chunks = []
    for i in range(0, n, batch_size):
        teacher_i = conditioned(teacher, None if labels is None else labels[i : i + batch_size])
        if spec.time == "fm":
            chunks.append(flowmap_path(teacher_i, x_T[i : i + batch_size], grid.tolist()).transpose(0, 1))
            continue

        def denoise(x: Tensor, sigma: Tensor, teacher_i=teacher_i) -> Tensor:
            return torch.nan_to_num(teacher_i(x, sigma), nan=0.0)

        chunks.append(sample_trajectory(denoise, x_T[i : i + batch_size], grid, spec.solver).transpose(0, 1))
    return Trajectories(torch.cat(chunks).to(torch.float32), labels)


def precision_error(
    teacher: Denoiser, spec: TrajectorySpec, data: Images | None, dtype: torch.dtype, n: int = 64
) -> float:
    """Relative difference ||x_dtype - x_fp32|| / ||x_fp32|| of the endpoints (CMT's targets) of ``n`` trajectories
    solved from the same start points with the teacher's network under autocast to ``dtype`` and in fp32 (what
    reduced precision costs the online trajectories)."""
    device, kept = next(teacher.parameters()).device, teacher.amp_dtype
    solved = {}
    for name, amp in (("fp32", None), ("low", dtype)):
        teacher.amp_dtype = amp
        solved[name] = generate(teacher, spec, n, torch.Generator(device=device).manual_seed(0), data).states[:, -1]
    teacher.amp_dtype = kept
    return float((solved["low"] - solved["fp32"]).norm() / solved["fp32"].norm())


class SetSize(NamedTuple):
    """How many trajectories a stored set holds, how many a shard, and the seed its shards' seeds derive from."""

    count: int
    shard_size: int
    seed: int


def write_set(
    folder: str | Path, teacher: Denoiser, spec: TrajectorySpec, size: SetSize, data: Images | None, provenance: dict
) -> dict:
    """Generate ``size.count`` trajectories in shards of ``size.shard_size`` and write them plus ``index.json``."""
    count, shard_size, seed = size
    out = Path(folder)
    device = next(teacher.parameters()).device
    shards = []
    for k, start in enumerate(tqdm(range(0, count, shard_size), desc="trajectory shards", leave=False)):
        n = min(shard_size, count - start)
        gen = torch.Generator(device=device).manual_seed(shard_seed(seed, k))
        batch = generate(teacher, spec, n, gen, data)
        path = out / shard_name(k)
        tensors = {"states": batch.states.cpu().contiguous()}
        atomic_save_tensors(tensors if batch.labels is None else {**tensors, "labels": batch.labels.cpu()}, path)
        shards.append({"file": path.name, "count": n, "seed": shard_seed(seed, k), "sha256": file_sha256(path)})
    index = {
        "solver": spec.solver,
        "nfe": len(spec.grid) - 1,
        "start": spec.start,
        "shape": list(spec.shape),
        "label_dim": label_dim_of(teacher),
        "time": spec.time,
        GRID_KEYS[spec.time]: [float(s) for s in spec.grid],
        "count": count,
        "shard_size": shard_size,
        "seed": seed,
        "shards": shards,
        **provenance,
    }
    atomic_write_json(out / INDEX, index)
    return index


GRID_KEYS = {"sigma": "sigmas", "fm": "times"}  # where index.json keeps the grid of each time


def read_index(folder: str | Path) -> dict:
    return read_json(Path(folder) / INDEX, "trajectory index")


SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}


def mapped_tensors(path: Path) -> dict[str, np.memmap]:
    """The tensors of a safetensors file as read-only memory maps: rows are read from disk when indexed, so a shard
    never sits in memory whole (the operating system's page cache is the bounded cache)."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    mapped = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise BadInput(f"{path}: tensor {name!r} has dtype {info['dtype']}; shards hold F32 states, I64 labels")
        begin, end = info["data_offsets"]
        dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
        if end - begin != np.dtype(dtype).itemsize * int(np.prod(shape)):
            raise BadInput(f"{path}: tensor {name!r} does not fill its byte range")
        mapped[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + size + begin, shape=shape)
    return mapped


def open_shard(folder: str | Path, entry: dict, shape: tuple[int, ...], steps: int, label_dim: int) -> dict:
    """Check one shard (sha256, read in blocks; tensor shapes and labels against the index) and map it; errors name
    the shard."""
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise MissingInput(f"trajectory shard missing: {path}")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise BadInput(
            f"trajectory shard {path} is damaged or truncated: sha256 {digest[:12]}... "
            f"does not match {entry['sha256'][:12]}... in {INDEX}; regenerate it"
        )
    try:
        tensors = mapped_tensors(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise BadInput(f"trajectory shard {path} cannot be read: {err}") from err
    expected = (entry["count"], steps + 1, *shape)
    if "states" not in tensors or tensors["states"].shape != expected:
        found = tensors["states"].shape if "states" in tensors else "no states"
        raise BadInput(f"trajectory shard {path} has shape {found}, index says {expected}")
    labels = tensors.get("labels")
    if (labels is None) != (label_dim == 0) or (labels is not None and labels.shape != (entry["count"],)):
        raise BadInput(f"trajectory shard {path}: its labels do not match label_dim {label_dim} in {INDEX}")
    return tensors


class TrajectorySource(Protocol):
    """Where CMT's trajectories come from; its count of what it handed out is part of a run's resume state."""

    grid: Tensor
    time: str

    def sample(self, n: int, gen: torch.Generator) -> Trajectories: ...

    @property
    def distinct_seen(self) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class StoredTrajectories:
    """A finite stored set; ``sample`` draws trajectories uniformly with replacement, reading only the drawn rows
    from the memory-mapped shards.

    ``limit`` keeps only the first ``limit`` trajectories (opening only the shards they live in), so
    smaller sets for the set-size ablation come from one generated set.
    """

    def __init__(self, folder: str | Path, device: torch.device | None = None, limit: int | None = None):
        index = read_index(folder)
        if limit is not None and not 0 < limit <= index["count"]:
            raise BadInput(f"{Path(folder) / INDEX}: cannot take {limit} of its {index['count']} trajectories")
        self.index, self.device = index, device or torch.device("cpu")
        self.time = index.get("time", "sigma")  # sets written before flow-map teachers are in sigma
        self.grid = torch.tensor(index[GRID_KEYS[self.time]], dtype=torch.float64)
        self.label_dim, needed, starts = index.get("label_dim", 0), limit or index["count"], [0]
        self.shards = []
        for entry in index["shards"]:
            if starts[-1] >= needed:
                break
            self.shards.append(open_shard(folder, entry, tuple(index["shape"]), index["nfe"], self.label_dim))
            starts.append(starts[-1] + entry["count"])
        self.starts = np.array(starts[:-1])
        self.count = needed
        self._seen = torch.zeros(needed, dtype=torch.bool)

    def __len__(self) -> int:
        return self.count

    def read(self, indices: Tensor) -> Trajectories:
        """Trajectories ``indices`` (into the whole set), read from their shards in one pass per shard."""
        idx = indices.cpu().numpy()
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1
        states = np.empty((len(idx), *self.shards[0]["states"].shape[1:]), dtype=np.float32)
        labels = np.empty(len(idx), dtype=np.int64)
        for k in np.unique(shard_of):
            rows = shard_of == k
            local = idx[rows] - self.starts[k]
            order = np.argsort(local)  # ascending reads from the map
            states[np.flatnonzero(rows)[order]] = self.shards[k]["states"][local[order]]
            if self.label_dim:
                labels[np.flatnonzero(rows)[order]] = self.shards[k]["labels"][local[order]]
        to = self.device
        return Trajectories(
            torch.from_numpy(states).to(to), torch.from_numpy(labels).to(to) if self.label_dim else None
        )

    def sample(self, n: int, gen: torch.Generator) -> Trajectories:
        """``n`` trajectories for this process: its share of the global draw (every rank counts all as seen)."""
        idx = torch.randint(self.count, (n * parallel.world(),), generator=gen, device=gen.device).cpu()
        self._seen[idx] = True
        return self.read(parallel.share(idx))

    @property
    def distinct_seen(self) -> int:
        return int(self._seen.sum())

    def state_dict(self) -> dict:
        return {"seen": self._seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._seen.copy_(state["seen"])


class TrajectoryBatches:
    """A trajectory objective's batches: each step, the states it chose (``select``, drawn first), then this process's
    share of ``per_step`` trajectories from ``source``, on ``device``."""

    def __init__(self, source: TrajectorySource, objective: TrajectoryObjective, per_step: int, device: torch.device):
        self.source, self.objective, self.device = source, objective, device
        self.grid, self.time = source.grid.to(device), source.time
        self.local = parallel.local_count(per_step, "midtrain.batch_size's trajectories per step")

    def __call__(self, step: int, gen: torch.Generator) -> TrajectoryBatch:
        chosen = self.objective.select(self.local, len(self.grid) - 1, gen)
        batch = self.source.sample(self.local, gen).to(self.device)
        chosen = None if chosen is None else chosen.to(self.device)
        return TrajectoryBatch(batch.states, self.grid, batch.labels, chosen, self.time)


class OnlineTrajectories:
    """Teacher and solver in the loop: fresh trajectories every call, as in the authors' code."""

    def __init__(self, teacher: Denoiser, spec: TrajectorySpec, data: Images | None):
        self.teacher, self.spec, self.data = teacher, spec, data
        self.grid, self.time = spec.grid, spec.time
        self._count = 0

    def sample(self, n: int, gen: torch.Generator) -> Trajectories:
        """``n`` fresh trajectories for this process, solved on the teacher's device in one batch."""
        self._count += n * parallel.world()
        return generate(self.teacher, self.spec, n, gen, self.data, batch_size=n)

    @property
    def distinct_seen(self) -> int:
        return self._count

    def state_dict(self) -> dict:
        return {"count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self._count = int(state["count"])
