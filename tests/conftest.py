"""Shared test set-up: tool caches in a temporary folder (environment.md 9) and the Snakemake smoke project."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

_HOME = tempfile.mkdtemp(prefix="cmt-tests-")
for var, sub in {
    "TORCH_HOME": "torch",
    "MPLCONFIGDIR": "matplotlib",
    "XDG_CACHE_HOME": "cache",
    "HF_HOME": "hf",
    "DVC_SITE_CACHE_DIR": "dvc-site",
}.items():
    os.environ.setdefault(var, os.path.join(_HOME, sub))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
for var in [v for v in os.environ if v.startswith("CMT_SLURM_")]:  # a user's cluster settings (cmt/slurm.py)
    del os.environ[var]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    work = copy_project(tmp_path_factory.mktemp("project"))
    snakemake(work, "--cores", "2", "all", "--configfile", "config/smoke.yaml")
    return work


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


@pytest.fixture(scope="session")
def swept(smoke, tmp_path_factory):
    """The smoke project after the reduced sweep's `all_ablations` (run locally); its arguments and the jobs its
    dry run planned beforehand."""
    args = ("--configfile", "config/smoke.yaml", str(sweep_overlay(tmp_path_factory.mktemp("sweep"))))
    planned = planned_jobs(snakemake(smoke, "-n", "all_ablations", *args).stdout)
    snakemake(smoke, "--cores", "2", "all_ablations", *args)
    return args, planned


class CountingTeacher(torch.nn.Module):
    """Wraps a denoiser and counts the rows it evaluates: the teacher NFE a stage really spent."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.rows = inner, 0

    @property
    def model(self) -> torch.nn.Module:  # the wrapped network (its config: label_dim, image shape)
        return self.inner.model

    def forward(self, x, sigma, *args):
        self.rows += x.shape[0]
        return self.inner(x, sigma, *args)


def count_teacher_loads(monkeypatch, module) -> list[CountingTeacher]:
    """Make ``module.load_teacher`` hand out counting wrappers; returns the list they are appended to."""
    real, made = module.load_teacher, []

    def load(path):
        denoiser, kind = real(path)
        made.append(CountingTeacher(denoiser))
        return made[-1], kind

    monkeypatch.setattr(module, "load_teacher", load)
    return made


def smoke_job(smoke, out, cfg):
    """A StudentJob on the smoke run's teacher and feature net."""
    from cmt.stages.student import StudentJob

    results = smoke / "results" / "smoke"
    teacher, featnet = results / "teacher", results / "featnet" / "featnet.safetensors"
    return StudentJob(cfg["data"], cfg["precond"], 0, teacher, featnet, out, out.parent / f"{out.name}-work", "cpu")


def smoke_config():
    from cmt.config import load_config

    return load_config(ROOT / "config" / "config.yaml", ROOT / "config" / "smoke.yaml")


def pytest_collection_modifyitems(items):
    """Tests on the real smoke workflow run are `slow` (`pytest -m "not slow"`: the unit tests only)."""
    for item in items:
        if "smoke" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
