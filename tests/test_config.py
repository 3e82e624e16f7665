"""Config layering: schema defaults in one place, overlays that hold only differences, validation of files and of
a job's --params with the same messages (file or source, dotted key, what was expected)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from cmt.cli import main
from cmt.config import (
    ConfigError,
    config_hash,
    config_layers,
    fill_defaults,
    load_config,
    load_schema,
    merge_layers,
    properties,
    read_yaml,
    resolve,
    resolve_params,
    runtime_minutes,
    scaled_resources,
    write_params,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "config.yaml"
OVERLAYS = sorted(p for p in (ROOT / "config").glob("*.yaml") if p != DEFAULT)
RECIPE = ROOT / "config" / "paper.yaml"  # the paper's recipe: states every value with its source, defaults too
SHARED = ROOT / "config" / "imagenet512-recipe.yaml"  # the ImageNet-512 settings: a recipe, not a run (no name)
PAPER = [
    RECIPE,
    *(p for p in OVERLAYS if (read_yaml(p) or {}).get("extends") == RECIPE.name),
    ROOT / "config" / "imagenet256.yaml",  # the latent run, on MeanFlow's recipe rather than CMT's pixel one
]


def write(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def lookup(tree, path):
    """The value at ``path``; a key the tree lacks (e.g. a preset field left to the preset) has no default to repeat."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return object()
        tree = tree[key]
    return tree


@pytest.mark.parametrize(
    "overlay", [None, *(p for p in OVERLAYS if p not in (RECIPE, SHARED))], ids=lambda p: p.name if p else "-"
)
def test_shipped_configs_validate(overlay):
    cfg = load_config(DEFAULT, *([overlay] if overlay else []))
    assert cfg["name"] and cfg["evaluate"]["seed"] == 123  # a default filled in


@pytest.mark.parametrize("overlay", [p for p in OVERLAYS if p != RECIPE], ids=lambda p: p.name)
def test_overlays_hold_only_what_differs(overlay):
    """From config.yaml and whatever the overlay extends (a paper dataset config: from config/paper.yaml)."""
    raw = read_yaml(overlay)
    extended = [overlay.parent / raw.pop("extends")] if "extends" in raw else []
    schema = load_schema()
    base = fill_defaults(merge_layers(config_layers([DEFAULT, *extended])), schema, schema)  # not a run by itself
    same = [".".join(path) for path, value in leaves(raw) if path[0] != "name" and lookup(base, path) == value]
    assert not same, f"{overlay.name} repeats the default of {same}"


@pytest.mark.parametrize("config", PAPER, ids=lambda p: p.name)
def test_every_value_of_a_paper_config_carries_its_source(config):
    """A line that sets a value (not a section header, name or extends) ends with a comment: its method.md section,
    our derivation [D], or UNKNOWN."""
    bare = [
        line
        for line in config.read_text().splitlines()
        if re.match(r"\s*[\w-]+: \S", line) and "#" not in line and not re.match(r"(name|extends):", line)
    ]
    assert not bare, f"{config.name}: values without a source comment: {bare}"


def test_a_dataset_config_extends_the_recipe_and_overrides_it(tmp_path):
    cfg = load_config(DEFAULT, ROOT / "config" / "cifar10.yaml")
    assert cfg["midtrain"]["loss"] == "lpips" and cfg["posttrain"]["ect"]["q"] == 4096  # recipe, then dataset
    assert cfg["evaluate"]["num_samples"] == 50000 and "extends" not in cfg
    loop = write(tmp_path, {"extends": "b.yaml", "name": "a"}, "a.yaml")
    write(tmp_path, {"extends": "a.yaml"}, "b.yaml")
    with pytest.raises(ConfigError, match="a.yaml: extends itself through"):
        load_config(loop)


def test_default_config_repeats_no_schema_default():
    raw = read_yaml(DEFAULT)
    defaults = resolve({"name": "x"}, "schema")
    same = [".".join(p) for p, v in leaves(raw) if p[0] in defaults and p[0] != "name" and lookup(defaults, p) == v]
    assert not same, f"config.yaml repeats schema defaults: {same}"


def test_repeated_blocks_live_in_defs():
    """Every trainer's section takes the loop block from $defs and only restates a default of it."""
    schema = load_schema()
    loop = set(schema["$defs"]["loop"]["properties"])
    sections = [schema["$defs"]["midtrain"], schema["properties"]["teacher"]["properties"]["train"]]
    sections += [schema["properties"]["posttrain"]["properties"][m] for m in ("ect", "ecd", "meanflow")]
    for section in sections:
        assert loop <= set(properties(section, schema))
        assert all(set(section["properties"][key]) == {"default"} for key in loop & set(section["properties"]))
    assert "ema_beta" not in properties(schema["properties"]["teacher"]["properties"]["train"], schema)


def test_defaults_fill_absent_keys_but_never_override():
    cfg = resolve({"name": "x", "midtrain": {"iterations": 7}}, "x")
    assert cfg["midtrain"]["iterations"] == 7 and cfg["midtrain"]["lr"] == 0.0005
    assert cfg["teacher"]["train"]["optimizer"] == "adam" and cfg["posttrain"]["ect"]["optimizer"] == "radam"
    assert "fetch" not in cfg["teacher"] and "ablations" not in cfg
    partial = resolve({"name": "x", "resources": {"midtrain": {"gpu": 1}}}, "x")["resources"]
    assert partial["midtrain"] == {"gpu": 1, "cpus": 2, "mem_mb": 4000, "runtime": "2h"}
    assert partial["teacher"]["gpu"] == 0


def test_variants_hold_overrides_only():
    cfg = load_config(DEFAULT)
    assert cfg["ablations"]["cmt"]["slow"] == {"points": "one"}  # no defaults filled into an override


def test_typo_names_file_and_key(tmp_path):
    path = write(tmp_path, {"teacher": {"trian": {"iterations": 3}}}, "typo.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, path)
    msg = str(err.value)
    assert (
        f"{path}: teacher.trian: unknown key (allowed here: fetch, guidance, guide, kind, sample, source, train)" in msg
    )


def test_typo_in_a_composed_block_names_the_key_and_what_is_allowed(tmp_path):
    path = write(tmp_path, {"posttrain": {"ecd": {"teacher_stpe": "euler"}}})
    with pytest.raises(ConfigError, match=r"posttrain\.ecd\.teacher_stpe: unknown key \(allowed here: b, batch_size"):
        load_config(DEFAULT, path)


def test_wrong_type_says_what_was_expected_and_names_the_overlay(tmp_path):
    path = write(tmp_path, {"teacher": {"train": {"lr": "fast"}}})
    with pytest.raises(ConfigError, match=rf"{path}: teacher\.train\.lr: expected number, got 'fast' \(str\)"):
        load_config(DEFAULT, path)


def test_a_wrong_value_in_a_composed_block_is_one_line_and_yamls_text_exponent_gets_a_hint(tmp_path):
    """posttrain.meanflow takes its keys through allOf/$ref: the schema's echo of a failed key as 'unevaluated' is not
    reported as a second, nameless 'unknown key' line; PyYAML reads `2e-5` as text."""
    path = tmp_path / "lr.yaml"
    path.write_text("posttrain:\n  meanflow: {lr: 2e-5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, path)
    assert str(err.value).splitlines() == [
        f"{path}: posttrain.meanflow.lr: expected number, got '2e-5' (str); YAML reads 2e-5 as text, write 2.0e-5"
    ]


def test_enum_lists_choices_and_runtime_needs_units(tmp_path):
    path = write(tmp_path, {"trajectories": {"solver": "dpmpp4m"}, "resources": {"midtrain": {"runtime": "90"}}})
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, path)
    msg = str(err.value)
    assert "trajectories.solver: expected one of" in msg and "'dpmpp3m_legacy'" in msg
    assert "resources.midtrain.runtime: '90' does not match" in msg


def test_missing_name_and_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="name: required key is missing"):
        load_config(write(tmp_path, {"seed": 1}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_params_of_a_job_are_validated_like_a_config():
    with pytest.raises(ConfigError, match=r"^--params: midtrain\.lossx: unknown key"):
        resolve_params(json.dumps({"midtrain": {"lossx": 1}}))
    with pytest.raises(ConfigError, match=r"--params: seed: expected integer"):
        resolve_params(json.dumps({"seed": "zero"}))
    with pytest.raises(ConfigError, match="--params: not valid JSON"):
        resolve_params("{midtrain")
    params = resolve_params(json.dumps({"midtrain": {"iterations": 3}, "job": {"job": "mid/base/heun-nfe4/s0"}}))
    assert params["midtrain"]["iterations"] == 3 and params["precond"]["sigma_max"] == 80.0


def test_cli_verb_refuses_bad_params_before_doing_anything(tmp_path, capsys):
    argv = ["midtrain", "--params", '{"midtrain": {"lossx": 1}}', "--teacher", str(tmp_path / "absent")]
    argv += ["--featnet", "f", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    assert main(argv) == 2
    assert "--params: midtrain.lossx: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_check_config_merges_layers_and_prints_the_resolved_config(tmp_path, capsys):
    assert main(["check-config", str(DEFAULT), str(ROOT / "config" / "smoke.yaml")]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert (
        resolved["name"] == "smoke"
        and resolved["midtrain"]["iterations"] == 40
        and resolved["midtrain"]["lr"] == 0.0005
    )
    path = write(tmp_path, {"seed": -3})
    assert main(["check-config", "-q", str(DEFAULT), str(path)]) == 2
    assert f"{path}: seed:" in capsys.readouterr().err


def test_resources_scale_with_the_attempt():
    assert runtime_minutes("90m") == 90 and runtime_minutes("2h") == 120 and runtime_minutes("30s") == 0.5
    entry = {"gpu": 2, "cpus": 4, "mem_mb": 8000, "runtime": "1.5h"}
    assert scaled_resources(entry, 1) == {"gpu": 2, "mem_mb": 8000, "runtime": "90m"}
    assert scaled_resources(entry, 3) == {"gpu": 2, "mem_mb": 24000, "runtime": "270m"}
    with pytest.raises(ConfigError, match="unit"):
        runtime_minutes("90")


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_keys_added_after_jobs_ran_stay_out_of_their_params_at_their_defaults(tmp_path):
    # MeanFlow's guidance, label dropout and r sampler, a flowmap teacher's MeanFlow settings and student_network were
    # added after the study ran: at their defaults a job's params file (its rerun trigger) is what it was
    config = load_config(ROOT / "config" / "config.yaml")
    before = {k: v for k, v in config["posttrain"]["meanflow"].items() if k not in ("guidance", "label_dropout")}
    before = {k: v for k, v in before.items() if k != "r_logit_normal"}
    teacher = {**config["teacher"], "train": {k: v for k, v in config["teacher"]["train"].items() if k != "meanflow"}}
    now = {"posttrain": {"meanflow": config["posttrain"]["meanflow"]}, "teacher": config["teacher"]}
    now["student_network"] = None
    old = {"posttrain": {"meanflow": before}, "teacher": teacher}
    assert write_params(now, tmp_path) == write_params(old, tmp_path)
    guided = {**now, "posttrain": {"meanflow": {**before, "guidance": {**config["posttrain"]["meanflow"]["guidance"]}}}}
    guided["posttrain"]["meanflow"]["guidance"]["omega"] = 2.0
    assert write_params(guided, tmp_path) != write_params(old, tmp_path)
    assert resolve_params(write_params(old, tmp_path))["posttrain"]["meanflow"] == config["posttrain"]["meanflow"]
