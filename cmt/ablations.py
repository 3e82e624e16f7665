"""The ablation sweep (config section ``ablations``): its jobs and the paper tables each job feeds.

Pure functions of the validated config, shared by the workflow (which jobs exist, keyed by their
output path below the ablation root) and by ingest and the report (which MLflow parent run groups a
job, which table rows it fills).  A CMT variant feeds ``cmt_variants`` and the table of each
``midtrain`` setting it overrides; the base variant is the reference row of every one of them.
"""

from __future__ import annotations

from collections.abc import Mapping

TABLES = ("method_init", "nfe_solver", "cmt_variants", "loss", "slow_fast", "trajectory_count", "budget_split")
# the midtrain setting a CMT variant overrides -> the table that ablates it
SETTING_TABLES = {
    "loss": "loss",
    "lpips_resize": "loss",
    "form": "loss",
    "points": "slow_fast",
    "max_trajectories": "trajectory_count",
    "source": "trajectory_count",
    "iterations": "budget_split",
}


def default_set(config: Mapping) -> str:
    """Name of the trajectory set every CMT variant trains on (``<solver>-nfe<NFE>``)."""
    return f"{config['trajectories']['solver']}-nfe{config['trajectories']['nfe']}"


def variant_tables(overrides: Mapping) -> set[str]:
    """Tables a CMT variant on the default trajectory set feeds (base, without overrides: all of them)."""
    changed = overrides or SETTING_TABLES
    return {"cmt_variants"} | {SETTING_TABLES[key] for key in changed if key in SETTING_TABLES}


def _ordered(tables: set[str]) -> list[str]:
    """In TABLES order: the first one names the job's MLflow parent run."""
    return [t for t in TABLES if t in tables]


def mid_jobs(config: Mapping) -> dict[str, list[str]]:
    """``mid/<variant>/<set>/s<seed>`` -> tables: base on every solver x NFE set and the default set (all
    in ``nfe_solver``), every variant on the default set."""
    ab, jobs, default = config["ablations"], {}, default_set(config)
    sets = {f"{s}-nfe{n}" for s in ab["trajectory_sets"]["solvers"] for n in ab["trajectory_sets"]["nfes"]} | {default}
    for seed in ab["seeds"]:
        for tset in sets:
            jobs.setdefault(f"mid/base/{tset}/s{seed}", set()).add("nfe_solver")
        for variant, overrides in ab["cmt"].items():
            jobs.setdefault(f"mid/{variant}/{default}/s{seed}", set()).update(variant_tables(overrides))
    return {path: _ordered(tables) for path, tables in sorted(jobs.items())}


def post_jobs(config: Mapping) -> dict[str, list[str]]:
    """``post/<method>-<init>/<CMT variant or none>/it<iterations>/s<seed>`` -> tables."""
    ab, jobs = config["ablations"], {}

    def add(method: str, init: str, variant: str, iterations: int, seed: int, tables: set[str]) -> None:
        jobs.setdefault(f"post/{method}-{init}/{variant}/it{iterations}/s{seed}", set()).update(tables)

    ect_iterations = config["posttrain"]["ect"]["iterations"]
    for seed in ab["seeds"]:
        for method in ab["post"]["methods"]:
            for init in ab["post"]["inits"]:
                variant = ab["post"]["cmt_variant"][method] if init == "cmt" else "none"
                add(method, init, variant, config["posttrain"][method]["iterations"], seed, {"method_init"})
        for variant, iterations in ab["budget"].values():
            add("ect", "cmt", variant, iterations, seed, {"budget_split"})
        for variant in ab["variant_post"]:
            tables = variant_tables(ab["cmt"][variant])
            add("ect", "cmt", variant, ect_iterations, seed, tables)
            add("ect", "cmt", "base", ect_iterations, seed, tables)  # the reference row
    return {path: _ordered(tables) for path, tables in sorted(jobs.items())}


def record_tables(config: Mapping, root: str) -> dict[str, list[str]]:
    """Record folder (training and evaluation, below ``root``) -> tables, for ``cmt ingest --groups``."""
    jobs = {**mid_jobs(config), **post_jobs(config)}
    return {f"{root}/{where}{path}": tables for path, tables in jobs.items() for where in ("", "eval/")}
