# Shared definitions: config validation, paths, the launcher, per-rule parameter subtrees.
import json
import os
import shlex
import sys

from cmt.ablations import TABLES as AB_TABLES, default_set, mid_jobs, post_jobs, record_tables
from cmt.config import validate

validate(config, ", ".join(map(str, workflow.configfiles)) or "config")

RESULTS = f"results/{config['name']}"
WORK = f"work/{config['name']}"  # resume checkpoints: never a declared output, so never deleted by Snakemake
# Jobs run `${CMT_LAUNCH:-python} -m cmt <verb>`: set CMT_LAUNCH to wrap training, e.g.
# CMT_LAUNCH="accelerate launch --num_processes 1 --mixed_precision no" on a GPU node.
# `python` is the interpreter running Snakemake (its folder goes first on PATH for the jobs).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
TRAJ = f"{RESULTS}/traj/{config['trajectories']['solver']}-nfe{config['trajectories']['nfe']}"
POST_MODELS = [f"{m}-{i}" for m in config["posttrain"]["methods"] for i in config["posttrain"]["inits"]]
EVAL_MODELS = ["teacher", "cmt"] + POST_MODELS


def subtree(*keys, **extra):
    """JSON of the config sections a job reads, so an edit reruns exactly the jobs that read them."""
    return json.dumps({**{k: config[k] for k in keys}, **extra}, sort_keys=True)


def shard_files(folder):
    count, size = config["trajectories"]["count"], config["trajectories"]["shard_size"]
    return [f"{folder}/shard-{k:05d}.safetensors" for k in range((count + size - 1) // size)]


def trajectory_params(wildcards):
    """The trajectories subtree with solver and NFE taken from the path (one set per teacher, solver, NFE)."""
    traj = {**config["trajectories"], "solver": wildcards.solver, "nfe": int(wildcards.nfe)}
    return subtree("precond", "data", "seed", "device", trajectories=traj)


def init_checkpoint(wildcards):
    """The weights a post-training run starts from: none (random), the teacher, or the CMT student."""
    return {"random": [], "diffusion": rules.teacher.output.model, "cmt": rules.midtrain.output.model}[wildcards.init]


def init_arg(wildcards):
    model = init_checkpoint(wildcards)
    return f"--init-dir {shlex.quote(os.path.dirname(model))}" if model else ""


def model_file(wildcards):
    """Checkpoint of an evaluated model: the teacher, the CMT student or a post-trained <method>-<init>."""
    special = {"teacher": f"{RESULTS}/teacher", "cmt": f"{RESULTS}/mid/cmt"}
    return f"{special.get(wildcards.model, f'{RESULTS}/post/{wildcards.model}')}/model.safetensors"


def posttrain_params(wildcards):
    """The chosen method's subtree only: editing ECD settings reruns no ECT job."""
    return subtree("precond", "data", "seed", "device", **{wildcards.method: config["posttrain"][wildcards.method]})


# ---- ablations (config/ablations.yaml): every job keyed by its axes in the path (cmt/ablations.py) ----
AB = config.get("ablations") or {}
AB_ROOT = f"{RESULTS}/ab"
DEFAULT_SET = default_set(config)


def ab_records(wildcards):
    """Training and evaluation records of every ablation job (the teacher's and feature net's too)."""
    if not AB:
        raise ValueError("this config has no `ablations` section: run all_ablations with --configfile config/ablations.yaml")
    paths = [*mid_jobs(config), *post_jobs(config)]
    return (
        [rules.teacher.output.record, rules.featnet.output.record]
        + [f"{AB_ROOT}/{p}/run.json" for p in paths]
        + [f"{AB_ROOT}/eval/{p}/run.json" for p in paths]
    )


def ab_midtrain_params(wildcards):
    solver, nfe = wildcards.tset.split("-nfe")
    variant = AB["cmt"][wildcards.variant]
    mid = {**config["midtrain"], **variant, "label": f"cmt-{wildcards.variant}"}
    traj = {**config["trajectories"], "solver": solver, "nfe": int(nfe)}
    tags = {"ablation_variant": wildcards.variant, "trajectory_set": wildcards.tset, "seed": wildcards.seed}
    return subtree("precond", "data", "device", midtrain=mid, trajectories=traj, seed=int(wildcards.seed), tags=tags)


def ab_traj_arg(wildcards):
    if AB["cmt"][wildcards.variant].get("source", config["midtrain"]["source"]) == "online":
        return ""
    return f"--traj {RESULTS}/traj/{wildcards.tset}"


def ab_traj_input(wildcards):
    return [] if not ab_traj_arg(wildcards) else f"{RESULTS}/traj/{wildcards.tset}/index.json"


def ab_init_checkpoint(wildcards):
    if wildcards.init == "cmt":
        return f"{AB_ROOT}/mid/{wildcards.variant}/{DEFAULT_SET}/s{wildcards.seed}/model.safetensors"
    return {"random": [], "diffusion": rules.teacher.output.model}[wildcards.init]


def ab_init_arg(wildcards):
    model = ab_init_checkpoint(wildcards)
    return f"--init-dir {shlex.quote(os.path.dirname(model))}" if model else ""


def ab_posttrain_params(wildcards):
    method_cfg = {**config["posttrain"][wildcards.method], "iterations": int(wildcards.iters)}
    tags = {"ablation_variant": wildcards.variant, "iterations": wildcards.iters, "seed": wildcards.seed}
    return subtree("precond", "data", "device", seed=int(wildcards.seed), tags=tags, **{wildcards.method: method_cfg})
