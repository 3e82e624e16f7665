"""DVC versions the workflow's artifacts: repro, push to a local remote, pull into a fresh clone, nothing to redo."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT, snakemake

DVC = Path(sys.executable).parent / "dvc"
GIT = ["git", "-c", "user.name=cmt-test", "-c", "user.email=test@cmt.invalid"]


def run(cwd: Path, *cmd: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def test_repro_push_pull_into_fresh_clone(smoke, tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    shutil.copytree(smoke, repo, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "work"))
    shutil.copytree(ROOT / "cmt", repo / "cmt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["ablations"]["outs"] == [{"results/ablations": {"persist": True}}]
    stage = stages["default"]  # the main job's stage, pointed at the smoke config
    stage |= {
        "cmd": stage["cmd"] + " --configfile config/smoke.yaml",
        "params": [{"config/config.yaml": None}, {"config/smoke.yaml": None}],
        "outs": [{"results/smoke": {"persist": True}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"smoke": stage}}))
    run(repo, *GIT, "init", "-q")
    run(repo, str(DVC), "init", "-q")
    run(repo, str(DVC), "remote", "add", "-d", "local", str(remote))
    out = run(repo, str(DVC), "repro")
    assert "smoke" in out
    run(repo, *GIT, "add", "-A")
    run(repo, *GIT, "commit", "-qm", "pipeline")
    assert "pushed" in run(repo, str(DVC), "push")

    clone = tmp_path / "clone"
    run(tmp_path, *GIT, "clone", "-q", str(repo), str(clone))
    assert not (clone / "results").exists()
    run(clone, str(DVC), "pull")
    teacher = "results/smoke/teacher/model.safetensors"
    assert (clone / teacher).read_bytes() == (repo / teacher).read_bytes()
    assert (clone / "results/smoke/tables/main.md").exists()
    snakemake(clone, "--touch", "--cores", "1", "all", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in snakemake(clone, "-n", "all", "--configfile", "config/smoke.yaml").stdout
    assert "up to date" in run(clone, str(DVC), "status")
