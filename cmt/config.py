"""Configuration: YAML layers, schema defaults and validation (``cmt/schemas/config.schema.json``).

Every key but ``name`` has its default in the schema, the one place defaults live; config files hold only
what differs, and later files override earlier ones key by key (Snakemake's ``--configfile`` merge).
``resolve`` fills the defaults and validates; the workflow calls it on the merged config and every
``python -m cmt`` verb on its ``--params``, so both give the same messages, each naming the file (or
``--params``), the dotted key and what was expected, e.g.
``config/x.yaml: teacher.train.lr: expected number, got 'fast' (str)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cmt.errors import CmtError
from cmt.formats.atomic import atomic_write_bytes

SCHEMA_NAME = "config.schema.json"
JOB_KEY = "job"  # in --params only: the job's axes (cmt/workflow/jobs.py), written as MLflow tags
EXTENDS = "extends"  # in config files only: the files a config builds on (``config_layers``)


class ConfigError(CmtError, ValueError):
    """A configuration that cannot be read or does not match the schema."""


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


def merge(base: Mapping, overlay: Mapping) -> dict:
    """``overlay`` on ``base``: mappings merge key by key, anything else is replaced (as Snakemake's configfiles)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def _resolve_ref(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    return root["$defs"][ref.rsplit("/", 1)[-1]] if ref else {}


def properties(schema: dict, root: dict) -> dict[str, dict]:
    """The properties an object schema allows, through ``$ref`` and ``allOf``; the outermost default wins."""
    found: dict[str, dict] = {}
    for part in [_resolve_ref(schema, root), *schema.get("allOf", [])]:
        if part:
            for key, sub in properties(part, root).items():
                found[key] = {**found.get(key, {}), **sub}
    for key, sub in schema.get("properties", {}).items():
        found[key] = {**found.get(key, {}), **sub}
    return found


_NONE = object()  # a schema without a default (``None`` is a default: ``data.path``)


def _default(schema: dict, root: dict) -> Any:
    for part in (schema, _resolve_ref(schema, root)):
        if "default" in part:
            return copy.deepcopy(part["default"])
    return _NONE


def fill_defaults(instance: dict, schema: dict, root: dict) -> dict:
    """Set every missing key that has a schema default, recursively, in place (maps of named entries, such as
    the CMT variants, hold overrides and get none)."""
    default = _default(schema, root)
    if isinstance(default, dict):
        for key, value in default.items():
            instance.setdefault(key, value)
    for key, sub in properties(schema, root).items():
        if key not in instance:
            value = _default(sub, root)
            if value is _NONE:
                continue
            instance[key] = value
        if isinstance(instance[key], dict):
            fill_defaults(instance[key], sub, root)
    return instance


def stray(err: jsonschema.ValidationError, root: dict) -> bool:
    """An ``unevaluatedProperties`` error that names no unknown key: JSON Schema 2020-12 counts a key whose value
    failed inside an ``allOf``/``$ref`` as unevaluated, so it echoes that key's own error."""
    if err.validator != "unevaluatedProperties" or not isinstance(err.instance, dict):
        return False
    return not set(err.instance) - set(properties(err.schema, root))


def describe(err: jsonschema.ValidationError, root: dict) -> tuple[str, list[str]]:
    """One line naming the dotted key and the expectation of a schema error, and the key's path."""
    path = [str(p) for p in err.absolute_path]
    key = ".".join(path) or "<top level>"
    if err.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(properties(err.schema, root))  # through $ref / allOf for composed blocks
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(".".join([*path, k]) for k in extra)
        return f"{keys}: unknown key (allowed here: {', '.join(allowed)})", [*path, extra[0]] if extra else path
    if err.validator == "required":
        missing = err.message.split("'")[1]
        return f"{'.'.join([*path, missing])}: required key is missing", path
    if err.validator == "type":
        got = f"{err.instance!r} ({type(err.instance).__name__}){_yaml_number_hint(err.instance)}"
        return f"{key}: expected {_or(err.validator_value)}, got {got}", path
    if err.validator == "enum":
        return f"{key}: expected one of {', '.join(map(repr, err.validator_value))}, got {err.instance!r}", path
    if err.validator == "pattern":
        return f"{key}: {err.instance!r} does not match {err.validator_value!r}", path
    return f"{key}: {err.message}", path


def _yaml_number_hint(value: Any) -> str:
    """PyYAML (YAML 1.1) reads ``2e-5`` as text: say how to write it as a number."""
    if not isinstance(value, str) or not re.fullmatch(r"[-+]?[0-9]+e[-+]?[0-9]+", value.strip(), re.I):
        return ""
    mantissa, exponent = value.strip().lower().split("e")
    return f"; YAML reads {value} as text, write {mantissa}.0e{exponent}"


def _or(types: str | list[str]) -> str:
    return types if isinstance(types, str) else " or ".join(types)


def _where(path: list[str], layers: list[tuple[str, Any]], fallback: str) -> str:
    """The last layer that sets ``path`` (or its deepest set parent): where the user must look."""
    for depth in range(len(path), 0, -1):
        for source, data in reversed(layers):
            node = data
            for part in path[:depth]:
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                return source
    return fallback


def resolve(cfg: Any, source: str, layers: list[tuple[str, Any]] | None = None, schema: dict | None = None) -> dict:
    """Fill the schema defaults into ``cfg`` (in place) and validate it.

    Raises ``ConfigError`` listing every violation as ``<file>: <key>: <problem>``; ``layers`` (file, raw
    YAML) are the files merged into ``cfg``, so each error names the file that set the key.
    """
    schema = schema or load_schema()
    if isinstance(cfg, dict):
        fill_defaults(cfg, schema, schema)
    errors = jsonschema.Draft202012Validator(schema).iter_errors(cfg)
    problems = []
    for err in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        if stray(err, schema):
            continue
        line, path = describe(err, schema)
        problems.append(f"{_where(path, layers or [], source)}: {line}")
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


def config_layers(paths: list[str | Path]) -> list[tuple[str, dict]]:
    """Config files as (file, mapping) layers in merge order. A file may name others under ``extends`` (paths
    relative to its own folder): they come in just before it, recursively, each file once, so a dataset's paper
    config holds only what differs from the recipe it extends."""
    layers: list[tuple[str, dict]] = []
    seen: set[Path] = set()

    def add(path: Path, chain: tuple[Path, ...]) -> None:
        key = path.resolve()
        if key in chain:
            raise ConfigError(f"{path}: extends itself through {' -> '.join(map(str, chain))}")
        if key in seen:
            return
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
        extends = data.pop(EXTENDS, [])
        for parent in [extends] if isinstance(extends, str) else extends:
            add(path.parent / parent, (*chain, key))
        seen.add(key)
        layers.append((str(path), data))

    for path in paths:
        add(Path(path), ())
    return layers


def merge_layers(layers: list[tuple[str, dict]]) -> dict:
    cfg: dict = {}
    for _, data in layers:
        cfg = merge(cfg, data)
    return cfg


def load_config(*paths: str | Path) -> dict:
    """Read config files as layers (later ones override), fill defaults and validate; returns the plain dict."""
    layers = config_layers(list(paths))
    return resolve(merge_layers(layers), ", ".join(str(p) for p in paths), layers)


def params_schema() -> dict:
    """The schema of a job's ``--params``: config sections (defaults filled for absent ones), no ``name``, and
    the job's axes."""
    schema = load_schema()
    schema["required"] = []
    schema["properties"][JOB_KEY] = {
        "type": "object",
        "additionalProperties": {"type": ["string", "integer"]},
        "propertyNames": {"pattern": "^[a-z_]+$"},
    }
    return schema


def resolve_params(value: str) -> dict:
    """Parse and resolve a verb's ``--params``: a JSON object, or the path of a file holding one (what the
    workflow's rules pass, ``write_params``). Errors name ``--params`` or the file, and the dotted key."""
    source, text = "--params", value
    if not value.lstrip().startswith("{"):
        source = value
        try:
            text = Path(value).read_text()
        except OSError as err:
            raise ConfigError(f"--params {value}: neither a JSON object nor a readable file ({err.strerror})") from err
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON: {err}") from err
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: expected a JSON object of config sections, got {type(params).__name__}")
    return resolve(params, source, schema=params_schema())


OMIT_AT_DEFAULT = "x-omit-at-default"  # annotates a key added after jobs ran, defaulting to their behaviour


def without_added_defaults(instance: Mapping, schema: dict, root: dict) -> dict:
    """``instance`` less every key annotated ``x-omit-at-default`` whose value is its (filled) default: such a key
    was added with a default that keeps the old behaviour, so leaving it out keeps finished jobs' params, and the
    job's ``--params`` reading fills it back (``resolve_params``)."""
    found, pruned = properties(schema, root), {}
    for key, value in instance.items():
        sub = found.get(key)
        if sub is not None and sub.get(OMIT_AT_DEFAULT):
            default = _default(sub, root)
            if value == (fill_defaults(default, sub, root) if isinstance(default, dict) else default):
                continue
        keep = sub is not None and isinstance(value, dict)
        pruned[key] = without_added_defaults(value, sub, root) if keep else value
    return pruned


def write_params(params: Mapping, folder: str | Path) -> str:
    """A job's params as a file named by its content's hash below ``folder``, written once: a rule passes the path,
    so its shell command stays short, and the path changes exactly when the params do (Snakemake's rerun trigger).
    Keys added since jobs ran are left out at their defaults (``without_added_defaults``)."""
    schema = load_schema()
    text = canonical_json(without_added_defaults(params, schema, schema))
    path = Path(folder) / f"{_digest(text, 20)}.json"
    if not path.exists():
        atomic_write_bytes(path, (text + "\n").encode())
    return str(path)


def runtime_minutes(runtime: str) -> float:
    """``"90m"``, ``"2h"``, ``"1.5d"``, ``"30s"`` -> minutes (the schema's runtime format)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d)", runtime)
    if not match:
        raise ConfigError(f"runtime {runtime!r}: expected a number with a unit s, m, h or d (e.g. '90m')")
    return float(match[1]) * {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}[match[2]]


def scaled_resources(entry: Mapping, attempt: int) -> dict:
    """A rule's resources for one attempt: memory and runtime grow with the attempt, so retries get more."""
    minutes = max(1, round(runtime_minutes(entry["runtime"]) * attempt))
    return {"gpu": entry["gpu"], "mem_mb": entry["mem_mb"] * attempt, "runtime": f"{minutes}m"}


def canonical_json(subtree: Any) -> str:
    """A config subtree as JSON with sorted keys: equal subtrees give equal text, whatever their key order."""
    return json.dumps(subtree, sort_keys=True)


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(subtree: Any) -> str:
    """Short, stable hash of a config subtree (canonical JSON), recorded with every artifact."""
    return _digest(canonical_json(subtree), 12)
