"""The offline sample-quality metric: FD and KID in the feature space of a dataset-native classifier.

FD is the Frechet distance of a small classifier's penultimate features, trained on the dataset's own
labels by its own workflow rule (``featnet``); FID with Inception, the paper's metric, is
``cmt.evaluation.inception_fid``.
FD is ``cmt.evaluation.frechet``'s; KID comes from clean-fid (``kernel_distance``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt.data.datasets import ImageDataset
from cmt.errors import BadInput
from cmt.formats.atomic import atomic_save_tensors
from cmt.training import parallel
from cmt.training.loop import Compute, FitOptions, LoopConfig, fit


class ClassifierFeatureNet(nn.Module):
    """Small CNN classifier; its penultimate layer (``feature_dim`` values) is the FD feature space."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


FEATNET_BATCH, FEATNET_LR = 128, 2e-3  # the feature net's minibatch and Adam learning rate


def train_feature_net(
    train: ImageDataset,
    holdout: ImageDataset,
    epochs: int,
    seed: int,
    work_dir: str | Path,
    compute: Compute | None = None,
) -> tuple[ClassifierFeatureNet, float]:
    """Train the classifier on real labels (light Gaussian-noise augmentation) with the shared loop (Adam, constant
    LR, no EMA); returns (net, held-out accuracy)."""
    if train.labels is None:
        raise BadInput(
            f"dataset {train.name!r} has no labels: the offline feature net needs them "
            "(set evaluate.metrics: [fid] with Inception weights present)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ClassifierFeatureNet(train.shape[0], int(train.labels.max()) + 1)
    batch_size, lr = FEATNET_BATCH, FEATNET_LR
    steps = epochs * max(1, len(train) // batch_size)
    loop = LoopConfig(steps, batch_size, lr, "adam", (0.9, 0.999), "constant", 0, 0, 0, ema_beta=0.0)
    local = parallel.local_count(batch_size, "the feature net's batch")

    def loss_fn(model: nn.Module, step: int, gen: torch.Generator) -> Tensor:
        idx = parallel.randint(len(train), (local,), gen)
        x = train.images[idx] + 0.1 * parallel.randn(train.images[idx].shape, gen)
        return F.cross_entropy(model(x), train.labels[idx])

    net = fit(net, loss_fn, loop, work_dir, desc="feature net", seed=seed, options=FitOptions(compute=compute)).ema
    with torch.no_grad():
        accuracy = float((net(holdout.images).argmax(1) == holdout.labels).float().mean())
    return net, accuracy


FEATNET_KEY = "cmt_featnet"  # one header key: safetensors writes several in a per-process random order


def save_feature_net(net: ClassifierFeatureNet, path: str | Path, meta: dict) -> None:
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    header = json.dumps({"config": net.config, "meta": meta}, sort_keys=True)
    atomic_save_tensors(state, path, metadata={FEATNET_KEY: header})


def load_feature_net(path: str | Path) -> ClassifierFeatureNet:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
    if FEATNET_KEY in header:
        config = json.loads(header[FEATNET_KEY])["config"]
    elif "config" in header:  # written before the single header key
        config = json.loads(header["config"])
    else:
        raise BadInput(f"{path}: not a feature-net file (no {FEATNET_KEY!r} in the safetensors header)")
    net = ClassifierFeatureNet(**config)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


@torch.no_grad()
def extract(net: ClassifierFeatureNet, images: Tensor, batch_size: int = 1024) -> np.ndarray:
    """Penultimate features (N, F) as float64."""
    return (
        torch.cat([net.features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)])
        .double()
        .numpy()
    )


def kernel_distance(f1: np.ndarray, f2: np.ndarray, seed: int = 0) -> float:
    """KID (polynomial-kernel MMD, unbiased, averaged over subsets; clean-fid's ``kernel_distance``)."""
    from cleanfid.fid import kernel_distance as kid

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kid(f1, f2, num_subsets=100, max_subset_size=1000))
    finally:
        np.random.set_state(state)


@torch.no_grad()
def class_probs(net: ClassifierFeatureNet, images: Tensor) -> Tensor:
    """The feature net's class probabilities (N, classes)."""
    return torch.cat([net(images[i : i + 1024].float()).softmax(1) for i in range(0, len(images), 1024)])


def classifier_scores(net: ClassifierFeatureNet, images: Tensor) -> dict:
    return probs_scores(class_probs(net, images))


def probs_scores(probs: Tensor) -> dict:
    """Mean classifier confidence and the entropy of the predicted-class histogram (mode coverage)."""
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double() / len(probs)
    entropy = float(-(hist[hist > 0] * hist[hist > 0].log()).sum() / np.log(probs.shape[1]))
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": entropy}
