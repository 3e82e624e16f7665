"""Lint and format checks (ruff, pinned in the test extra) over the package and the tests."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_lint_and_format():
    lint = subprocess.run([str(RUFF), "check", "cmt", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([str(RUFF), "format", "--check", "cmt", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


def test_no_function_in_cmt_breaks_the_size_rule():
    """At most 60 lines and 7 parameters a function (benchmarks/function_size.py; its EXEMPT list aside)."""
    done = subprocess.run([sys.executable, "benchmarks/function_size.py"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
