"""The gradient-bias job (cmt.studies.gradient_bias): three initialisations of the config's network on Gaussian data,
ECT's expected gradient against the oracle objective's across Δt and over the first steps of ECT, a table, a plot
and an MLflow record.

- random: fresh weights;
- diffusion-like: trained on EDM's denoising loss on the data (as the teacher is);
- CMT-like: the diffusion-like weights trained further by CMT on exact trajectories (numerics.md 6), every state
  regressed to the trajectory's end.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from cmt.formats.atomic import atomic_write_bytes
from cmt.nets.families import network_config
from cmt.numerics import oracle
from cmt.numerics.precond import Denoiser
from cmt.numerics.solvers import sigma_grid
from cmt.objectives.cmt import cmt_loss
from cmt.objectives.distances import make_distance, squared_l2
from cmt.objectives.ect import ect_loss
from cmt.objectives.edm import edm_loss
from cmt.report.plots import save_figure
from cmt.report.tables import to_markdown
from cmt.report.tracking import write_record
from cmt.stages.teacher import build_denoiser
from cmt.studies.gradient_bias import (
    Gaussian,
    compare,
    ect_minibatch_loss,
    expected_gradient,
    oracle_pair_loss,
)

INITS = ("random", "diffusion-like", "CMT-like")


@dataclass(frozen=True)
class Settings:
    """The ``gradient_bias`` section, typed."""

    mu: float
    s: float
    pretrain_steps: int
    cmt_steps: int
    lr: float
    batch_size: int
    batches: int
    qs: tuple[int, ...]
    post_steps: tuple[int, ...]

    @classmethod
    def from_dict(cls, cfg: dict) -> Settings:
        return cls(**{**cfg, "qs": tuple(cfg["qs"]), "post_steps": tuple(cfg["post_steps"])})


@dataclass(frozen=True)
class Job:
    """What the job reads: its section, the network, the preconditioning, ECT's settings and the teacher's noise
    distribution (the diffusion-like init trains as the teacher does)."""

    settings: Settings
    network: dict
    precond: dict
    ect: dict
    teacher_train: dict
    seed: int

    @classmethod
    def from_params(cls, p: dict) -> Job:
        return cls(Settings.from_dict(p["gradient_bias"]), p["network"], p["precond"], p["posttrain"]["ect"],
                   p["teacher"]["train"], p["seed"])  # fmt: skip


def _train(model: Denoiser, loss, steps: int, opt: torch.optim.Optimizer) -> Denoiser:
    """``steps`` steps of ``opt`` (over ``model``'s parameters) on ``loss(model)``."""
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss(model).backward()
        opt.step()
    return model


def _adam(model: Denoiser, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def oracle_trajectories(data: Gaussian, sigmas: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` exact trajectories (n, len(sigmas), ...) from exact-marginal starts (numerics.md 6)."""
    x_T = oracle.marginal_sample((n, *data.shape), float(sigmas[0]), data.mu, data.s, gen, torch.float32)
    return torch.stack([oracle.trajectory_point(x_T, sigmas[0], sigma, data.mu, data.s) for sigma in sigmas], 1)


def initialisations(job: Job, data: Gaussian, gen: torch.Generator) -> dict[str, Denoiser]:
    """The three students, in the boundary preconditioning ECT trains (consistency form)."""
    s, noise = job.settings, job.teacher_train
    fresh = build_denoiser(job.network, job.precond, job.seed)

    def denoising(model: Denoiser) -> torch.Tensor:
        return edm_loss(model, data.sample(s.batch_size, gen), noise["p_mean"], noise["p_std"], gen)

    diffusion = copy.deepcopy(fresh)
    _train(diffusion, denoising, s.pretrain_steps, _adam(diffusion, s.lr))
    sigmas = sigma_grid("logsnr", 16, sigma_min=job.precond["sigma_min"], sigma_max=job.precond["sigma_max"])

    def consistency(model: Denoiser) -> torch.Tensor:  # every state of 16-step trajectories, as CMT trains
        return cmt_loss(model, oracle_trajectories(data, sigmas, s.batch_size // 16, gen), sigmas, squared_l2)

    cmt = copy.deepcopy(diffusion).set_mode("boundary")
    _train(cmt, consistency, s.cmt_steps, _adam(cmt, s.lr / 4))
    return {"random": fresh.set_mode("boundary"), "diffusion-like": diffusion.set_mode("boundary"), "CMT-like": cmt}


def measure(model: Denoiser, job: Job, q: int, data: Gaussian, gen: torch.Generator) -> dict[str, float]:
    """Cosine, norm ratio and standard errors of ECT's and the oracle's expected gradients at ECT's q (stage 0)."""
    ect = {**job.ect, "q": q}
    setting = (
        ect,
        0,
        make_distance(ect["loss"], pseudo_huber_c_value=ect["pseudo_huber_c"]),
        data,
        job.settings.batch_size,
    )
    return {
        "q": q,
        "dt_over_t": dt_over_t(ect),
        **compare(
            expected_gradient(model, ect_minibatch_loss, setting, gen, job.settings.batches),
            expected_gradient(model, oracle_pair_loss, setting, gen, job.settings.batches),
        ),
    }


def post_training(model: Denoiser, job: Job, data: Gaussian, gen: torch.Generator) -> list[dict]:
    """The first steps of ECT (its own settings, RAdam) from ``model``, measured at ``post_steps`` with ECT's own q."""
    model, ect = copy.deepcopy(model), job.ect
    opt = torch.optim.RAdam(model.parameters(), lr=ect["lr"], betas=tuple(ect["betas"]))
    distance = make_distance(ect["loss"], pseudo_huber_c_value=ect["pseudo_huber_c"])

    def step_loss(model: Denoiser) -> torch.Tensor:
        return ect_loss(model, data.sample(job.settings.batch_size, gen), gen, ect, 0, distance)

    rows, done = [], 0
    for target in job.settings.post_steps:
        _train(model, step_loss, target - done, opt)  # none when post_steps goes backwards
        done = max(done, target)
        rows.append({"ect_step": target, **measure(model, job, ect["q"], data, gen)})
    return rows


def dt_over_t(ect: dict) -> float:
    """ECT's (t - r) / t at the median noise level t = exp(p_mean), stage 0 (numerics.md 8)."""
    t = math.exp(ect["p_mean"])
    return (1 + ect["k"] / (1 + math.exp(ect["b"] * t))) / ect["q"]


def run(params: dict, out: Path) -> pd.DataFrame:
    """Measure every init across q at its start and over ECT's first steps; write ``gradient_bias.{csv,md,png}`` and
    the record."""
    job = Job.from_params(params)
    gen = torch.Generator().manual_seed(job.seed)
    data = Gaussian(job.settings.mu, job.settings.s, network_config(job.network).image_shape)
    s = job.settings
    print(f"gradient bias: training the inits ({s.pretrain_steps} denoising + {s.cmt_steps} CMT steps)", flush=True)
    rows, inits = [], initialisations(job, data, gen)
    with tqdm(total=len(inits) * (len(s.qs) + len(s.post_steps)), desc="gradient bias", unit="measurement") as bar:
        for init, model in inits.items():
            rows += [{"init": init, "ect_step": 0, **measure(model, job, q, data, gen)} for q in s.qs]
            bar.update(len(s.qs))
            rows += [{"init": init, **row} for row in post_training(model, job, data, gen)]
            bar.update(len(s.post_steps))
    table = pd.DataFrame(rows)
    write_outputs(table, out, {**params["gradient_bias"], "seed": job.seed, "ect_q": job.ect["q"]})
    return table


def write_outputs(table: pd.DataFrame, out: Path, params: dict) -> None:
    atomic_write_bytes(out / "gradient_bias.csv", table.to_csv(index=False).encode())
    note = (
        "# Gradient bias on Gaussian data\n\nCosine and norm ratio |g_ECT| / |g_oracle| between ECT's expected "
        f"minibatch gradient and the oracle objective's, each the mean of {params['batches']} minibatch gradients of "
        f"{params['batch_size']}; |g_oracle| and the absolute bias |g_ECT - g_oracle| (`se_*`: relative standard "
        "error of each mean). Rows with ect_step > 0: after that many ECT steps from the init.\n\n"
    )
    atomic_write_bytes(out / "gradient_bias.md", (note + to_markdown(table)).encode())
    plot(table, out / "gradient_bias.png")
    metrics = {f"cosine_{r.init}_q{r.q}_step{r.ect_step}": r.cosine for r in table.itertuples()}
    write_record(out, stage="gradient_bias", run_name="gradient-bias", params=params,
                 tags={"label": "gradient-bias", "kind": "study"}, metrics=metrics,
                 artifacts=["gradient_bias.csv", "gradient_bias.md", "gradient_bias.png"])  # fmt: skip


def plot(table: pd.DataFrame, path: Path) -> None:
    """Cosine and absolute bias against Δt / t at step 0, and the cosine against ECT steps at ECT's q, one line per
    init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13.5, 3.6), dpi=120)
    for init in INITS:
        rows = table[table["init"] == init]
        start = rows[rows["ect_step"] == 0].sort_values("dt_over_t")
        left.plot(start["dt_over_t"], start["cosine"], marker="o", label=init)
        middle.plot(start["dt_over_t"], start["bias"], marker="o", label=init)
        later = rows[rows["q"] == rows["q"].iloc[-1]].sort_values("ect_step")  # the post-training rows come last
        right.plot(later["ect_step"], later["cosine"], marker="o", label=init)
    left.set(xscale="log", xlabel="Δt / t at the median t (ECT stage 0)", ylabel="cos(ECT gradient, oracle gradient)")
    middle.set(xscale="log", yscale="log", xlabel="Δt / t at the median t (ECT stage 0)", ylabel="|g_ECT - g_oracle|")
    right.set(xlabel="ECT steps from the init", title="at ECT's own q")
    left.legend(fontsize=7)
    save_figure(fig, path)
