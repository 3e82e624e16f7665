"""The method registry is the one list of methods: the config schema, the CLI, the Snakefile and the tables agree
with it, and no other module spells the method names out as a list."""

import ast
import importlib
from pathlib import Path

import pytest

from cmt.cli import build_parser
from cmt.config import load_schema
from cmt.inits import DEFAULT_INITS, INITS
from cmt.nets import FAMILIES, PRESETS
from cmt.objectives import registry
from cmt.report.tables import INIT_NAMES, METHOD_NAMES
from cmt.teachers import TEACHER_KINDS

ROOT = Path(__file__).resolve().parents[1]
POST = list(registry.names("posttrain"))


def enum_at(schema: dict, *path: str) -> list:
    node = schema
    for key in path:
        node = node[key]
    return node["enum"]


def test_the_schemas_enums_list_the_registrys_names():
    schema = load_schema()
    props = schema["properties"]
    assert enum_at(props, "posttrain", "properties", "methods", "items") == POST
    sweep = schema["$defs"]["sweep"]  # the schema of every sweep section (ablations, study, study_extras)
    assert enum_at(sweep, "properties", "post", "properties", "methods", "items") == POST
    assert enum_at(sweep, "properties", "post", "properties", "cmt_variant", "propertyNames") == POST
    assert list(sweep["properties"]["post_variants"]["additionalProperties"]["properties"]) == POST
    assert enum_at(schema["$defs"], "midtrain", "properties", "form") == list(registry.names("midtrain"))
    for section in (props["posttrain"], sweep["properties"]["post"]):
        assert enum_at(section["properties"], "inits", "items") == list(INITS)
    post = sweep["properties"]["post"]["properties"]
    assert post["methods"]["default"] == POST and post["inits"]["default"] == list(DEFAULT_INITS)  # a sweep's
    assert props["posttrain"]["properties"]["inits"]["default"] == list(DEFAULT_INITS)
    midtrain_inits = enum_at(schema["$defs"], "midtrain", "properties", "init")
    assert set(midtrain_inits) == {n for n, s in INITS.items() if s.weights != "job"}  # CMT starts from no other job
    assert enum_at(props["teacher"]["properties"], "kind") == list(TEACHER_KINDS)
    sections = set(props["posttrain"]["properties"]) - {"methods", "inits", "teacher"}
    assert sections == set(POST)  # one config section per post-training method, no more


def test_the_schemas_network_presets_are_the_preset_table():
    assert enum_at(load_schema()["properties"]["network"]["properties"], "preset") == list(PRESETS)
    assert {config.family for config in PRESETS.values()} == set(FAMILIES)  # every family has a preset


def test_the_cli_snakefile_and_tables_read_the_registry():
    post = build_parser()._subparsers._group_actions[0].choices["posttrain"]
    choices = {a.dest: a.choices for a in post._actions if a.choices}
    assert list(choices["method"]) == POST and list(choices["init"]) == list(INITS)
    assert list(METHOD_NAMES) == POST and list(INIT_NAMES) == list(INITS)
    snakefile = (ROOT / "workflow" / "Snakefile").read_text()
    assert 'method="|".join(registry.names("posttrain"))' in snakefile


@pytest.mark.parametrize("entry", registry.METHODS, ids=lambda m: f"{m.stage}-{m.name}")
def test_every_entry_is_complete(entry):
    assert entry.stage in registry.STAGES and entry.kind in registry.MODEL_KINDS
    assert set(entry.reads) <= set(registry.READS) and entry.teacher_nfe in registry.TEACHER_NFE
    assert callable(importlib.import_module(entry.module).build)
    assert (entry.teacher_nfe == "per_row") == ("teacher" in entry.reads)  # ECD's teacher steps are its NFE
    assert (entry.teacher_nfe == "per_trajectory") == ("trajectories" in entry.reads)


def test_an_unknown_method_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="unknown posttrain method 'sct'; valid: ect, ecd, meanflow"):
        registry.method("posttrain", "sct")


def string_lists(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines of list/tuple/set literals with two or more of ``names`` among their string items."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(items & names) >= 2:
                found.append(node.lineno)
    return found


def test_method_names_are_listed_in_the_registry_only():
    """The registry itself names each method once, in its entry; a list of several names anywhere in ``cmt/`` (or an
    alternation in the rules) would be a second copy."""
    names = {m.name for m in registry.METHODS}
    assert string_lists(ast.parse('x = ("ect", "meanflow")'), names)  # the scan sees such a list
    listed = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "cmt").rglob("*.py"))
        if (lines := string_lists(ast.parse(path.read_text()), names))
    }
    assert not listed, f"method names listed outside cmt/objectives/registry.py: {listed}"
    rules = [p for p in (ROOT / "workflow").rglob("*") if p.is_file()]
    assert not [p.name for p in rules if "ect|ecd" in p.read_text() or "'ect', 'ecd'" in p.read_text()]


def test_the_registries_and_the_serial_rules_modules_load_without_torch():
    """The Snakefile reads the registries and the serial rules (ingest, report) run the tracking and table modules:
    none of them may pull torch in (seconds of start-up per rule)."""
    import subprocess
    import sys

    modules = (
        "cmt.objectives.registry, cmt.inits, cmt.teachers, cmt.workflow.jobs, cmt.report.tracking, cmt.report.tables, "
        "cmt.report.ablation_tables"
    )
    code = f"import sys, {modules}, cmt.report.ablation_tables; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
