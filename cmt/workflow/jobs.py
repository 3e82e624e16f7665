"""The workflow's jobs: the one format of their output paths, their axes, and the tables each feeds.

A job's folder below ``results/<name>/`` spells out its axes; these functions are the only place that
format is written (the rules call them with wildcard names, ingest and the report read the axes back
from MLflow tags, never from paths):

    teacher                                            the diffusion teacher
    traj/<solver>-nfe<NFE>                             a stored trajectory set
    mid/<variant>/<solver>-nfe<NFE>/s<seed>            CMT: a variant (named midtrain overrides) on a set
    post/<method>-<init>/<variant>/it<iters>/s<seed>   post-training; <variant>: the CMT init's, else `none`
    eval/<job>                                         the evaluation of a trained job
    featnet                                            the offline metric's feature net
    dataset/images.zip, dataset/build.json             the EDM zip built from ``data.build`` and its record
    fid-ref/<mode>.npz                                 FID reference statistics of the training set

The main run (target ``all``) is the sweep's reference point: the ``base`` CMT variant on the default
trajectory set and every configured method x init at the configured iterations, with the config's seed.
The sweep (``all_ablations``, config section ``ablations``) varies the axes around it; a job both need is
one job. A job feeds ``main`` and/or ablation tables: the first names its MLflow parent run.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from cmt.config import merge
from cmt.errors import BadInput
from cmt.formats.pretrained import lpips_trunk_path
from cmt.inits import init_source

TEACHER = "teacher"
FEATNET = "featnet"
DATASET = "dataset"
NO_VARIANT = "none"  # the variant axis of a post-training job that does not start from CMT
BASE = "base"  # the CMT variant (and the teacher variant) that overrides nothing: the main run's
TEACHER_PREFIX = "t-"  # a teacher variant's jobs: t-<name>/teacher, t-<name>/traj/..., t-<name>/mid/..., ...
ABLATION_TABLES = (
    "method_init",
    "nfe_solver",
    "cmt_variants",
    "loss",
    "slow_fast",
    "trajectory_count",
    "budget_split",
    "teacher_variants",
)
TABLES = ("main", *ABLATION_TABLES)
SCOPES = ("main", "ablations")
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


def teacher_prefix(teacher: str) -> str:
    """Where a teacher variant's jobs live: below ``t-<name>/``; the config's own teacher (``base``) has no prefix."""
    return "" if teacher == BASE else f"{TEACHER_PREFIX}{teacher}/"


def teacher_of(prefix: str) -> str:
    """The teacher variant of a job-path prefix (``teacher_prefix``'s inverse)."""
    return prefix.removeprefix(TEACHER_PREFIX).removesuffix("/") or BASE


def traj_path(solver: str, nfe: int | str) -> str:
    return f"traj/{solver}-nfe{nfe}"


def mid_path(variant: str, solver: str, nfe: int | str, seed: int | str) -> str:
    return f"mid/{variant}/{solver}-nfe{nfe}/s{seed}"


def post_path(method: str, init: str, variant: str, iterations: int | str, seed: int | str) -> str:
    return f"post/{method}-{init}/{variant}/it{iterations}/s{seed}"


def eval_path(job: str) -> str:
    return f"eval/{job}"


def fid_ref_path(mode: str) -> str:
    return f"fid-ref/{mode}.npz"


def uses_featnet(config: Mapping) -> bool:
    """Whether jobs are scored with the offline feature net (its FD along training and in evaluation)."""
    return "featnet" in config["evaluate"]["metrics"]


def default_set(config: Mapping) -> tuple[str, int]:
    """(solver, NFE) of the trajectory set every CMT variant trains on."""
    return config["trajectories"]["solver"], config["trajectories"]["nfe"]


def entries(mapping: Mapping) -> dict:
    """A named map of the sweep without the entries an overlay dropped (set to null)."""
    return {name: value for name, value in mapping.items() if value is not None}


def variant_overrides(config: Mapping, variant: str) -> dict:
    """The midtrain settings a CMT variant changes (``base``: none, with or without an ``ablations`` section)."""
    variants = {BASE: {}, **entries((config.get("ablations") or {}).get("cmt", {}))}
    if variant not in variants:
        raise BadInput(f"unknown CMT variant {variant!r}; configured in ablations.cmt: {', '.join(variants)}")
    return variants[variant]


def runnable_variants(config: Mapping) -> dict:
    """The sweep's CMT variants, less those that switch to the LPIPS loss while its ImageNet trunk is not in the torch
    hub cache (nothing is downloaded): those are left out of the sweep, with a note naming the missing file. Where
    LPIPS is the configured loss itself (the paper configs) every variant stays, and a job fails at once naming
    the file."""
    variants = {}
    for name, overrides in entries(config["ablations"]["cmt"]).items():
        settings = {**config["midtrain"], **overrides}
        if settings["loss"] == "lpips" and config["midtrain"]["loss"] != "lpips":  # only variants that switch to it
            trunk = lpips_trunk_path(settings["lpips_net"])
            if not trunk.is_file():
                print(f"ablations.cmt.{name}: left out of the sweep, no LPIPS trunk at {trunk}", file=sys.stderr)
                continue
        variants[name] = overrides
    return variants


def cmt_variant(config: Mapping, method: str) -> str:
    """The CMT variant a method's CMT init comes from (``ablations.post.cmt_variant``; default ``base``)."""
    return ((config.get("ablations") or {}).get("post", {}).get("cmt_variant") or {}).get(method, BASE)


def init_job(init: str, job: str, teacher: str = BASE) -> str:
    """The job a student's weights start from (its lineage): the teacher (of variant ``teacher``), another ``job``,
    or none (fresh weights, a fetched file)."""
    return {"teacher": teacher_prefix(teacher) + TEACHER, "job": job}.get(init_source(init).weights, NO_VARIANT)


def teacher_axis(teacher: str) -> dict:
    """The teacher-variant tag of a job below a teacher variant (none for the config's own teacher)."""
    return {} if teacher == BASE else {"teacher_variant": teacher}


def teacher_tags(teacher: str = BASE) -> dict:
    return {"job": teacher_prefix(teacher) + TEACHER, "kind": "teacher", **teacher_axis(teacher)}


def teacher_section(config: Mapping, teacher: str) -> dict:
    """The ``teacher`` section of a teacher variant: the config's, with the variant's overrides
    (``ablations.teachers``)."""
    if teacher == BASE:
        return dict(config["teacher"])
    variants = entries((config.get("ablations") or {}).get("teachers") or {})
    if teacher not in variants:
        raise BadInput(f"unknown teacher variant {teacher!r}; configured in ablations.teachers: {', '.join(variants)}")
    return merge(config["teacher"], variants[teacher])


def mid_tags(
    variant: str, solver: str, nfe: int | str, seed: int | str, init: str = "diffusion", teacher: str = BASE
) -> dict:
    """The axes of a CMT job, as MLflow tags (the job path included); ``init``: its ``midtrain.init`` source,
    ``teacher``: its teacher variant."""
    prefix = teacher_prefix(teacher)
    return {
        "job": prefix + mid_path(variant, solver, nfe, seed),
        "kind": "mid",
        "variant": variant,
        "solver": solver,
        "nfe": str(nfe),
        "seed": str(seed),
        "init_job": init_job(init, "", teacher),  # the paper's CMT starts from the teacher's weights
        **teacher_axis(teacher),
    }


def post_tags(config: Mapping, method: str, init: str, variant: str, iterations: int | str, seed: int | str) -> dict:
    """The axes of a post-training job of the config's own teacher; ``init_job`` is the job its weights start from
    (lineage). ``variant_post_tags`` adds the teacher variant."""
    return variant_post_tags(config, (method, init, variant, iterations, seed), BASE)


def variant_post_tags(config: Mapping, axes: tuple, teacher: str) -> dict:
    """``post_tags`` of a post-training job below teacher variant ``teacher``; ``axes``: (method, init, variant,
    iterations, seed)."""
    method, init, variant, iterations, seed = axes
    prefix = teacher_prefix(teacher)
    from_job = init_source(init).from_job
    if from_job == (variant == NO_VARIANT):
        expected = "a CMT variant" if from_job else repr(NO_VARIANT)
        raise BadInput(f"post-training from {init!r} init: the variant axis must be {expected}, got {variant!r}")
    cmt_job = prefix + mid_path(variant, *default_set(config), seed) if from_job else ""
    return {
        "job": prefix + post_path(method, init, variant, iterations, seed),
        "kind": "post",
        "method": method,
        "init": init,
        "variant": variant,
        "iterations": str(iterations),
        "seed": str(seed),
        "init_job": init_job(init, cmt_job, teacher),
        **teacher_axis(teacher),
    }


def _post(config: Mapping, method: str, init: str, iterations: int, seed: int, variant: str | None = None) -> str:
    variant = variant or (cmt_variant(config, method) if init_source(init).from_job else NO_VARIANT)
    return post_path(method, init, variant, iterations, seed)


def run_jobs(config: Mapping, methods: list[str], inits: list[str], seed: int) -> list[str]:
    """One teacher's run: the teacher, base CMT on the default set, the CMT variant each method starts from (when an
    init reads a CMT job), and every method x init."""
    jobs = [TEACHER, mid_path(BASE, *default_set(config), seed)]
    from_job = any(init_source(init).from_job for init in inits)
    for method in methods:
        if from_job:
            jobs.append(mid_path(cmt_variant(config, method), *default_set(config), seed))
        jobs += [_post(config, method, init, config["posttrain"][method]["iterations"], seed) for init in inits]
    return list(dict.fromkeys(jobs))


def main_jobs(config: Mapping) -> dict[str, set[str]]:
    """Jobs of the main run (``all``): the teacher, base CMT, every method x init; each feeds ``main``."""
    post = config["posttrain"]
    return {job: {"main"} for job in run_jobs(config, post["methods"], post["inits"], config["seed"])}


def variant_tables(overrides: Mapping) -> set[str]:
    """Tables a CMT variant on the default trajectory set feeds (base, without overrides: all of them)."""
    changed = overrides or SETTING_TABLES
    return {"cmt_variants"} | {SETTING_TABLES[key] for key in changed if key in SETTING_TABLES}


def sweep_jobs(config: Mapping) -> dict[str, set[str]]:
    """Jobs of the ablation sweep (``all_ablations``) and the tables each feeds."""
    ab = config.get("ablations")
    if not ab:
        raise BadInput("this config has no `ablations` section: add one (see config/config.yaml) to run all_ablations")
    jobs: dict[str, set[str]] = {}
    solver, nfe = default_set(config)
    sets = {(s, n) for s in ab["trajectory_sets"]["solvers"] for n in ab["trajectory_sets"]["nfes"]} | {(solver, nfe)}
    for seed in ab["seeds"]:
        for s, n in sets:
            jobs.setdefault(mid_path(BASE, s, n, seed), set()).add("nfe_solver")
        for variant, overrides in runnable_variants(config).items():
            jobs.setdefault(mid_path(variant, solver, nfe, seed), set()).update(variant_tables(overrides))
        for method in ab["post"]["methods"]:
            for init in ab["post"]["inits"]:
                path = _post(config, method, init, config["posttrain"][method]["iterations"], seed)
                jobs.setdefault(path, set()).add("method_init")
        for variant, iterations in entries(ab["budget"]).values():
            jobs.setdefault(_post(config, "ect", "cmt", iterations, seed, variant), set()).add("budget_split")
        ect_iterations = config["posttrain"]["ect"]["iterations"]
        for variant in ab["variant_post"]:
            tables = variant_tables(variant_overrides(config, variant))
            for which in (variant, BASE):  # the base row is every table's reference
                jobs.setdefault(_post(config, "ect", "cmt", ect_iterations, seed, which), set()).update(tables)
        for path in teacher_variant_jobs(config, seed):
            jobs.setdefault(path, set()).add("teacher_variants")
    return jobs


def teacher_variant_jobs(config: Mapping, seed: int) -> list[str]:
    """With teacher variants (``ablations.teachers``): below each, its run (``run_jobs``) with the sweep's methods and
    inits; the config's own teacher's are the reference rows. A teacher job is one job for every seed."""
    ab = config["ablations"]
    variants = list(entries(ab.get("teachers") or {}))
    teachers = [BASE, *variants] if variants else []
    run = run_jobs(config, ab["post"]["methods"], ab["post"]["inits"], seed)
    return [teacher_prefix(teacher) + job for teacher in teachers for job in run]


def scope_jobs(config: Mapping, scope: str) -> dict[str, set[str]]:
    """The jobs a target asks for: ``main`` (``all``) or ``ablations`` (``all_ablations``, which includes ``all``)."""
    if scope not in SCOPES:
        raise BadInput(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    jobs = main_jobs(config)
    if scope == "ablations":
        for path, tables in sweep_jobs(config).items():
            jobs.setdefault(path, set()).update(tables)
    return jobs


def job_tables(config: Mapping) -> dict[str, list[str]]:
    """Every job of both targets -> the tables it feeds, in ``TABLES`` order (the first names its parent run)."""
    jobs = scope_jobs(config, "ablations") if config.get("ablations") else main_jobs(config)
    return {path: [t for t in TABLES if t in tables] for path, tables in sorted(jobs.items())}


def record_folders(config: Mapping, scope: str) -> list[str]:
    """Record folders (below the results folder) of a scope: every job, its evaluation, the feature net."""
    jobs = sorted(scope_jobs(config, scope))
    return [*([FEATNET] if uses_featnet(config) else []), *jobs, *(eval_path(job) for job in jobs)]


def record_groups(config: Mapping) -> dict[str, list[str]]:
    """Record folder -> tables, for training and evaluation records (``cmt ingest --groups``)."""
    return {where: tables for job, tables in job_tables(config).items() for where in (job, eval_path(job))}
