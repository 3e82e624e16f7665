"""Two fresh runs of the smoke config through Snakemake, their artifacts' sha256 side by side, and their wall times.

    .venv/bin/python benchmarks/reproducibility.py                       # two plain runs: every hash matches
    .venv/bin/python benchmarks/reproducibility.py --kill                # B hard-killed at its first checkpoint
    .venv/bin/python benchmarks/reproducibility.py --b-overlay det.yaml  # B with an overlay, e.g. `deterministic: true`

With ``--kill``, run B's whole Snakemake tree gets SIGKILL as soon as a training job has written a resume
checkpoint; then `snakemake --unlock` and the same command again, as the README says. Exits 1 if any
artifact differs. Compared: model files, trajectory shards and index, meta, metrics, scores and images;
not the per-run records (run.json, logs, benchmarks, the MLflow store and its copies).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CONTENT = ("*.safetensors", "index.json", "meta.json", "metrics.jsonl", "scores.json", "*.png")


def artifact_hashes(results: Path) -> dict[str, str]:
    """sha256 of every content file below a results folder (MLflow's copies excluded)."""
    files = {f for pattern in CONTENT for f in results.rglob(pattern) if "mlartifacts" not in f.parts}
    return {str(f.relative_to(results)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


def fresh_project(scratch: Path, overlay: Path | None) -> Path:
    for folder in ("workflow", "config", "envs"):
        shutil.copytree(ROOT / folder, scratch / folder)
    if overlay is not None:
        shutil.copy(overlay, scratch / "config" / "overlay.yaml")
    return scratch


def snakemake_args(project: Path, cores: int) -> list[str]:
    overlay = ["config/overlay.yaml"] if (project / "config" / "overlay.yaml").exists() else []
    return [str(SNAKEMAKE), "--cores", str(cores), "all", "--configfile", "config/smoke.yaml", *overlay]


def run_killed(project: Path, args: list[str]) -> str:
    """Start the run, SIGKILL its process group at the first resume checkpoint, unlock, run again."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(args, cwd=project, start_new_session=True, **quiet)
    while proc.poll() is None and not list((project / "work").rglob("resume.pt")):
        time.sleep(0.2)
    killed = [str(p.relative_to(project)) for p in (project / "work").rglob("resume.pt")]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([*args, "--unlock"], cwd=project, check=True, **quiet)
    subprocess.run(args, cwd=project, check=True, **quiet)
    return f"killed with checkpoints {', '.join(killed) or 'none (the run had finished)'}"


def timed_run(project: Path, args: list[str], kill: bool) -> tuple[float, str]:
    t0 = time.perf_counter()
    if kill:
        how = run_killed(project, args)
    else:
        subprocess.run(args, cwd=project, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        how = "uninterrupted"
    return time.perf_counter() - t0, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--kill", action="store_true", help="hard-kill run B at its first checkpoint, then resume")
    parser.add_argument("--b-overlay", type=Path, help="a config overlay for run B only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmt-repro-") as scratch:
        hashes, lines = [], []
        for name, overlay, kill in (("A", None, False), ("B", args.b_overlay, args.kill)):
            project = fresh_project(Path(scratch) / name, overlay)
            seconds, how = timed_run(project, snakemake_args(project, args.cores), kill)
            hashes.append(artifact_hashes(project / "results" / "smoke"))
            lines.append(f"run {name}: {seconds:.1f} s wall, {how}")
    a, b = hashes
    width = max(map(len, a | b))
    for name in sorted(a | b):
        verdict = "=" if a.get(name) == b.get(name) else "DIFFERS"
        print(f"{name:<{width}}  {a.get(name, '-')[:12]:<12}  {b.get(name, '-')[:12]:<12}  {verdict}")
    print(*lines, sep="\n")
    differ = sum(a.get(n) != b.get(n) for n in a | b)
    print(f"{len(a | b)} artifacts, {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
