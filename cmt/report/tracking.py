"""MLflow conventions: jobs write records, one serial step ingests them (no SQLite write contention).

Each job writes ``run.json`` (stage, run name, params, tags, final metrics, artifact names) and, for
trainers, ``metrics.jsonl`` (one JSON object per logged step) into its output folder.  ``ingest``
logs every record as an MLflow run in a SQLite store, as children of one parent run per experiment
(tag ``mlflow.parentRunId``, which the UI uses for grouping).  Each job's record carries its axes as
tags (``job``, ``kind``, ``variant``, ``method``, ``init``, ``seed``, ``init_job``, ...: cmt/workflow/jobs.py), which
the report reads.  Records given ``groups`` (the tables a job feeds) get a ``tables`` tag; a job of the
main table hangs below the experiment's parent run, an ablation-only job below a parent run for its
first table (itself a child of the experiment's parent).  Groups are the config's whole truth: a run
whose job the config no longer asks for loses its ``tables`` tag.  Re-ingesting an unchanged record is
a no-op; a changed record (or a changed grouping) replaces its run.  Experiments are tagged as model
training (``mlflow.experimentKind``); MLflow 3.17's UI still opens on its GenAI view unless the page is
asked for the training view (``ui_url``), after which the browser remembers the choice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmt.config import config_hash
from cmt.formats.atomic import atomic_write_bytes, atomic_write_json
from cmt.formats.names import HISTORY, RECORD

MAIN_TABLE = "main"  # its jobs hang directly below the experiment's parent run
# MLflow 3 reads this tag to tell model training from GenAI experiments (workflow.md 5); the 3.17 UI lets its
# own "GenAI | Model training" switch (URL parameter `workflowType`, then the browser's memory) override it
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"


def write_history(out_dir: str | Path, history: list[dict]) -> None:
    atomic_write_bytes(Path(out_dir) / HISTORY, "".join(json.dumps(h) + "\n" for h in history).encode())


def read_history(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / HISTORY
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_record(
    out_dir: str | Path,
    *,
    stage: str,
    run_name: str,
    params: dict,
    tags: dict,
    metrics: dict,
    artifacts: list[str] | tuple[str, ...] = (),
) -> dict:
    """Write ``run.json`` describing one job for ``ingest``."""
    params = {**params, "config_hash": config_hash(params)}  # hash of the job's own config subtree
    record = {
        "stage": stage,
        "run_name": run_name,
        "params": params,
        "tags": {**tags, "stage": stage},
        "metrics": metrics,
        "artifacts": list(artifacts),
        "git_commit": git_commit(),
        "finished": time.time(),
    }
    atomic_write_json(Path(out_dir) / RECORD, record)
    return record


def git_commit() -> str:
    """Current git commit of the working tree (``unknown`` outside a repository), '+dirty' if modified."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


@contextmanager
def store_lock(db: str | Path) -> Iterator[None]:
    """Hold ``<db>.lock`` (an exclusive flock): one writer of the MLflow store at a time, whichever targets run
    together (workflow.md §5)."""
    path = Path(f"{db}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tracking_uri(db: str | Path) -> str:
    """Absolute ``sqlite:////...`` URI (relative SQLite URIs depend on the cwd; workflow.md 5)."""
    return f"sqlite:///{Path(db).resolve()}"


def _digest(folder: Path, tables: list[str]) -> str:
    h = hashlib.sha256((folder / RECORD).read_bytes())
    if (folder / HISTORY).exists():
        h.update((folder / HISTORY).read_bytes())
    h.update(",".join(tables).encode())
    return h.hexdigest()


def ingest(
    record_files: list[str | Path],
    db: str | Path,
    experiment: str,
    artifact_root: str | Path,
    root: str | Path = ".",
    groups: dict[str, list[str]] | None = None,
) -> dict:
    """Log every record into the MLflow store at ``db``; returns counts of created/unchanged runs.

    ``groups`` maps a record folder (relative to ``root``) to the tables its job feeds, first the
    one whose parent run groups it.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(db))
    client = MlflowClient()
    exp_id = experiment_id(client, experiment, artifact_root)
    parent = parent_run(client, exp_id, experiment)
    firsts = {tables[0] for tables in (groups or {}).values() if tables} - {MAIN_TABLE}
    table_parents = {table: table_run(client, exp_id, parent, table) for table in sorted(firsts)}
    counts = {"created": 0, "unchanged": 0}
    for file in record_files:
        folder = Path(file).parent
        key = str(folder.resolve().relative_to(Path(root).resolve()))
        tables = (groups or {}).get(key, [])
        digest = _digest(folder, tables)
        old = client.search_runs([exp_id], filter_string=f"tags.cmt_record = '{key}'")
        if any(r.data.tags.get("cmt_digest") == digest for r in old):
            counts["unchanged"] += 1
            continue
        for r in old:
            client.delete_run(r.info.run_id)
        parent_id = table_parents[tables[0]] if tables and tables[0] != MAIN_TABLE else parent
        log_record(client, exp_id, Path(file), {"cmt_record": key, "cmt_digest": digest}, parent_id, tables)
        counts["created"] += 1
    if groups is not None:
        counts["ungrouped"] = ungroup_stale(client, exp_id, groups)
    client.set_terminated(parent, "FINISHED")
    return counts


def log_record(client, exp_id: str, file: Path, marks: dict, parent: str, tables: list[str]) -> None:
    """One record as a finished MLflow run below ``parent``: its tags (with the ingest ``marks``), params, the metric
    history and the final metrics, artifacts."""
    from mlflow.entities import Metric, Param

    record, folder = json.loads(file.read_text()), file.parent
    tags = {
        **{k: str(v) for k, v in record["tags"].items()},
        **marks,
        "git_commit": record["git_commit"],
        "cmt_stage": record["stage"],
        "mlflow.parentRunId": parent,
        **({"tables": ",".join(tables)} if tables else {}),
    }
    run = client.create_run(exp_id, run_name=record["run_name"], tags=tags)
    rid, now = run.info.run_id, int(time.time() * 1000)
    params = [Param(k, str(v)[:6000]) for k, v in record["params"].items()]
    history = read_history(folder)
    metrics = [
        Metric(k, float(v), now, int(h["step"])) for h in history for k, v in h.items() if k != "step" and _is_number(v)
    ]
    last = max((int(h["step"]) for h in history), default=0)
    # final values at the last step with a later timestamp, so MLflow reports them as the latest
    metrics += [Metric(k, float(v), now + 1, last) for k, v in record["metrics"].items() if _is_number(v)]
    for i in range(0, len(params), 100):  # MLflow's per-request limits
        client.log_batch(rid, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i : i + 1000])
    for name in record["artifacts"]:
        client.log_artifact(rid, str(folder / name))
    client.set_terminated(rid, "FINISHED")


def experiment_id(client, experiment: str, artifact_root: str | Path) -> str:
    """The experiment's id (created with an absolute artifact location on first use), tagged as model training."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment, artifact_location=Path(artifact_root).resolve().as_uri())
    else:
        exp_id = exp.experiment_id
    for key, value in EXPERIMENT_KIND.items():
        if exp is None or exp.tags.get(key) != value:
            client.set_experiment_tag(exp_id, key, value)
    return exp_id


def ungroup_stale(client, exp_id: str, groups: dict[str, list[str]]) -> int:
    """Clear the ``tables`` tag of runs whose record the config no longer groups; returns how many."""
    stale = [
        r
        for r in client.search_runs([exp_id], filter_string="tags.tables != ''", max_results=50000)
        if r.data.tags.get("cmt_record") not in groups
    ]
    for r in stale:
        client.set_tag(r.info.run_id, "tables", "")
    return len(stale)


def parent_run(client, exp_id: str, experiment: str) -> str:
    """The experiment's parent run (created on first use)."""
    found = client.search_runs([exp_id], filter_string="tags.cmt_parent = 'true'")
    if found:
        return found[0].info.run_id
    return client.create_run(exp_id, run_name=f"pipeline/{experiment}", tags={"cmt_parent": "true"}).info.run_id


def table_run(client, exp_id: str, parent: str, table: str) -> str:
    """The parent run of one ablation table's jobs, a child of the experiment's parent (created on first use)."""
    found = client.search_runs([exp_id], filter_string=f"tags.cmt_table = '{table}'")
    if found:
        return found[0].info.run_id
    tags = {"cmt_parent": "table", "cmt_table": table, "mlflow.parentRunId": parent}
    run_id = client.create_run(exp_id, run_name=f"ablation/{table}", tags=tags).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ui_url(db: str | Path, experiment: str, host: str = "http://127.0.0.1:5000") -> str:
    """The page of ``mlflow ui --backend-store-uri <db>`` that shows the experiment's runs table."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri(db)).get_experiment_by_name(experiment)
    return f"{host}/#/experiments/{exp.experiment_id}?{UI_VIEW}"


def search(db: str | Path, experiment: str, stage: str | None = None):
    """``mlflow.search_runs`` over one experiment (pandas DataFrame), optionally one stage."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(db))
    filt = f"tags.cmt_stage = '{stage}'" if stage else ""
    return mlflow.search_runs(experiment_names=[experiment], filter_string=filt, output_format="pandas")
