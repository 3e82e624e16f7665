# Shared definitions: config defaults and validation, paths, resources, per-job parameter subtrees.
# Job paths come from cmt/workflow/jobs.py (the one place their format is written); rules call it with wildcard
# names.
import json
import os
import sys

from snakemake.exceptions import WorkflowError

from cmt.config import config_layers, merge_layers, resolve, scaled_resources, write_params
from cmt.evaluation.detectors import DETECTORS
from cmt.formats import names
from cmt.inits import INITS
from cmt.objectives import registry
from cmt.workflow import jobs, slurm
from cmt.workflow.launch import training_launcher

# Snakemake's order: the Snakefile's `configfile:`, then each --configfile, then --config values; every file's
# layers with what it `extends` in front of it
_CLI_FILES = [str(f) for f in workflow.config_settings.configfiles]
_OWN = {os.path.realpath(f) for f in _CLI_FILES}
CONFIG_FILES = [str(f) for f in workflow.configfiles if os.path.realpath(f) not in _OWN] + _CLI_FILES
LAYERS = [*config_layers(CONFIG_FILES), ("--config", dict(workflow.config_settings.config))]
config.clear()
config.update(merge_layers(LAYERS))
resolve(config, ", ".join(CONFIG_FILES) or "config", LAYERS)

RESULTS = f"results/{config['name']}"
# data.build: the workflow builds an EDM zip (rule `dataset`) and every data-reading job reads it
DATASET = f"{RESULTS}/{jobs.DATASET}/images.zip" if config["data"]["build"] else None
if DATASET:
    config["data"] = {**config["data"], "source": "edm_zip", "path": DATASET}
IMAGES = [DATASET] if DATASET else []  # the input of every job that reads the images
IMAGE_DATA = dict(config["data"])  # their data section: the feature net, FID statistics, autoencoder and encoding
# latent: rule `vae` provides the autoencoder and rule `encode` the latent zip of the images (rules/latent.smk); every
# training job then reads the latent zip, which names the images and the autoencoder its samples are scored with
LATENTS = f"{RESULTS}/{jobs.LATENTS}/latents.zip" if config["latent"] else None
if LATENTS:
    config["data"] = {**config["data"], "source": "latent_zip", "path": LATENTS}
DATA = IMAGES + ([LATENTS] if LATENTS else [])  # the input of every job that reads the training data
FEATNET = f"{RESULTS}/{jobs.FEATNET}/featnet.safetensors"
FEATNET_INPUT = [FEATNET] if jobs.uses_featnet(config) else []  # FD along training and in evaluation
# each detector's reference statistics (rules fid_reference, fd_dinov2_reference), and those evaluate.metrics scores with
REFERENCE_STATS = {
    name: f"{RESULTS}/{jobs.reference_path(name, config['evaluate'][name]['mode'])}" for name in DETECTORS
}
SCORED_REFERENCES = {name: path for name, path in REFERENCE_STATS.items() if name in config["evaluate"]["metrics"]}
WORK = f"work/{config['name']}"  # resume checkpoints: never a declared output, so never deleted by Snakemake
MLFLOW_DB = f"{RESULTS}/mlflow.db"
# Jobs run `python -m cmt <verb>`; a training rule with resources gpu > 1 runs `accelerate launch ... -m cmt <verb>`
# (training(group)), and CMT_LAUNCH, when set, replaces either for training rules. `python` is the interpreter running
# Snakemake (its folder goes first on PATH for the jobs).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


DEVICE = ("device", "deterministic")  # how a torch job runs: every job on the device reads both
TRAINING = (*DEVICE, "compute")  # a training job also reads its fast paths (recorded in its params)


def training(group):
    """The start of a training rule's shell command (its verb is the group's name, hyphenated; the launcher:
    cmt/workflow/launch.py), escaped for Snakemake's shell formatting.

    `exec`: the trainer replaces the shell, so SLURM's SIGTERM (walltime warning, scancel, preemption) reaches it
    with no shell that would die first; it saves a resume checkpoint and exits, and Snakemake waits for it."""
    words = training_launcher(config["resources"][group]["gpu"], config["compute"]["precision"])
    start = words.replace("{", "{{").replace("}", "}}")
    verb = group.replace("_", "-")
    return f"exec env OMP_NUM_THREADS={{threads}} {start} -m cmt {verb} --params {{params.cfg:q}}"


def subtree(*keys, **extra):
    """The config sections a job reads, as a params file (work/<name>/params/<hash>.json, cmt/config.py:
    write_params): an edit changes the path of exactly the jobs that read it, and so reruns them."""
    return write_params({**{k: config[k] for k in keys}, **extra}, f"{WORK}/params")


def threads_of(group):
    return config["resources"][group]["cpus"]


def resources_of(group):
    """The rule group's resources from config; memory and runtime scale with the attempt. A GPU request is spelt
    as the SLURM site wants it (cmt/workflow/slurm.py: partition, model, --gpus or --gres from the environment)."""
    entry = config["resources"][group]
    return {
        **slurm.gpu_resources(entry["gpu"], os.environ),
        "mem_mb": lambda wildcards, attempt: scaled_resources(entry, attempt)["mem_mb"],
        "runtime": lambda wildcards, attempt: scaled_resources(entry, attempt)["runtime"],
    }


SLURM_PROFILE = "profiles/slurm/config.yaml"  # where a cluster user sets the account and partition


def check_slurm_requests():
    """Before a SLURM run submits its first job: every job's account, partition, GPUs, CPUs, memory and runtime
    against the cluster (sinfo, sacctmgr); one error lists every cause. Other executors, and dry runs, skip it."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or workflow.dryrun:
        return
    remote = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    requests = [slurm.Request.of(job.rule.name, job.resources, job.threads) for job in remote]
    found = slurm.problems(requests, slurm.cluster_nodes(), slurm.user_accounts(), SLURM_PROFILE)
    if found:
        raise WorkflowError("SLURM settings to fix before anything is submitted:\n  " + "\n  ".join(found))


def optional(flag, paths):
    """``--flag path`` for an input that a config may leave out (empty when it does)."""
    return f"--{flag} {paths[0]}" if paths else ""


def scoring(wildcards, input):
    """The evaluate verb's scoring options: the feature net, and each scored detector's reference statistics."""
    references = " ".join(f"--{DETECTORS[name].reference_option} {path}" for name, path in SCORED_REFERENCES.items())
    return f"{optional('featnet', input.featnet)} {references}"


def result(path, name):
    return f"{RESULTS}/{path}/{name}"


def shard_files(folder):
    return [f"{folder}/{name}" for name in names.shard_names(config["trajectories"]["count"], config["trajectories"]["shard_size"])]


def teacher_params(job):
    """The params of teacher job ``job`` (jobs.TEACHER or jobs.POST_TEACHER): its sections below the job's teacher
    variant (the config's own for an empty prefix) and its tags."""

    def params(wildcards):
        teacher = jobs.teacher_of(wildcards.tp)
        section, network = jobs.teacher_sections(config, teacher, job)
        tags = jobs.teacher_tags(teacher, job)
        return subtree("precond", "data", "seed", *TRAINING, network=network, teacher=section, job=tags)

    return params


def post_teacher_model(wildcards):
    """The model of the teacher a post-training job reads (its teacher variant's, or its post-training teacher)."""
    return result(jobs.post_teacher(config, jobs.teacher_of(wildcards.tp)), names.WEIGHTS)


def trajectory_set(wildcards):
    """The trajectories subtree with solver and NFE taken from the path (one set per teacher, solver, NFE)."""
    return {**config["trajectories"], "solver": wildcards.solver, "nfe": int(wildcards.nfe)}


def trajectory_params(wildcards):
    return subtree("precond", "data", "seed", *DEVICE, trajectories=trajectory_set(wildcards))


def midtrain_cfg(wildcards):
    return {**config["midtrain"], **jobs.variant_overrides(config, wildcards.variant)}


def midtrain_data(wildcards):
    """What a CMT job reads besides its teacher: the training data, unless it solves its trajectories online from the
    prior with no FD along training (data-free, the authors' ImageNet-512 CMT: docs/latent.md 8.3); a data-free job
    in latents reads the autoencoder that decodes its grids; a latent LPIPS loss reads its backbone."""
    cfg = midtrain_cfg(wildcards)
    backbone = [result(jobs.LATENT_LPIPS, "backbone.safetensors")] if cfg["loss"] == "latent_lpips" else []
    if not (cfg["source"] == "online" and config["trajectories"]["start"] == "prior") or FEATNET_INPUT:
        return DATA + backbone
    return ([result(jobs.VAE, "vae.json")] if LATENTS else []) + backbone  # shown_with passes their folders


def shown_with(input):
    """A CMT job's scoring, decoding and loss arguments: the feature net (FD along training), for a data-free job in
    latents the autoencoder folder that decodes its grids, and a latent LPIPS loss's backbone folder."""

    def folder(name):
        return [os.path.dirname(path) for path in input.data if path.endswith(name)]

    paths = {"featnet": input.featnet, "vae": folder("vae.json"), "lpips-backbone": folder("backbone.safetensors")}
    return " ".join(filter(None, (optional(flag, found) for flag, found in paths.items())))


def midtrain_params(wildcards):
    """The variant's midtrain settings, its trajectory set and seed, and the job's axes."""
    axes = (wildcards.variant, wildcards.solver, wildcards.nfe, wildcards.seed, midtrain_cfg(wildcards)["init"])
    job = jobs.mid_tags(*axes, jobs.teacher_of(wildcards.tp))
    return subtree(
        "precond",
        "data",
        *TRAINING,
        "student_network",
        midtrain=midtrain_cfg(wildcards),
        trajectories=trajectory_set(wildcards),
        seed=int(wildcards.seed),
        job=job,
    )


def stored_trajectories(wildcards):
    """The trajectory set a CMT job reads (none when it draws online trajectories)."""
    if midtrain_cfg(wildcards)["source"] == "online":
        return []
    return result(wildcards.tp + jobs.traj_path(wildcards.solver, wildcards.nfe), names.TRAJ_INDEX)


def post_job(wildcards):
    axes = (wildcards.method, wildcards.init, wildcards.variant, wildcards.iters, wildcards.seed)
    return jobs.variant_post_tags(config, axes, jobs.teacher_of(wildcards.tp), jobs.post_variant_of(wildcards.pv))


def init_model(wildcards):
    """The weights a post-training job starts from: none (random), the teacher, or a CMT job's student."""
    init_job = post_job(wildcards)["init_job"]
    return [] if init_job == jobs.NO_VARIANT else result(init_job, names.WEIGHTS)


def posttrain_params(wildcards):
    """The chosen method's subtree only (editing ECD settings reruns no ECT job) with its post-training variant's
    overrides, iterations from the path."""
    overrides = jobs.post_overrides(config, jobs.post_variant_of(wildcards.pv), wildcards.method)
    method = {**config["posttrain"][wildcards.method], **overrides, "iterations": int(wildcards.iters)}
    return subtree(
        "precond",
        "data",
        *TRAINING,
        "student_network",
        posttrain={wildcards.method: method},
        seed=int(wildcards.seed),
        job=post_job(wildcards),
    )


def teacher_evaluation_params(wildcards):
    """The evaluate subtree of an evaluation-only teacher job (another sampler, or a seed's draws), and its axes."""
    evaluate, sample, tags = jobs.teacher_evaluation(config, wildcards.teval)
    return subtree("precond", "data", "seed", *DEVICE, evaluate=evaluate, teacher={"sample": sample}, job=tags)


def ingest_records(wildcards):
    """Every record of a scope; a sweep's ingest waits for the main report (one writer of the store at a time)."""
    records = [result(folder, names.RECORD) for folder in jobs.record_folders(config, wildcards.scope)]
    return records + (list(rules.report.output) if wildcards.scope != "main" else [])
