# Shared definitions: config validation, paths, the launcher, per-rule parameter subtrees.
import json
import os
import shlex
import sys

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
