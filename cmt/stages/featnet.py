"""The offline metric's feature net: a classifier trained on the dataset's own labels (its own cached rule)."""

from __future__ import annotations

from pathlib import Path

from cmt.data import train_holdout
from cmt.metrics import save_feature_net, train_feature_net
from cmt.tracking import write_record


def run(cfg: dict, data_cfg: dict, seed: int, out_file: str | Path) -> dict:
    train, holdout = train_holdout(data_cfg)
    net, accuracy = train_feature_net(train, holdout, cfg["epochs"], seed)
    meta = {"holdout_accuracy": accuracy, "train_count": len(train), "holdout_count": len(holdout)}
    save_feature_net(net, out_file, meta)
    write_record(
        Path(out_file).parent,
        stage="featnet",
        run_name="featnet",
        params={**cfg, "seed": seed},
        tags={"label": "featnet"},
        metrics={"holdout_accuracy": accuracy},
    )
    return meta
