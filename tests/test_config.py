"""Config files: the shipped ones validate; every mistake names the file, the key and the expectation."""

from pathlib import Path

import pytest
import yaml

from cmt.cli import main
from cmt.config import ConfigError, config_hash, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_cfg():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def write(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    assert load_config(path)["name"]


def test_typo_names_file_and_key(tmp_path, default_cfg):
    default_cfg["teacher"]["trian"] = default_cfg["teacher"].pop("train")
    path = write(tmp_path, default_cfg, "typo.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "teacher.trian: unknown key" in msg and "train" in msg


def test_wrong_type_says_what_was_expected(tmp_path, default_cfg):
    default_cfg["teacher"]["train"]["lr"] = "fast"
    path = write(tmp_path, default_cfg)
    with pytest.raises(ConfigError, match=r"teacher\.train\.lr: expected number, got 'fast' \(str\)"):
        load_config(path)


def test_enum_lists_choices_and_missing_key(tmp_path, default_cfg):
    default_cfg["trajectories"]["solver"] = "dpmpp4m"
    del default_cfg["precond"]["sigma_max"]
    path = write(tmp_path, default_cfg)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "trajectories.solver: expected one of" in msg and "'dpmpp3m_legacy'" in msg
    assert "precond.sigma_max: required key is missing" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_cli_reports_config_error(tmp_path, default_cfg, capsys):
    default_cfg["seed"] = -3
    path = write(tmp_path, default_cfg)
    assert main(["check-config", str(path)]) == 2
    assert f"{path}: seed:" in capsys.readouterr().err


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
