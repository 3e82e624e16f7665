"""Stand-ins for the files users bring, written in the official formats: the CIFAR-10 python tarball, a folder
of images, clean-fid's TorchScript Inception (same call interface, random small weights), and DINOv2's released
state dict (its tensor names and position grid, a narrow and shallow random ViT)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

CIFAR_PER_BATCH = 6  # the real batches hold 10 000 images each


def cifar_batches(seed: int = 0, per_batch: int = CIFAR_PER_BATCH) -> list[tuple[np.ndarray, list[int]]]:
    """(data uint8 (n, 3072) in CIFAR's channel-major layout, labels) of the five training batches."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist())
        for _ in range(5)
    ]


def write_cifar_tarball(path: Path, batches: list[tuple[np.ndarray, list[int]]], extra: dict | None = None) -> Path:
    """A ``cifar-10-python.tar.gz``: ``cifar-10-batches-py/data_batch_{1..5}`` pickles of {data, labels, ...}
    (protocol 2, as the Python 2 originals), a test batch and ``batches.meta``; ``extra`` replaces members."""
    members = {
        f"cifar-10-batches-py/data_batch_{k + 1}": {
            "batch_label": f"training batch {k + 1} of 5",
            "data": d,
            "labels": y,
        }
        for k, (d, y) in enumerate(batches)
    }
    members["cifar-10-batches-py/test_batch"] = {"data": batches[0][0], "labels": batches[0][1]}
    members["cifar-10-batches-py/batches.meta"] = {"label_names": ["airplane"] * 10, "num_vis": 3072}
    payloads = {name: pickle.dumps(obj, protocol=2) for name, obj in members.items()}
    payloads.update(extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in payloads.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_image_folder(root: Path, count: int, size: int, classes: int = 0, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB PNGs of ``size`` x ``size`` (in ``classes`` sub-folders ``c<k>`` if given); returns them in
    sorted-path order."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(count):
        folder = root / f"c{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
        written[(folder / f"{i:04d}.png").relative_to(root).as_posix()] = image
    return [written[k] for k in sorted(written)]


class _Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 16).reshape(x.shape[0], 2048, 1, 1)


class _Inception(nn.Module):
    """The interface clean-fid calls: ``base(x, return_features=True)`` on [0, 255] images of any size (it resizes
    to 299 and normalises itself) and ``base.layers`` on normalised 299 x 299 images."""

    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128).reshape(x.shape[0], 2048)


def write_inception(folder: Path, seed: int = 0) -> Path:
    """A TorchScript file named as the real Inception weights, in ``folder``."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "inception-2015-12-05.pt"
    torch.jit.script(_Inception().eval()).save(str(path))
    return path


def dinov2_state_dict(width: int = 64, depth: int = 2, patch: int = 14, grid: int = 37, seed: int = 0) -> dict:
    """A state dict named and shaped as facebookresearch/dinov2's ``dinov2_vit*14_pretrain.pth`` (ViT-L/14: width
    1024, depth 24; position embedding of the 518-pixel grid, 37 x 37 + 1; the training-only ``mask_token``),
    random weights at a scale that keeps activations of order one."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "cls_token": rand(1, 1, width, scale=1.0),
        "pos_embed": rand(1, 1 + grid * grid, width, scale=1.0),
        "mask_token": torch.zeros(1, width),
        "patch_embed.proj.weight": rand(width, 3, patch, patch, scale=0.1),
        "patch_embed.proj.bias": rand(width),
    }
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            state[f"blocks.{i}.{norm}.weight"] = 1 + rand(width, scale=0.1)
            state[f"blocks.{i}.{norm}.bias"] = rand(width, scale=0.1)
        for name, (out, inp) in {
            "attn.qkv": (3 * width, width),
            "attn.proj": (width, width),
            "mlp.fc1": (4 * width, width),
            "mlp.fc2": (width, 4 * width),
        }.items():
            state[f"blocks.{i}.{name}.weight"] = rand(out, inp, scale=inp**-0.5)
            state[f"blocks.{i}.{name}.bias"] = rand(out)
        state[f"blocks.{i}.ls1.gamma"] = rand(width, scale=0.5)
        state[f"blocks.{i}.ls2.gamma"] = rand(width, scale=0.5)
    state["norm.weight"], state["norm.bias"] = 1 + rand(width, scale=0.1), rand(width, scale=0.1)
    return state


def write_dinov2(folder: Path, state: dict | None = None) -> Path:
    """``dinov2_vitl14_pretrain.pth`` in ``folder``: a plain ``torch.save`` of the state dict, as released."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dinov2_vitl14_pretrain.pth"
    torch.save(state or dinov2_state_dict(), path)
    return path
