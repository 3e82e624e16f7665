"""The LPIPS distance runs the real `lpips` package code on a trunk loaded from the torch hub cache.

No pretrained weights can be downloaded here, so the test plants a seeded random SqueezeNet state
dict under torchvision's file name (environment.md 5.1): the loading path is the production one,
the numbers are not the published metric.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmt.formats.pretrained import LPIPS_TRUNK_FILES, torch_hub_checkpoints
from cmt.objectives.distances import LPIPSDistance, make_distance


@pytest.fixture
def planted_squeeze(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    path = torch_hub_checkpoints() / LPIPS_TRUNK_FILES["squeeze"]
    path.parent.mkdir(parents=True)
    torch.save(squeezenet1_1(weights=None).state_dict(), path)
    return path


def test_missing_trunk_fails_fast_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'}.*{LPIPS_TRUNK_FILES['vgg']}"):
        LPIPSDistance("vgg")


def test_a_cmt_job_stops_naming_the_trunk_before_importing_torch(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path / "torch")}
    params = '{"midtrain": {"loss": "lpips", "source": "online"}}'
    cmd = [sys.executable, "-X", "importtime", "-m", "cmt", "midtrain", "--params", params, "--teacher", "t"]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path), "--work", str(tmp_path)], capture_output=True, text=True, env=env
    )
    trunk = tmp_path / "torch" / "hub" / "checkpoints" / LPIPS_TRUNK_FILES["vgg"]
    assert (
        done.returncode == 1
        and f"missing weights: midtrain.lpips_net: LPIPS-vgg needs the pretrained ImageNet trunk at {trunk}"
        in done.stderr
    )
    assert "| torch" not in done.stderr


@pytest.mark.parametrize("env", [{"TORCH_HOME": "/a/th"}, {"XDG_CACHE_HOME": "/b/xdg"}, {}])
def test_the_hub_folder_is_torchs_own(monkeypatch, env):
    """``cmt.formats.pretrained`` finds torchvision's folder without importing torch: the same path as torch.hub."""
    for var in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"


def test_lpips_distance_properties(planted_squeeze):
    dist = make_distance("lpips", lpips_net="squeeze", lpips_resize=32)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((4, 1, 8, 8), generator=gen) * 2 - 1
    y = torch.rand((4, 1, 8, 8), generator=gen) * 2 - 1
    assert torch.allclose(dist(x, x), torch.zeros(4), atol=1e-6)
    d = dist(x, y)
    assert d.shape == (4,) and bool((d > 0).all())
    torch.testing.assert_close(dist(y, x), d, rtol=1e-5, atol=1e-6)
    x.requires_grad_(True)
    dist(x, y).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in dist.parameters())


def test_lpips_refuses_images_below_the_trunk_minimum(planted_squeeze):
    with pytest.raises(ValueError, match="at least 16 px"):
        LPIPSDistance("squeeze")(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
