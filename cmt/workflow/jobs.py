"""The workflow's jobs: the one format of their output paths, their axes, and the tables each feeds.

A job's folder below ``results/<name>/`` spells out its axes; these functions are the only place that
format is written (the rules call them with wildcard names, ingest and the report read the axes back
from MLflow tags, never from paths):

    teacher                                            the diffusion teacher
    traj/<solver>-nfe<NFE>                             a stored trajectory set
    mid/<variant>/<solver>-nfe<NFE>/s<seed>            CMT: a variant (named midtrain overrides) on a set
    post/<method>-<init>/<variant>/it<iters>/s<seed>   post-training; <variant>: the CMT init's, else `none`
    post/<method>-<init>/<variant>/it<iters>/p-<name>/s<seed>   a post-training variant (named method overrides)
    eval/<job>                                         the evaluation of a trained job
    eval/teacher-samplers/<solver>-s<steps>            the teacher evaluated with another sampler (no training)
    eval/teacher-draws/s<seed>                         the teacher evaluated on the draws of a seed's FD curves
    featnet                                            the offline metric's feature net
    gradient-bias, meanflow-targets                    a sweep's experiments (its ``experiments``)
    dataset/images.zip, dataset/build.json             the EDM zip built from ``data.build`` and its record
    fid-ref/<mode>.npz                                 FID reference statistics of the training set

A teacher variant's jobs (its own teacher section, and optionally its own network) live below ``t-<name>/``.

The main run (target ``all``) is the sweep's reference point: the ``base`` CMT variant on the default
trajectory set and every configured method x init at the configured iterations, with the config's seed.
A sweep varies the axes around it; a job that several targets need is one job. Each sweep is a config section of
one schema and a target: ``ablations`` (``all_ablations``, the paper's ablations), ``study`` and ``study_extras``
(the study's targets, config/study.yaml). A job feeds ``main`` and/or sweep tables (a table of another sweep than
``ablations`` is named ``<sweep>.<table>``): the first names its MLflow parent run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

from cmt.config import merge
from cmt.errors import BadInput
from cmt.formats.pretrained import lpips_trunk_path
from cmt.inits import INITS, init_source
from cmt.objectives import registry

TEACHER = "teacher"
POST_TEACHER = "teacher-post"  # the teacher post-training reads when posttrain.teacher sets one (docs/latent.md 8.2)
FEATNET = "featnet"
# a sweep's experiments (its `experiments`) -> their folders; each has the config section of its name
EXPERIMENTS = {"gradient_bias": "gradient-bias", "meanflow_targets": "meanflow-targets"}
DATASET = "dataset"
VAE = "vae"  # the autoencoder's folder (config section latent)
LATENTS = "latents"  # the latent zip encoded with it
LATENT_LPIPS = "latent-lpips"  # the latent LPIPS's backbone, trained on the latent zip (docs/latent.md 8.5)
NO_VARIANT = "none"  # the variant axis of a post-training job that does not start from CMT
BASE = "base"  # the CMT variant (and the teacher variant) that overrides nothing: the main run's
TEACHER_PREFIX = "t-"  # a teacher variant's jobs: t-<name>/teacher, t-<name>/traj/..., t-<name>/mid/..., ...
POST_VARIANT_PREFIX = "p-"  # a post-training variant's segment before s<seed>
TEACHER_SAMPLERS = "teacher-samplers"  # evaluation-only jobs: the teacher with a sweep's other samplers
TEACHER_DRAWS = "teacher-draws"  # evaluation-only jobs: the teacher on the noise draws of a seed's FD curves
SWEEPS = ("ablations", "study", "study_extras")  # config sections of the sweep schema; each is a target's scope
ABLATION_TABLES = (
    "method_init",
    "nfe_solver",
    "cmt_variants",
    "loss",
    "slow_fast",
    "trajectory_count",
    "budget_split",
    "teacher_variants",
    "post_variants",
    "teacher_samplers",
)
TABLES = ("main", *ABLATION_TABLES)
SCOPES = ("main", *SWEEPS)
STUDIES = tuple(sweep for sweep in SWEEPS if sweep != "ablations")  # the sweeps reported as studies (report_study)
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


def post_variant_prefix(post_variant: str) -> str:
    """The path segment of a post-training variant (none for ``base``, the method's own section)."""
    return "" if post_variant == BASE else f"{POST_VARIANT_PREFIX}{post_variant}/"


def post_variant_of(prefix: str) -> str:
    """The post-training variant of a path segment (``post_variant_prefix``'s inverse)."""
    return prefix.removeprefix(POST_VARIANT_PREFIX).removesuffix("/") or BASE


POST_PATH = "post/{method}-{init}/{variant}/it{iters}/{pv}s{seed}"  # its fields are the post-training rule's wildcards


def post_path(
    method: str, init: str, variant: str, iterations: int | str, seed: int | str, post_variant: str = BASE
) -> str:
    pv = post_variant_prefix(post_variant)
    return POST_PATH.format(method=method, init=init, variant=variant, iters=iterations, pv=pv, seed=seed)


def teacher_sampler_path(solver: str, steps: int | str) -> str:
    """The evaluation-only job of the teacher sampled with ``solver`` over ``steps`` steps."""
    return f"{TEACHER_SAMPLERS}/{solver}-s{steps}"


def teacher_sampler_tags(solver: str, steps: int | str) -> dict:
    return {
        "job": teacher_sampler_path(solver, steps),
        "kind": "teacher_sampler",
        "solver": solver,
        "steps": str(steps),
        "init_job": TEACHER,
    }


def teacher_draws_path(seed: int | str) -> str:
    """The evaluation-only job of the teacher, with its own sampler, on the noise draws (evaluation seed) that the FD
    curves of training seed ``seed`` use: the paired reference of that seed's cost-to-quality thresholds."""
    return f"{TEACHER_DRAWS}/s{seed}"


def teacher_draws_tags(seed: int | str) -> dict:
    return {"job": teacher_draws_path(seed), "kind": "teacher_draws", "seed": str(seed), "init_job": TEACHER}


# the evaluation-only jobs of the config's teacher (below eval/), as the two paths above spell them: another sampler
# (groups: solver, steps), or a seed's draws (group: seed)
TEACHER_SAMPLER_JOB = rf"{TEACHER_SAMPLERS}/([a-z0-9_]+)-s(\d+)"
TEACHER_DRAWS_JOB = rf"{TEACHER_DRAWS}/s(\d+)"
TEACHER_EVALUATION = f"{TEACHER_SAMPLER_JOB}|{TEACHER_DRAWS_JOB}"


def teacher_evaluation(config: Mapping, job: str) -> tuple[dict, dict, dict]:
    """(the evaluate section, the teacher's sample section, the tags) of an evaluation-only teacher job: the config's
    with the path's solver and step count, or with the path's seed as the evaluation seed."""
    sample, evaluate = config["teacher"]["sample"], config["evaluate"]
    if found := re.fullmatch(TEACHER_SAMPLER_JOB, job):
        solver, steps = found.groups()
        return evaluate, {**sample, "solver": solver, "steps": int(steps)}, teacher_sampler_tags(solver, steps)
    if found := re.fullmatch(TEACHER_DRAWS_JOB, job):
        return {**evaluate, "seed": int(found[1])}, sample, teacher_draws_tags(found[1])
    raise BadInput(f"{job}: not an evaluation-only teacher job ({TEACHER_EVALUATION})")


def eval_path(job: str) -> str:
    return f"eval/{job}"


def reference_path(metric: str, mode: str) -> str:
    """A detector's reference statistics: ``fid-ref/<mode>.npz``, ``fd-dinov2-ref/<mode>.npz``."""
    return f"{metric.replace('_', '-')}-ref/{mode}.npz"


def uses_featnet(config: Mapping) -> bool:
    """Whether jobs are scored with the offline feature net (its FD along training and in evaluation)."""
    return "featnet" in config["evaluate"]["metrics"]


def default_set(config: Mapping) -> tuple[str, int]:
    """(solver, NFE) of the trajectory set every CMT variant trains on."""
    return config["trajectories"]["solver"], config["trajectories"]["nfe"]


def entries(mapping: Mapping) -> dict:
    """A named map of the sweep without the entries an overlay dropped (set to null)."""
    return {name: value for name, value in mapping.items() if value is not None}


def sweep_sections(config: Mapping) -> dict[str, Mapping]:
    """The sweeps this config configures (``SWEEPS`` order), by section name."""
    return {name: config[name] for name in SWEEPS if config.get(name)}


def named(config: Mapping, key: str) -> dict:
    """The named entries of ``key`` (CMT, teacher or post-training variants) over every sweep of the config; a name
    two sweeps define differently is refused, since a job path names one setting."""
    found: dict = {}
    where: dict[str, str] = {}
    for section, sweep in sweep_sections(config).items():
        for name, value in entries(sweep.get(key) or {}).items():
            if name in found and found[name] != value:
                raise BadInput(f"{section}.{key}.{name}: differs from {where[name]}.{key}.{name}; give it another name")
            found[name], where[name] = value, section
    return found


def variant_overrides(config: Mapping, variant: str) -> dict:
    """The midtrain settings a CMT variant changes (``base``: none, with or without a sweep section)."""
    variants = {BASE: {}, **named(config, "cmt")}
    if variant not in variants:
        raise BadInput(
            f"unknown CMT variant {variant!r}; configured in the sweeps' cmt sections: {', '.join(variants)}"
        )
    return variants[variant]


def post_overrides(config: Mapping, post_variant: str, method: str) -> dict:
    """The settings a post-training variant changes in ``method``'s section (``base``: none)."""
    if post_variant == BASE:
        return {}
    variants = named(config, "post_variants")
    if method not in variants.get(post_variant, {}):
        raise BadInput(f"no post-training variant {post_variant!r} of {method}; configured: {', '.join(variants)}")
    return variants[post_variant][method]


def runnable_variants(config: Mapping, scope: str) -> dict:
    """A sweep's CMT variants, less those that switch to the LPIPS loss while its ImageNet trunk is not in the torch
    hub cache (nothing is downloaded): those are left out of the sweep, with a note naming the missing file. Where
    LPIPS is the configured loss itself (the paper configs) every variant stays, and a job fails at once naming
    the file."""
    variants = {}
    for name, overrides in entries(config[scope]["cmt"]).items():
        settings = {**config["midtrain"], **overrides}
        if settings["loss"] == "lpips" and config["midtrain"]["loss"] != "lpips":  # only variants that switch to it
            trunk = lpips_trunk_path(settings["lpips_net"], settings["lpips_trunk"])
            if not trunk.is_file():
                print(f"{scope}.cmt.{name}: left out of the sweep, no LPIPS trunk at {trunk}", file=sys.stderr)
                continue
        variants[name] = overrides
    return variants


def cmt_variant(sweep: Mapping, method: str) -> str:
    """The CMT variant a method's CMT init comes from in a sweep (``post.cmt_variant``; default ``base``); the main run
    reads the ``ablations`` section's."""
    return ((sweep or {}).get("post", {}).get("cmt_variant") or {}).get(method, BASE)


def init_job(init: str, job: str, teacher_job: str) -> str:
    """The job a student's weights start from (its lineage): the teacher job ``teacher_job``, another ``job``, or none
    (fresh weights, a fetched file)."""
    return {"teacher": teacher_job, "job": job}.get(init_source(init).weights, NO_VARIANT)


def post_teacher(config: Mapping, teacher: str = BASE) -> str:
    """The teacher job post-training reads (ECD's target, the ``diffusion`` init's weights) below teacher variant
    ``teacher``: its own teacher, or its post-training teacher when ``posttrain.teacher`` sets one."""
    return teacher_prefix(teacher) + (POST_TEACHER if config["posttrain"].get("teacher") else TEACHER)


def teacher_axis(teacher: str) -> dict:
    """The teacher-variant tag of a job below a teacher variant (none for the config's own teacher)."""
    return {} if teacher == BASE else {"teacher_variant": teacher}


def teacher_tags(teacher: str = BASE, job: str = TEACHER) -> dict:
    """The axes of a teacher job (``job``: ``TEACHER`` or ``POST_TEACHER``) below teacher variant ``teacher``."""
    return {"job": teacher_prefix(teacher) + job, "kind": "teacher", **teacher_axis(teacher)}


def teacher_variant(config: Mapping, teacher: str) -> dict:
    """The overrides of a teacher variant (the sweeps' ``teachers``): of the ``teacher`` section, and under the key
    ``network`` of the network (a teacher of another size; its students inherit it)."""
    variants = named(config, "teachers")
    if teacher not in variants:
        raise BadInput(
            f"unknown teacher variant {teacher!r}; configured in the sweeps' teachers: {', '.join(variants)}"
        )
    return variants[teacher]


def teacher_section(config: Mapping, teacher: str) -> dict:
    """The ``teacher`` section of a teacher variant: the config's, with the variant's overrides."""
    if teacher == BASE:
        return dict(config["teacher"])
    overrides = {k: v for k, v in teacher_variant(config, teacher).items() if k != "network"}
    return merge(config["teacher"], overrides)


def network_section(config: Mapping, teacher: str) -> dict:
    """The ``network`` section of a teacher variant's teacher: the config's, with the variant's ``network``."""
    if teacher == BASE:
        return dict(config["network"])
    return merge(config["network"], teacher_variant(config, teacher).get("network") or {})


def teacher_sections(config: Mapping, teacher: str, job: str = TEACHER) -> tuple[dict, dict]:
    """The (``teacher``, ``network``) sections of teacher job ``job`` below teacher variant ``teacher``: the variant's,
    and for ``POST_TEACHER`` with ``posttrain.teacher``'s overrides on top (under ``network``, of the network)."""
    section, network = teacher_section(config, teacher), network_section(config, teacher)
    if job == TEACHER:
        return section, network
    overrides = config["posttrain"].get("teacher") or {}
    post = {k: v for k, v in overrides.items() if k != "network"}
    return merge(section, post), merge(network, overrides.get("network") or {})


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
        "init_job": init_job(init, "", prefix + TEACHER),  # the paper's CMT starts from the teacher's weights
        **teacher_axis(teacher),
    }


def post_tags(config: Mapping, method: str, init: str, variant: str, iterations: int | str, seed: int | str) -> dict:
    """The axes of a post-training job of the config's own teacher; ``init_job`` is the job its weights start from
    (lineage). ``variant_post_tags`` adds the teacher and post-training variants."""
    return variant_post_tags(config, (method, init, variant, iterations, seed), BASE)


def variant_post_tags(config: Mapping, axes: tuple, teacher: str, post_variant: str = BASE) -> dict:
    """``post_tags`` of a post-training job below teacher variant ``teacher`` with the settings of ``post_variant``;
    ``axes``: (method, init, variant, iterations, seed)."""
    method, init, variant, iterations, seed = axes
    prefix = teacher_prefix(teacher)
    from_job = init_source(init).from_job
    if from_job == (variant == NO_VARIANT):
        expected = "a CMT variant" if from_job else repr(NO_VARIANT)
        raise BadInput(f"post-training from {init!r} init: the variant axis must be {expected}, got {variant!r}")
    post_overrides(config, post_variant, method)  # refuses an unknown one
    cmt_job = prefix + mid_path(variant, *default_set(config), seed) if from_job else ""
    return {
        "job": prefix + post_path(method, init, variant, iterations, seed, post_variant),
        "kind": "post",
        "method": method,
        "init": init,
        "variant": variant,
        "iterations": str(iterations),
        "seed": str(seed),
        "init_job": init_job(init, cmt_job, post_teacher(config, teacher)),
        **teacher_axis(teacher),
        **({} if post_variant == BASE else {"post_variant": post_variant}),
    }


def _post(sweep: Mapping, config: Mapping, axes: tuple, variant: str | None = None, post_variant: str = BASE) -> str:
    """The path of a post-training job; ``axes``: (method, init, iterations, seed); the CMT variant of a CMT init is
    the sweep's for the method unless ``variant`` names one."""
    method, init, iterations, seed = axes
    variant = variant or (cmt_variant(sweep, method) if init_source(init).from_job else NO_VARIANT)
    return post_path(method, init, variant, iterations, seed, post_variant)


def post_pairs(post: Mapping) -> list[tuple[str, str]]:
    """The (method, init) pairs of a ``posttrain`` or sweep ``post`` section: its ``pairs`` (``<method>-<init>``) when
    given, else every method x init."""
    if not post.get("pairs"):
        return [(method, init) for method in post["methods"] for init in post["inits"]]
    pairs = [tuple(pair.split("-", 1)) for pair in post["pairs"]]
    for method, init in pairs:
        registry.method("posttrain", method), init_source(init)  # refuse unknown names, listing the valid ones
    return pairs


def run_jobs(config: Mapping, sweep: Mapping, pairs: list[tuple[str, str]], seed: int) -> list[str]:
    """One teacher's run: the teacher (and the post-training teacher), base CMT on the default set, the CMT variant
    a method starts from (for a pair whose init reads a CMT job), and every (method, init) pair."""
    jobs = [
        TEACHER,
        *([POST_TEACHER] if config["posttrain"].get("teacher") else []),
        mid_path(BASE, *default_set(config), seed),
    ]
    for method, init in pairs:
        if init_source(init).from_job:
            jobs.append(mid_path(cmt_variant(sweep, method), *default_set(config), seed))
        jobs.append(_post(sweep, config, (method, init, config["posttrain"][method]["iterations"], seed)))
    return list(dict.fromkeys(jobs))


def main_jobs(config: Mapping) -> dict[str, set[str]]:
    """Jobs of the main run (``all``): the teacher, base CMT, every method x init; each feeds ``main``."""
    run = run_jobs(config, config.get("ablations") or {}, post_pairs(config["posttrain"]), config["seed"])
    return {job: {"main"} for job in run}


def variant_tables(overrides: Mapping) -> set[str]:
    """Tables a CMT variant on the default trajectory set feeds (base, without overrides: all of them)."""
    changed = overrides or SETTING_TABLES
    return {"cmt_variants"} | {SETTING_TABLES[key] for key in changed if key in SETTING_TABLES}


def sweep_tables(config: Mapping, scope: str) -> list[str]:
    """The tables (``ABLATION_TABLES`` order, bare names) some job of a sweep feeds."""
    feeds = [*sweep_jobs(config, scope).values(), *sweep_evaluations(config, scope).values()]
    fed = {table for tables in feeds for table in tables}
    return [name for name in ABLATION_TABLES if table_id(scope, name) in fed]


def table_id(scope: str, table: str) -> str:
    """A sweep table's name in tags and reports: bare for ``ablations``, ``<sweep>.<table>`` for the others."""
    return table if scope in ("main", "ablations") else f"{scope}.{table}"


def sweep_jobs(config: Mapping, scope: str = "ablations") -> dict[str, set[str]]:
    """Jobs of a sweep (``all_ablations``, ``study``, ``study_extras``) and the tables each feeds."""
    ab = config.get(scope)
    if not ab:
        raise BadInput(f"this config has no `{scope}` section: add one (see config/config.yaml) to run its target")
    jobs: dict[str, set[str]] = {}

    def add(path: str, *tables: str) -> None:
        jobs.setdefault(path, set()).update(table_id(scope, table) for table in tables)

    solver, nfe = default_set(config)
    sets = {(s, n) for s in ab["trajectory_sets"]["solvers"] for n in ab["trajectory_sets"]["nfes"]} | {(solver, nfe)}
    post = ab["post"]
    for seed in ab["seeds"]:
        for s, n in sets:
            add(mid_path(BASE, s, n, seed), "nfe_solver")
        add(mid_path(BASE, solver, nfe, seed), "method_init")  # CMT alone: the comparison's reference row
        for variant, overrides in runnable_variants(config, scope).items():
            add(mid_path(variant, solver, nfe, seed), *variant_tables(overrides))
        for method, init in post_pairs(post):
            add(_post(ab, config, (method, init, config["posttrain"][method]["iterations"], seed)), "method_init")
        for variant, iterations in entries(ab["budget"]).values():
            add(_post(ab, config, ("ect", "cmt", iterations, seed), variant), "budget_split")
        ect_iterations = config["posttrain"]["ect"]["iterations"]
        for variant in ab["variant_post"]:
            tables = variant_tables(variant_overrides(config, variant))
            for which in (variant, BASE):  # the base row is every table's reference
                add(_post(ab, config, ("ect", "cmt", ect_iterations, seed), which), *tables)
        for path in post_variant_jobs(config, ab, seed):
            add(path, "post_variants")
        for path in teacher_variant_jobs(config, ab, seed):
            add(path, "teacher_variants")
    return jobs


def sweep_evaluations(config: Mapping, scope: str) -> dict[str, set[str]]:
    """Evaluation-only jobs of a sweep and the table they feed, by evaluation folder: its ``teacher_samplers`` (the
    config's teacher with each solver x steps) and, for a study, the teacher on each seed's draws (the cost table's
    paired thresholds, workflow.md 7.2)."""
    sweep = config[scope]
    samplers = sweep.get("teacher_samplers") or {}
    pairs = [(solver, steps) for solver in samplers.get("solvers", []) for steps in samplers.get("steps", [])]
    found = {eval_path(teacher_sampler_path(*pair)): {table_id(scope, "teacher_samplers")} for pair in pairs}
    if scope in STUDIES:
        found.update({eval_path(teacher_draws_path(seed)): {table_id(scope, "method_init")} for seed in sweep["seeds"]})
    return found


def post_variant_jobs(config: Mapping, sweep: Mapping, seed: int) -> list[str]:
    """With post-training variants (a sweep's ``post_variants``: name -> method -> overrides): each from the inits that
    start from CMT (the question they answer: does post-training add on top of CMT?), and the method's own settings
    as the reference rows."""
    variants = entries(sweep.get("post_variants") or {})
    cmt_inits = [name for name, source in INITS.items() if source.from_job]
    paths = []
    for name, methods in variants.items():
        for method in methods:
            axes = [(method, init, config["posttrain"][method]["iterations"], seed) for init in cmt_inits]
            paths += [_post(sweep, config, a, post_variant=which) for a in axes for which in (name, BASE)]
    return list(dict.fromkeys(paths))


def teacher_variant_jobs(config: Mapping, sweep: Mapping, seed: int) -> list[str]:
    """With teacher variants (a sweep's ``teachers``): below each, its run (``run_jobs``) with the sweep's (method,
    init) pairs; the config's own teacher's are the reference rows. A teacher job is one job for every seed."""
    variants = list(entries(sweep.get("teachers") or {}))
    teachers = [BASE, *variants] if variants else []
    run = run_jobs(config, sweep, post_pairs(sweep["post"]), seed)
    return [teacher_prefix(teacher) + job for teacher in teachers for job in run]


def scope_jobs(config: Mapping, scope: str) -> dict[str, set[str]]:
    """The jobs a target asks for: ``main`` (``all``) or a sweep's (which includes ``all``'s)."""
    if scope not in SCOPES:
        raise BadInput(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    jobs = main_jobs(config)
    if scope != "main":
        for path, tables in sweep_jobs(config, scope).items():
            jobs.setdefault(path, set()).update(tables)
    return jobs


def _table_order(table: str) -> tuple[int, int, str]:
    scope, _, name = table.rpartition(".")
    return (SWEEPS.index(scope) if scope else -1, TABLES.index(name), table)


def job_tables(config: Mapping) -> dict[str, list[str]]:
    """Every job of every target -> the tables it feeds, ``main`` first, then by sweep in ``TABLES`` order (the first
    names its parent run)."""
    jobs = main_jobs(config)
    for scope in sweep_sections(config):
        for path, tables in sweep_jobs(config, scope).items():
            jobs.setdefault(path, set()).update(tables)
    return {path: sorted(tables, key=_table_order) for path, tables in sorted(jobs.items())}


def meanflow_lineage(config: Mapping) -> tuple[str, str]:
    """(the CMT job MeanFlow from CMT init starts from, that MeanFlow job) of the main run's seed: what the
    meanflow_targets experiment reads."""
    variant, seed = cmt_variant(config.get("ablations") or {}, "meanflow"), config["seed"]
    iterations = config["posttrain"]["meanflow"]["iterations"]
    return mid_path(variant, *default_set(config), seed), post_path("meanflow", "cmt", variant, iterations, seed)


def experiment_paths(config: Mapping, scope: str) -> list[str]:
    """The folders (below the results folder) of the experiments a sweep runs (its ``experiments``)."""
    return [EXPERIMENTS[name] for name in config[scope].get("experiments") or []]


def record_folders(config: Mapping, scope: str) -> list[str]:
    """Record folders (below the results folder) of a scope: every job, its evaluation, the feature net."""
    jobs = sorted(scope_jobs(config, scope))
    extra = [] if scope == "main" else experiment_paths(config, scope)
    evaluations = [] if scope == "main" else sorted(sweep_evaluations(config, scope))
    return [
        *([FEATNET] if uses_featnet(config) else []),
        *extra,
        *jobs,
        *(eval_path(job) for job in jobs),
        *evaluations,
    ]


def record_groups(config: Mapping) -> dict[str, list[str]]:
    """Record folder -> tables, for training and evaluation records (``cmt ingest --groups``)."""
    groups = {where: tables for job, tables in job_tables(config).items() for where in (job, eval_path(job))}
    for scope in sweep_sections(config):
        for where, tables in sweep_evaluations(config, scope).items():
            groups[where] = sorted({*groups.get(where, []), *tables}, key=_table_order)
    return groups
