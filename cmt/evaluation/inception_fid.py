"""FID's detector as the paper measured it (method.md 10): clean-fid's TorchScript Inception-v3 ("2015-12-05" TF
weights), 2048-d pool features, scored against reference statistics (``cmt.evaluation.reference_stats``).

Modes (listed in ``cmt.evaluation.detectors``; recorded with every result; never compare across them):

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

from cmt.formats.images import to_uint8

FEATURES = 2048


class InceptionFeatures:
    """Inception pool features of images in [-1, 1] through clean-fid's wrapper and resizer for ``mode``."""

    features = FEATURES

    def __init__(self, mode: str, device: torch.device, file: Path):
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        self.mode, self.device = mode, device
        self.model = InceptionV3W(str(file.parent), download=False, resize_inside=mode == "legacy_tensorflow")
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
