"""Shared test set-up: tool caches in a temporary folder (environment.md 9) and the Snakemake smoke project."""

import os
import tempfile

import pytest
from helpers.project import copy_project, killed_and_resumed, planned_jobs, snakemake, sweep_overlay

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
for var in [v for v in os.environ if v.startswith("CMT_SLURM_")]:  # a user's cluster settings (cmt/workflow/slurm.py)
    del os.environ[var]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    work = copy_project(tmp_path_factory.mktemp("project"))
    snakemake(work, "--cores", "2", "all", "--configfile", "config/smoke.yaml")
    return work


@pytest.fixture(scope="session")
def swept(smoke, tmp_path_factory):
    """The smoke project after the reduced sweep's `all_ablations` (run locally); its arguments and the jobs its
    dry run planned beforehand."""
    args = ("--configfile", "config/smoke.yaml", str(sweep_overlay(tmp_path_factory.mktemp("sweep"))))
    planned = planned_jobs(snakemake(smoke, "-n", "all_ablations", *args).stdout)
    snakemake(smoke, "--cores", "2", "all_ablations", *args)
    return args, planned


@pytest.fixture(scope="session")
def killed_rerun(smoke, tmp_path_factory):
    """A second, fresh run of the smoke config, hard-killed once mid-CMT and resumed (``killed_and_resumed``): the
    project and what each step showed. Tests of resumption and of reproducibility (Snakemake's, DVC's) share it."""
    project = copy_project(tmp_path_factory.mktemp("killed"))
    return project, killed_and_resumed(project)


def pytest_collection_modifyitems(items):
    """Tests on the real smoke workflow run are `slow` (`pytest -m "not slow"`: the unit tests only)."""
    for item in items:
        if "smoke" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
