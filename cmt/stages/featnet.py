"""The offline metric's feature net: a classifier trained on the dataset's own labels (its own cached rule)."""

from __future__ import annotations

from pathlib import Path

from cmt.data.datasets import train_holdout
from cmt.evaluation.featnet_fd import save_feature_net, train_feature_net
from cmt.report.tracking import write_record
from cmt.training import parallel
from cmt.training.loop import Compute


def run(cfg: dict, data_cfg: dict, seed: int, out_file: str | Path, compute: Compute | None = None) -> dict:
    """Train the feature net (every process, if launched as several) and write it and its record (the main one)."""
    compute = compute or Compute.from_dict()
    train, holdout = train_holdout(data_cfg)
    net, accuracy = train_feature_net(train, holdout, cfg["epochs"], seed, Path(out_file).parent, compute)
    if not parallel.is_main():
        return {}
    meta = {"holdout_accuracy": accuracy, "train_count": len(train), "holdout_count": len(holdout)}
    save_feature_net(net, out_file, meta)
    write_record(
        Path(out_file).parent,
        stage="featnet",
        run_name="featnet",
        params={**cfg, "seed": seed, **compute.params()},
        tags={"label": "featnet"},
        metrics={"holdout_accuracy": accuracy},
    )
    return meta
