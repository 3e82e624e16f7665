"""How fast a job stops when the Inception or LPIPS weights are missing, and what it says (issue 11: under 2 s,
naming the file). Each verb runs as the workflow runs it, in a fresh process, with an empty weights folder:

    .venv/bin/python benchmarks/missing_weights.py

Prints the wall time of the whole process (interpreter, imports, config) and the last line of its message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(verb: list[str], env: dict) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cmt", *verb], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return time.perf_counter() - start, done.returncode, lines[-1] if lines else ""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CMT_INCEPTION_DIR": f"{tmp}/inception", "TORCH_HOME": f"{tmp}/torch"}
        fid = json.dumps({"data": {"source": "digits"}})
        lpips = json.dumps({"midtrain": {"loss": "lpips", "source": "online"}})
        cases = {
            "fid-reference (Inception)": ["fid-reference", "--params", fid, "--out", f"{tmp}/r.npz", "--work", tmp],
            "midtrain (LPIPS-VGG)": [
                "midtrain",
                "--params",
                lpips,
                "--teacher",
                f"{tmp}/t",
                "--out",
                tmp,
                "--work",
                tmp,
            ],
        }
        for name, verb in cases.items():
            seconds, code, message = run(verb, env)
            print(f"{name}: exit {code} after {seconds:.2f} s\n    {message}")


if __name__ == "__main__":
    main()
