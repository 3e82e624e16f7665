"""Expected failures read as one line naming the file and the key; bugs keep their traceback; a rule's params travel
as a file named by their content."""

import json
import os
import subprocess
import sys

import pytest

from cmt import cli
from cmt.config import ConfigError, resolve_params, write_params
from cmt.errors import BadInput, CmtError, MissingInput, about
from cmt.formats import checkpoint_import


def run_cmt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmt", *args], capture_output=True, text=True, env=env)


def test_an_expected_error_is_one_line_without_a_traceback_and_debug_shows_it(tmp_path):
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"garbage")
    done = run_cmt("inspect-checkpoint", str(damaged))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"cmt inspect-checkpoint: error: {damaged}: not a safetensors checkpoint: "
        "Error while deserializing header: header too small"
    ]
    debug = run_cmt("--debug", "inspect-checkpoint", str(damaged))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "cmt.errors.BadInput" in debug.stderr
    env = {**os.environ, "CMT_DEBUG": "1"}
    assert "Traceback" in run_cmt("inspect-checkpoint", str(tmp_path / "none"), env=env).stderr


def test_a_config_error_returns_2_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    verb = ["midtrain", "--params", '{"midtrain": {"lossx": 1}}', "--teacher", "t", "--out", "o", "--work", "w"]
    assert cli.main(verb) == 2
    assert capsys.readouterr().err.startswith("cmt midtrain: config error: --params: midtrain.lossx: unknown key")

    def broken(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(checkpoint_import, "describe", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["inspect-checkpoint", "x"])


def test_about_names_the_key_once_and_leaves_other_errors_alone():
    with pytest.raises(BadInput, match=r"^teacher.fetch: f.pkl: refused$"):
        with about("teacher.fetch"), about("teacher.fetch"):
            raise BadInput("f.pkl: refused")
    with pytest.raises(KeyError) as caught, about("midtrain"):
        raise KeyError("x")
    assert str(caught.value) == "'x'"
    assert issubclass(MissingInput, FileNotFoundError) and issubclass(ConfigError, CmtError)


def test_params_travel_as_a_file_named_by_their_content(tmp_path):
    params = {"midtrain": {"iterations": 3}, "job": {"seed": 0}}
    first = write_params(params, tmp_path)
    assert write_params(dict(reversed(params.items())), tmp_path) == first  # key order does not matter
    assert write_params({**params, "seed": 1}, tmp_path) != first
    assert resolve_params(first) == resolve_params(json.dumps(params))
    bad = tmp_path / "bad.json"
    bad.write_text('{"midtrain": {"lossx": 1}}')
    with pytest.raises(ConfigError, match=f"^{bad}: midtrain.lossx: unknown key"):
        resolve_params(str(bad))
    with pytest.raises(ConfigError, match="neither a JSON object nor a readable file"):
        resolve_params(str(tmp_path / "missing.json"))
