"""Lint and format checks (ruff, pinned in the test extra) over the package and the tests."""

import subprocess
import sys
from pathlib import Path

from helpers.project import ROOT, load_tool

RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_lint_and_format():
    paths = ["cmt", "tests", "tools", "benchmarks"]
    lint = subprocess.run([str(RUFF), "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([str(RUFF), "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


def test_no_function_in_cmt_breaks_the_size_rule():
    """At most 60 lines and 7 parameters a function (tools/function_size.py; its EXEMPT list aside)."""
    done = subprocess.run([sys.executable, "tools/function_size.py"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_cmt_imports_flow_one_way_without_a_cycle_and_its_root_stays_small():
    """tools/import_graph.py: no cycle among modules or folders, no import from a lower layer to cli or stages,
    and at most a dozen modules at cmt/'s root."""
    done = subprocess.run([sys.executable, "tools/import_graph.py"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    graph = load_tool("import_graph")
    root = [m for m in graph.graph() if graph.folder(m) == "root" and m != "cmt"]
    assert len(root) <= 12, root


def test_the_import_check_finds_a_cycle_a_folder_cycle_and_an_upward_import():
    graph = load_tool("import_graph")
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert graph.cycles(edges) == [["a", "b", "c"]]
    modules = {"cmt.data.batches": {"cmt.objectives.base"}, "cmt.objectives.base": {"cmt.data.labels"}}
    assert graph.cycles(graph.folder_graph({**modules, "cmt.data.labels": set()})) == [["data", "objectives"]]
    assert graph.upward({"cmt.numerics.solvers": {"cmt.stages.evaluate"}, "cmt.stages.evaluate": set()}) == [
        "cmt.numerics.solvers -> cmt.stages.evaluate"
    ]
