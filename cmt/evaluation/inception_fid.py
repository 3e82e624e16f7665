"""FID as the paper measured it (method.md 10): clean-fid's TorchScript Inception-v3 ("2015-12-05" TF weights),
2048-d pool features, Frechet distance to statistics (mu, sigma) of the full training set.

Modes (recorded with every result; never compare across them):

* ``legacy_tensorflow``: uint8 images at native resolution into the network, which resizes them TF-style
  itself. This is EDM/ECT/CMT's metric and matches the published numbers.
* ``clean``: clean-fid's default, a PIL bicubic resize to 299 x 299 outside the network, without re-quantising.

The weights are read from ``$CMT_INCEPTION_DIR/inception-2015-12-05.pt``, by default clean-fid's own cache
folder (``cmt.formats.pretrained``). Nothing is downloaded: a missing file fails at once, naming the path and where the
file comes from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmt.data.datasets import ImageDataset, Images, to_unit
from cmt.errors import BadInput
from cmt.evaluation.frechet import frechet_distance, statistics
from cmt.formats.atomic import writing
from cmt.formats.images import to_uint8
from cmt.formats.numpy_pickle import load_plain_pickle
from cmt.formats.pretrained import require_inception

MODES = ("legacy_tensorflow", "clean")
FEATURES = 2048


class InceptionFeatures:
    """Inception pool features of images in [-1, 1] through clean-fid's wrapper and resizer for ``mode``."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in MODES:
            raise BadInput(f"unknown FID mode {mode!r}; valid: {', '.join(MODES)}")
        path = require_inception()
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        self.mode, self.device = mode, device
        self.model = InceptionV3W(str(path.parent), download=False, resize_inside=mode == "legacy_tensorflow")
        self.model = self.model.to(device).eval()
        self.resize = build_resizer(mode)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        """(n, 2048) float64 features; grey images are repeated to 3 channels."""
        pixels = to_uint8(images)  # uint8 as the samples are saved (method.md 9)
        if pixels.shape[-1] == 1:
            pixels = pixels.repeat(3, axis=-1)
        if self.mode == "clean":
            pixels = np.stack([self.resize(p) for p in pixels])  # float32 (n, 299, 299, 3) in [0, 255]
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(self.device, torch.float32)
        return self.model(x).double().cpu().numpy()


def fid(features: np.ndarray, reference: dict) -> float:
    """FID of a feature set against reference statistics."""
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


def reference_statistics(data: Images, mode: str, device: torch.device, batch_size: int, workers: int) -> dict:
    """Inception statistics of every image of ``data`` (the full training set, no x-flips: EDM's fid50k_full)."""
    extract = InceptionFeatures(mode, device)
    feats = [
        extract(images)
        for images in tqdm(_all_images(data, batch_size, workers), total=-(-len(data) // batch_size), desc="FID ref")
    ]
    mu, sigma = statistics(np.concatenate(feats))
    return {"mu": mu, "sigma": sigma, "count": len(data), "mode": mode}


def save_statistics(path: str | Path, stats: dict) -> None:
    """An ``.npz`` with mu, sigma, and the image count, mode and source they came from (the training set, or the
    published file's URL), written atomically."""
    with writing(path) as tmp:
        with open(tmp, "wb") as fh:
            source = stats.get("source", "training set")
            np.savez(fh, mu=stats["mu"], sigma=stats["sigma"], count=stats["count"], mode=stats["mode"], source=source)


def load_statistics(path: str | Path) -> dict:
    """Reference statistics: an ``.npz`` with ``mu`` (2048,) and ``sigma`` (2048, 2048) (ours, or a published file such
    as EDM's ``fid-refs/*.npz`` or ADM's ``VIRTUAL_imagenet256_labeled.npz``), or EDM2's ``.pkl`` with them under
    ``fid`` (``dataset-refs/img512.pkl``); anything else raises naming the file and the key. Only these arrays are
    read: an ``.npz`` is never unpickled (ADM's reference images stay on disk, docs/latent.md 5), and a ``.pkl`` goes
    through the plain-data reader (``cmt.formats.numpy_pickle``, docs/latent.md 8.6)."""
    file = Path(path)
    arrays, names = _edm2_statistics(file) if file.suffix == ".pkl" else _npz_statistics(file)
    for key, shape in (("mu", (FEATURES,)), ("sigma", (FEATURES, FEATURES))):
        if key not in arrays:
            raise BadInput(f"{file}: no array {key!r} (found: {', '.join(names) or 'none'})")
        if np.shape(arrays[key]) != shape or not np.isfinite(arrays[key]).all():
            raise BadInput(f"{file}: {key} must be finite of shape {shape}, got {np.shape(arrays[key])}")
    stats = {"mu": np.asarray(arrays["mu"], np.float64), "sigma": np.asarray(arrays["sigma"], np.float64)}
    facts = {"count": int(arrays.get("count", -1)), "mode": str(arrays.get("mode", "legacy_tensorflow"))}
    return {**stats, **facts, "source": str(arrays.get("source", file.name))}


def _npz_statistics(file: Path) -> tuple[dict, list[str]]:
    try:
        with np.load(file, allow_pickle=False) as npz:
            names = npz.files
            return {k: npz[k] for k in ("mu", "sigma", "count", "mode", "source") if k in names}, names
    except (OSError, ValueError) as err:
        raise BadInput(f"{file}: not an .npz of FID statistics ({err})") from err


def _edm2_statistics(file: Path) -> tuple[dict, list[str]]:
    """EDM2's reference layout: ``{'num_images': N, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {...}}`` [A, NVlabs/edm2
    ``calculate_metrics.py``]."""
    data = load_plain_pickle(file)
    if not isinstance(data, dict) or not isinstance(data.get("fid"), dict):
        found = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise BadInput(f"{file}: no 'fid' statistics (EDM2's layout; found: {found})")
    arrays = {k: data["fid"][k] for k in ("mu", "sigma") if k in data["fid"]}
    if "num_images" in data:
        arrays["count"] = data["num_images"]
    return arrays, [f"fid.{k}" for k in data["fid"]]
