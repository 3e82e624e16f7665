"""YAML configuration, validated against ``cmt/schemas/config.schema.json``.

Every error names the file, the dotted key and what was expected, e.g.
``config/x.yaml: teacher.train.lr: expected number, got 'fast' (str)``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_NAME = "config.schema.json"


class ConfigError(ValueError):
    """A configuration file that cannot be read or does not match the schema."""


def load_schema() -> dict:
    return json.loads(resources.files("cmt.schemas").joinpath(SCHEMA_NAME).read_text())


def read_yaml(path: str | Path) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from err


def validate(cfg: Any, source: str | Path, schema: dict | None = None) -> None:
    """Raise ``ConfigError`` listing every schema violation, each as ``<source>: <key>: <problem>``."""
    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ConfigError("\n".join(f"{source}: {describe(e)}" for e in errors))


def load_config(path: str | Path) -> dict:
    """Read and validate a config file; returns the plain dict."""
    cfg = read_yaml(path)
    validate(cfg, path)
    return cfg


def describe(err: jsonschema.ValidationError) -> str:
    """One line naming the dotted key and the expectation of a schema error."""
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(f"{key}.{k}" if err.absolute_path else k for k in extra)
        return f"{keys}: unknown key (allowed here: {', '.join(allowed)})"
    if err.validator == "required":
        missing = err.message.split("'")[1]
        return f"{key + '.' if err.absolute_path else ''}{missing}: required key is missing"
    if err.validator == "type":
        return f"{key}: expected {_or(err.validator_value)}, got {err.instance!r} ({type(err.instance).__name__})"
    if err.validator == "enum":
        return f"{key}: expected one of {', '.join(map(repr, err.validator_value))}, got {err.instance!r}"
    return f"{key}: {err.message}"


def _or(types: str | list[str]) -> str:
    return types if isinstance(types, str) else " or ".join(types)


def config_hash(subtree: Any) -> str:
    """Short, stable hash of a config subtree (canonical JSON), recorded with every artifact."""
    return hashlib.sha256(json.dumps(subtree, sort_keys=True).encode()).hexdigest()[:12]
