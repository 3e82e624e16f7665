"""The pretrained detectors whose Fréchet distance to reference statistics is a score, by metric name: FID's
Inception (method.md 10) and FD_DINOv2's ViT-L/14 (docs/latent.md 8.7). One registry for ``evaluate.metrics``, the
reference rules, the scorer and the tables. It imports no torch: a job checks the weights before it loads anything
(environment.md 4); ``build`` imports the detector's module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cmt.errors import BadInput
from cmt.formats.pretrained import require_dinov2, require_inception

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor


class Features(Protocol):
    """A detector's features: images in [-1, 1] -> (n, ``features``) float64."""

    features: int

    def __call__(self, images: Tensor) -> np.ndarray: ...


@dataclass(frozen=True)
class Detector:
    """A metric of Fréchet distance in a pretrained network's feature space. ``name`` is its entry in
    ``evaluate.metrics``, its config section ``evaluate.<name>``, its scores' prefix and its key in EDM2's reference
    pickle; published statistics are in ``published_mode``."""

    name: str
    display: str
    modes: tuple[str, ...]
    published_mode: str
    weights: Callable[[], Path]
    extractor: str  # "module:Class" taking (mode, device, weights file)

    @property
    def reference_option(self) -> str:
        """The evaluate verb's option for this detector's statistics file: ``fid-ref``, ``fd-dinov2-ref``."""
        return f"{self.name.replace('_', '-')}-ref"

    def build(self, mode: str, device: torch.device) -> Features:
        if mode not in self.modes:
            raise BadInput(f"evaluate.{self.name}.mode: unknown mode {mode!r}; valid: {', '.join(self.modes)}")
        module, name = self.extractor.split(":")
        return getattr(importlib.import_module(module), name)(mode, device, self.weights())


DETECTORS = {
    detector.name: detector
    for detector in (
        Detector(
            "fid",
            "FID",
            ("legacy_tensorflow", "clean"),
            "legacy_tensorflow",  # EDM's and EDM2's published statistics come from the TF-compatible network
            require_inception,
            "cmt.evaluation.inception_fid:InceptionFeatures",
        ),
        Detector(
            "fd_dinov2",
            "FD_DINOv2",
            ("torch",),  # EDM2's resize_mode 'torch' [A, NVlabs/edm2 calculate_metrics.py]
            "torch",
            require_dinov2,
            "cmt.evaluation.dinov2:Dinov2Features",
        ),
    )
}


def detector(name: str) -> Detector:
    if name not in DETECTORS:
        raise BadInput(f"unknown detector metric {name!r}; valid: {', '.join(DETECTORS)}")
    return DETECTORS[name]
