"""Reference statistics, once per dataset, detector and mode: computed from the full training set, or a published
file (sha256-checked) when ``evaluate.<detector>.reference`` names one (method.md 10, 12.1; docs/latent.md 8.7)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from cmt.data.datasets import load_dataset
from cmt.errors import BadInput, about
from cmt.evaluation.detectors import detector
from cmt.evaluation.reference_stats import load_statistics, reference_statistics, save_statistics
from cmt.formats.fetch import fetch
from cmt.training.loop import resolve_device


def run(metric: str, cfg: dict, data_cfg: dict, out: str | Path, work_dir: str | Path, device_name: str) -> dict:
    """Write the statistics ``.npz`` (mu, sigma, count, mode, source) of detector ``metric`` by its section ``cfg``
    (``evaluate.<metric>``) to ``out``."""
    spec, published = detector(metric), cfg["reference"]
    if published:
        if cfg["mode"] != spec.published_mode:
            raise BadInput(
                f"evaluate.{metric}.reference: published statistics are {spec.published_mode} mode, "
                f"evaluate.{metric}.mode is {cfg['mode']!r}; compute them from the training set (reference: null)"
            )
        name = Path(urlparse(published["url"]).path).name or "reference.npz"
        with about(f"evaluate.{metric}.reference"):
            path = fetch(published["url"], published["sha256"], Path(work_dir) / name)
            stats = {**load_statistics(path, metric, mode=spec.published_mode), "source": published["url"]}
    else:
        extract = spec.build(cfg["mode"], resolve_device(device_name))
        data = load_dataset(data_cfg)
        stats = reference_statistics(data, extract, cfg["mode"], cfg["batch_size"], data_cfg["loader"]["workers"])
    save_statistics(out, stats)
    print(f"{spec.display} reference ({stats['mode']}, {stats['count']} images) -> {out}")
    return stats
