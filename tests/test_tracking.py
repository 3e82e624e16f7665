"""MLflow ingestion into a real SQLite store: runs, step metrics, parent/child, idempotent re-ingest."""

import json

import pytest

from cmt.report.tracking import (
    EXPERIMENT_KIND,
    HISTORY,
    RECORD,
    ingest,
    search,
    tracking_uri,
    write_history,
    write_record,
)


@pytest.fixture
def records(tmp_path):
    paths = []
    for label, fd in (("ect-cmt", 10.0), ("ect-random", 90.0)):
        folder = tmp_path / "results" / label
        write_record(
            folder,
            stage="posttrain",
            run_name=f"posttrain/{label}",
            params={"lr": 1e-4, "init": label},
            tags={"label": label},
            metrics={"images": 1280, "fd_2step": fd},
            artifacts=["grid.png"],
        )
        (folder / "grid.png").write_bytes(b"\x89PNG fake")
        write_history(folder, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)] + [{"step": 5, "fd_2step": fd}])
        paths.append(folder / RECORD)
    return tmp_path, paths


def test_ingest_search_and_idempotence(records):
    root, paths = records
    db, art = root / "mlflow.db", root / "artifacts"
    assert ingest(paths, db, "exp", art, root=root) == {"created": 2, "unchanged": 0}
    runs = search(db, "exp", stage="posttrain")
    assert sorted(runs["tags.label"]) == ["ect-cmt", "ect-random"]
    parent = search(db, "exp").query("`tags.cmt_parent` == 'true'")["run_id"].item()
    assert set(runs["tags.mlflow.parentRunId"]) == {parent}
    assert runs.set_index("tags.label").loc["ect-cmt", "metrics.fd_2step"] == 10.0
    assert (art / runs["run_id"].iloc[0] / "artifacts" / "grid.png").exists()

    from mlflow.tracking import MlflowClient

    tags = MlflowClient(tracking_uri(db)).get_experiment_by_name("exp").tags
    assert tags["mlflow.experimentKind"] == EXPERIMENT_KIND["mlflow.experimentKind"]  # `mlflow ui` opens on runs
    history = MlflowClient().get_metric_history(runs["run_id"].iloc[0], "loss")
    assert sorted(h.step for h in history) == [1, 2, 3, 4, 5]

    assert ingest(paths, db, "exp", art, root=root) == {"created": 0, "unchanged": 2}
    record = json.loads(paths[0].read_text())
    record["metrics"]["fd_2step"] = 7.0
    paths[0].write_text(json.dumps(record))
    assert ingest(paths, db, "exp", art, root=root) == {"created": 1, "unchanged": 1}
    runs = search(db, "exp", stage="posttrain")
    assert len(runs) == 2 and runs.set_index("tags.label").loc["ect-cmt", "metrics.fd_2step"] == 7.0
    assert (paths[0].parent / HISTORY).exists()
