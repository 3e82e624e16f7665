"""The Snakemake project the tests run: its files copied to a temporary folder, snakemake as a subprocess, the
reduced sweep, and the smoke run's jobs and config."""

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDM_RANGE = (0.002, 80.0)  # EDM's sigma range (sigma_min, sigma_max): the schema's precond default
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(SNAKEMAKE), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    jobs, table = {}, False
    for line in output.splitlines():
        if line.startswith("job "):
            table = True
        elif table and line.strip() and not line.startswith("-"):
            name, count = line.split()[:2]
            if name == "total":
                break
            jobs[name] = int(count)
    return jobs


def copy_project(dest: Path) -> Path:
    """The workflow's files in ``dest``, the profiles' root links (``--profile slurm``, ``--profile local``) too."""
    for folder in ("workflow", "config", "envs", "profiles"):
        shutil.copytree(ROOT / folder, dest / folder)
    for link in ("slurm", "local"):
        (dest / link).symlink_to(os.readlink(ROOT / link))
    return dest


SWEEP = {  # a reduced sweep on the smoke project: two new trajectory sets, three CMT variants, three post-trainings
    "seeds": [0],
    "trajectory_sets": {"solvers": ["dpmpp3m_legacy", "heun"], "nfes": [4]},
    "cmt": {"base": {}, "flowmap": {"form": "flowmap"}, "traj128": {"max_trajectories": 128}},
    "post": {
        "methods": ["ecd", "meanflow"],
        "inits": ["cmt"],
        "cmt_variant": {"ecd": "base", "meanflow": "flowmap"},
    },
    "budget": {"short": ["traj128", 20]},
    "variant_post": [],
    "teachers": {"weak": {"train": {"iterations": 20}}},  # a teacher variant: its own teacher, CMT and post-training
}


def sweep_overlay(folder: Path) -> Path:
    """``SWEEP`` as a config overlay; the default sweep's other entries are dropped by setting them to null."""
    import yaml

    sweep = {**SWEEP}
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["ablations"]
    for name in ("cmt", "budget"):
        sweep[name] = {**sweep[name], **{key: None for key in default[name] if key not in sweep[name]}}
    path = folder / "ab-smoke.yaml"
    path.write_text(yaml.safe_dump({"ablations": sweep}))
    return path


def smoke_job(smoke, out, cfg):
    """A StudentJob on the smoke run's teacher and feature net."""
    from cmt.stages.student import StudentJob

    results = smoke / "results" / "smoke"
    teacher, featnet = results / "teacher", results / "featnet" / "featnet.safetensors"
    return StudentJob(cfg["data"], cfg["precond"], 0, teacher, featnet, out, out.parent / f"{out.name}-work", "cpu")


def smoke_config():
    from cmt.config import load_config

    return load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")


def artifact_hashes(results: Path) -> dict[str, str]:
    """sha256 of every model file, trajectory shard and score file below a results folder."""
    files = [*results.rglob("*.safetensors"), *results.rglob("scores.json"), *results.rglob("meta.json")]
    return {str(f.relative_to(results)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def load_tool(name: str):
    """A script of ``tools/`` as a module (registered, so that its dataclasses work)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SMOKE_MID = "mid/base/dpmpp3m_legacy-nfe16/s0"  # the smoke run's CMT job


def killed_and_resumed(project: Path) -> dict:
    """The smoke config run from scratch in ``project``, the whole Snakemake tree killed (SIGKILL) once CMT has written
    a resume checkpoint, the CMT output left cut short, then run again until done (``--unlock`` first). Returns what
    each step showed: whether the checkpoint appeared, whether tables existed after the kill, the locked attempt."""
    args = ("--cores", "2", "all", "--configfile", "config/smoke.yaml")
    checkpoint = project / "work" / "smoke" / SMOKE_MID / "resume.pt"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([str(SNAKEMAKE), *args], cwd=project, start_new_session=True, **quiet)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = {"checkpoint": checkpoint.exists()}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    seen["tables_after_kill"] = (project / "results" / "smoke" / "tables" / "main.md").exists()
    # as if the kill had come between the job's two output writes: Snakemake finds an incomplete output,
    # and the workflow profile's `rerun-incomplete` reruns the job instead of stopping
    (project / "results" / "smoke" / SMOKE_MID / "model.safetensors").write_bytes(b"cut short")
    seen["locked"] = snakemake(project, *args, check=False)
    snakemake(project, "--unlock", *args)
    snakemake(project, *args)
    return seen
