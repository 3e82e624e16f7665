"""FID reference statistics, once per dataset and mode: computed from the full training set, or a published
file (sha256-checked) when ``evaluate.fid.reference`` names one (method.md 10, 12.1)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from cmt.data.datasets import load_dataset
from cmt.errors import BadInput, about
from cmt.evaluation.inception_fid import load_statistics, reference_statistics, save_statistics
from cmt.formats.fetch import fetch
from cmt.training.loop import resolve_device

PUBLISHED_MODE = "legacy_tensorflow"  # EDM's fid-refs come from its metric code: the TF-compatible Inception


def run(fid_cfg: dict, data_cfg: dict, out: str | Path, work_dir: str | Path, device_name: str) -> dict:
    """Write the statistics ``.npz`` (mu, sigma, count, mode) to ``out``."""
    published = fid_cfg["reference"]
    if published:
        if fid_cfg["mode"] != PUBLISHED_MODE:
            raise BadInput(
                f"evaluate.fid.reference: published statistics are {PUBLISHED_MODE} mode, evaluate.fid.mode is "
                f"{fid_cfg['mode']!r}; compute them from the training set instead (reference: null)"
            )
        name = Path(urlparse(published["url"]).path).name or "fid-ref.npz"
        with about("evaluate.fid.reference"):
            path = fetch(published["url"], published["sha256"], Path(work_dir) / name)
        stats = {**load_statistics(path), "mode": PUBLISHED_MODE, "source": published["url"]}
    else:
        stats = reference_statistics(
            load_dataset(data_cfg),
            fid_cfg["mode"],
            resolve_device(device_name),
            fid_cfg["batch_size"],
            data_cfg["loader"]["workers"],
        )
    save_statistics(out, stats)
    print(f"FID reference ({stats['mode']}, {stats['count']} images) -> {out}")
    return stats
