"""DVC versions the workflow's artifacts: repro, push to a local remote, pull into a fresh clone, nothing to redo."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from helpers.project import ROOT, snakemake

DVC = Path(sys.executable).parent / "dvc"
GIT = ["git", "-c", "user.name=cmt-test", "-c", "user.email=test@cmt.invalid"]


def run(cwd: Path, *cmd: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    # timeout: a hang guard; `dvc repro` reruns the smoke pipeline
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def dvc_project(smoke: Path, repo: Path) -> Path:
    """A git + DVC repository holding the smoke project, with the main job's DVC stage pointed at the smoke config."""
    shutil.copytree(smoke, repo, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "work"))
    shutil.copytree(ROOT / "cmt", repo / "cmt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["ablations"]["outs"] == [{"results/ablations": {"persist": True}}]
    stage = stages["default"]
    stage |= {
        "cmd": stage["cmd"] + " --configfile config/smoke.yaml",
        "params": [{"config/config.yaml": None}, {"config/smoke.yaml": None}],
        "outs": [{"results/smoke": {"persist": True}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"smoke": stage}}))
    run(repo, *GIT, "init", "-q")
    run(repo, str(DVC), "init", "-q")
    return repo


def test_repro_push_pull_into_fresh_clone(smoke, tmp_path):
    repo, remote = dvc_project(smoke, tmp_path / "repo"), tmp_path / "remote"
    run(repo, str(DVC), "remote", "add", "-d", "local", str(remote))
    assert "Running stage 'smoke'" in run(repo, str(DVC), "repro")
    run(repo, *GIT, "add", "-A")
    run(repo, *GIT, "commit", "-qm", "pipeline")
    assert "pushed" in run(repo, str(DVC), "push")
    assert "didn't change" in run(repo, str(DVC), "repro")
    assert "up to date" in run(repo, str(DVC), "status")

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


def test_a_rerun_that_reproduces_the_weights_changes_only_run_records(smoke, killed_rerun, tmp_path):
    """Version the smoke run, then put a second run's results in its place (a fresh run from scratch, killed once and
    resumed): DVC finds the same model files, trajectory shards, scores, grids and curves; only per-run records
    (wall times, logs, MLflow) differ."""
    repo = dvc_project(smoke, tmp_path / "repo")
    run(repo, str(DVC), "repro")
    run(repo, *GIT, "add", "-A")
    run(repo, *GIT, "commit", "-qm", "pipeline")
    shutil.rmtree(repo / "results" / "smoke")
    rerun = killed_rerun[0] / "results" / "smoke"
    shutil.copytree(rerun, repo / "results" / "smoke", ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    assert "modified" in run(repo, str(DVC), "status")
    diff = json.loads(run(repo, str(DVC), "diff", "--json", "HEAD"))
    changed = {entry["path"] for entry in diff["modified"]} - {"results/smoke/"}
    assert not diff["added"] and not diff["deleted"] and not diff["renamed"]
    assert changed and all(RECORD.search(path) for path in changed), sorted(changed)
    content = [f for f in (repo / "results" / "smoke").rglob("*") if f.is_file() and not RECORD.search(str(f))]
    assert {f.name for f in content} >= {"model.safetensors", "shard-00000.safetensors", "scores.json", "loss.png"}
    before, after = (table_without_wall_time(root / "results/smoke/tables/main.csv") for root in (smoke, repo))
    assert before == after  # the main table differs in its wall-time column only


# Per-run records: job records, Snakemake's benchmarks and logs, and the main table's wall-time column.
# per-run records: wall times and what is drawn from them (device-hours and their plot)
RECORD = re.compile(
    r"(/run\.json|/benchmarks/.*\.tsv|/logs/.*\.log|/tables/main\.(csv|md)|/tables/score_vs_device_hours\.png)$"
)


def table_without_wall_time(path: Path) -> list[dict]:
    with path.open() as fh:
        return [{k: v for k, v in row.items() if not k.startswith(("wall", "device-h"))} for row in csv.DictReader(fh)]
