"""Reference statistics of a pretrained detector (Inception for FID, DINOv2 for FD_DINOv2): computed from every image
of the training set, or read from a published file, and the Fréchet distance of a feature set to them (method.md 10,
docs/latent.md 8.7).

Files: our ``.npz`` (mu, sigma, count, mode, source), a published ``.npz`` with ``mu`` and ``sigma`` (EDM's
``fid-refs``, ADM's reference batch: read without unpickling, so ADM's images stay on disk, docs/latent.md 5), or
EDM2's ``.pkl`` with them under the detector's key (``dataset-refs/img512.pkl``: ``{'num_images', 'fid': {mu, sigma},
'fd_dinov2': {mu, sigma}}`` [A, NVlabs/edm2 ``calculate_metrics.py``], read as plain data, docs/latent.md 8.6).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmt.data.datasets import ImageDataset, Images, to_unit
from cmt.errors import BadInput
from cmt.evaluation.frechet import frechet_distance, statistics
from cmt.formats.atomic import writing
from cmt.formats.numpy_pickle import load_plain_pickle

Extract = Callable[[Tensor], np.ndarray]  # images in [-1, 1] -> (n, features) float64


def distance_to(features: np.ndarray, reference: dict) -> float:
    """The Fréchet distance of a feature set to reference statistics (FID's formula, method.md 10)."""
    mu, sigma = statistics(features)
    return frechet_distance(mu, sigma, reference["mu"], reference["sigma"])


def _all_images(data: Images, batch_size: int, workers: int):
    """Every image of ``data`` in order, as float [-1, 1] batches (a DataLoader for files on disk)."""
    if isinstance(data, ImageDataset):
        for first in range(0, len(data), batch_size):
            yield data.images[first : first + batch_size]
        return
    for images, _ in DataLoader(data, batch_size=batch_size, num_workers=workers):
        yield to_unit(images)


def reference_statistics(data: Images, extract: Extract, mode: str, batch_size: int, workers: int) -> dict:
    """Statistics of every image of ``data`` (the full training set, no x-flips: EDM's fid50k_full)."""
    batches = tqdm(_all_images(data, batch_size, workers), total=-(-len(data) // batch_size), desc="reference")
    mu, sigma = statistics(np.concatenate([extract(images) for images in batches]))
    return {"mu": mu, "sigma": sigma, "count": len(data), "mode": mode}


def save_statistics(path: str | Path, stats: dict) -> None:
    """An ``.npz`` with mu, sigma, and the image count, mode and source they came from (the training set, or the
    published file's URL), written atomically."""
    with writing(path) as tmp:
        with open(tmp, "wb") as fh:
            source = stats.get("source", "training set")
            np.savez(fh, mu=stats["mu"], sigma=stats["sigma"], count=stats["count"], mode=stats["mode"], source=source)


def load_statistics(path: str | Path, key: str, features: int | None = None, mode: str = "") -> dict:
    """Reference statistics from ``path``: mu (d,) and sigma (d, d), finite, with d = ``features`` when given; an
    EDM2 ``.pkl`` is read under ``key`` (``fid``, ``fd_dinov2``). A file that records no mode is taken to be in
    ``mode`` (a published file's). Anything else raises naming the file and the key."""
    file = Path(path)
    arrays, names = _edm2_statistics(file, key) if file.suffix == ".pkl" else _npz_statistics(file)
    for name in ("mu", "sigma"):
        if name not in arrays:
            raise BadInput(f"{file}: no array {name!r} (found: {', '.join(names) or 'none'})")
    width = features or np.shape(arrays["mu"])[0]
    for name, shape in (("mu", (width,)), ("sigma", (width, width))):
        if np.shape(arrays[name]) != shape or not np.isfinite(arrays[name]).all():
            raise BadInput(f"{file}: {name} must be finite of shape {shape}, got {np.shape(arrays[name])}")
    stats = {name: np.asarray(arrays[name], np.float64) for name in ("mu", "sigma")}
    facts = {"count": int(arrays.get("count", -1)), "mode": str(arrays.get("mode", mode))}
    return {**stats, **facts, "source": str(arrays.get("source", file.name))}


def _npz_statistics(file: Path) -> tuple[dict, list[str]]:
    try:
        with np.load(file, allow_pickle=False) as npz:
            names = npz.files
            return {k: npz[k] for k in ("mu", "sigma", "count", "mode", "source") if k in names}, names
    except (OSError, ValueError) as err:
        raise BadInput(f"{file}: not an .npz of reference statistics ({err})") from err


def _edm2_statistics(file: Path, key: str) -> tuple[dict, list[str]]:
    """EDM2's reference layout: ``{'num_images': N, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}``."""
    data = load_plain_pickle(file)
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        found = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise BadInput(f"{file}: no {key!r} statistics (EDM2's layout; found: {found})")
    arrays = {k: data[key][k] for k in ("mu", "sigma") if k in data[key]}
    if "num_images" in data:
        arrays["count"] = data["num_images"]
    return arrays, [f"{key}.{k}" for k in data[key]]
