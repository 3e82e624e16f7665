"""Wall time of the workflow: total and per rule (from Snakemake's `benchmark:` files).

    .venv/bin/python benchmarks/pipeline.py --run                          # `all`, fresh, in a scratch copy
    .venv/bin/python benchmarks/pipeline.py --overlay config/ablations.yaml --target all_ablations --run
    .venv/bin/python benchmarks/pipeline.py --results results/default          # summarise an existing run

Targets: the embedded default `all` within 15 minutes (issue 3) and `all_ablations` within 90 minutes
(issue 4) on a 2-core machine. The scratch copy carries its own `cmt/`, which both Snakemake and the jobs
import, so editing the checkout while a long run goes on changes nothing in it, and an older commit's
checkout benchmarks its own code.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmt.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def summarise(results: Path) -> list[tuple[str, float, float]]:
    """(job, wall seconds, max RSS MB) per benchmark file, slowest first."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        with tsv.open() as fh:
            rec = next(csv.DictReader(fh, delimiter="\t"))
        rss = float(rec["max_rss"]) if rec["max_rss"] not in ("-", "NA") else float("nan")
        rows.append((str(tsv.relative_to(results / "benchmarks").with_suffix("")), float(rec["s"]), rss))
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", help="a config overlay on config/config.yaml (e.g. config/smoke.yaml)")
    parser.add_argument("--results", type=Path, help="summarise this results folder instead of running")
    parser.add_argument("--target", default="all", help="the Snakemake target to run")
    parser.add_argument("--run", action="store_true", help="run `snakemake --cores 2 TARGET` in a scratch copy")
    args = parser.parse_args()
    results = args.results
    if args.run:
        scratch = Path(tempfile.mkdtemp(prefix="cmt-bench-"))
        for folder in ("cmt", "workflow", "config", "envs"):
            shutil.copytree(ROOT / folder, scratch / folder)
        snakemake = Path(sys.executable).parent / "snakemake"
        t0 = time.perf_counter()
        layers = ["config/config.yaml", *([args.overlay] if args.overlay else [])]
        command = [str(snakemake), "--cores", "2", args.target, "--configfile", *layers]
        env = {**os.environ, "PYTHONPATH": str(scratch)}  # Snakemake itself imports the copy's cmt, as the jobs do
        subprocess.run(command, cwd=scratch, check=True, env=env)
        print(f"total wall time: {time.perf_counter() - t0:.0f} s ({args.target}, {' + '.join(layers)}, 2 cores)")
        results = scratch / "results" / load_config(*(scratch / layer for layer in layers))["name"]
    if results is None:
        parser.error("give --run or --results")
    rows = summarise(results)
    print("| job | wall s | max RSS MB |\n|---|---|---|")
    for job, seconds, rss in rows:
        print(f"| {job} | {seconds:.1f} | {rss:.0f} |")
    print(f"| sum of jobs | {sum(r[1] for r in rows):.1f} | |")


if __name__ == "__main__":
    main()
