"""FD_DINOv2 as EDM2 measures it (docs/latent.md 8.7): our DINOv2 ViT against timm's independent ViT on the same
weights, dinov2's position resampling against its closed form on a linear field, EDM2's input transform on constant
images, the released file's names checked key by key, missing weights stopping the jobs at once, and the metric
scoring a set of images zero against its own statistics."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.image_standins import dinov2_state_dict, write_dinov2

from cmt.data.datasets import ImageDataset
from cmt.errors import BadInput
from cmt.evaluation.detectors import DETECTORS
from cmt.evaluation.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POSITION_OFFSET,
    detector_input,
    interpolate_positions,
    load_dinov2,
)
from cmt.evaluation.reference_stats import distance_to, reference_statistics, save_statistics
from cmt.formats.pretrained import DINOV2_DIR_ENV, MissingWeights, require_dinov2

CPU = torch.device("cpu")


@pytest.fixture
def dinov2(tmp_path, monkeypatch):
    path = write_dinov2(tmp_path / "weights")
    monkeypatch.setenv(DINOV2_DIR_ENV, str(path.parent))
    return path


def test_features_match_timms_vit_on_the_same_weights(dinov2):
    """timm's VisionTransformer (pre-norm blocks with layer scale, class token after the final norm) loaded with the
    checkpoint's tensors, the position embedding resampled to the 16 x 16 grid of a 224-pixel input."""
    import timm.models.vision_transformer as vit

    state = dinov2_state_dict()
    ours = load_dinov2(dinov2)
    theirs = vit.VisionTransformer(
        img_size=224, patch_size=14, embed_dim=64, depth=2, num_heads=1, init_values=1.0, num_classes=0
    ).eval()
    timm_state = {k: v for k, v in state.items() if k != "mask_token"}
    timm_state["pos_embed"] = interpolate_positions(state["pos_embed"], 16)
    theirs.load_state_dict(timm_state)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == (3, 64) and expected.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def keys_cubic(x: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution kernel with PyTorch's a = -0.75 (Keys 1981, eq. 15)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def test_position_resampling_is_dinov2s_offset_scale_factor():
    """Output patch p is the cubic convolution of the trained grid at source coordinate (p + 1/2) / s - 1/2 with
    dinov2's s = (16 + 0.1) / 37, not a plain resize's s = 16 / 37: checked against the kernel written out, away
    from the border; the class position is untouched."""
    trained, grid = 37, 16
    field = torch.randn(trained, trained, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pos = torch.cat([torch.full((1, 1, 2), 7.0, dtype=torch.float64), field.reshape(1, -1, 2)], dim=1)
    out = interpolate_positions(pos, grid)
    assert out.shape == (1, 1 + grid * grid, 2) and out[0, 0].tolist() == [7.0, 7.0]
    got = out[0, 1:].reshape(grid, grid, 2)

    def weights(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        src = (torch.arange(grid, dtype=torch.float64) + 0.5) / scale - 0.5
        return keys_cubic(src[:, None] - torch.arange(trained, dtype=torch.float64)[None]), src

    (w, src), (w_plain, _) = weights((grid + POSITION_OFFSET) / trained), weights(grid / trained)
    inner = (src >= 1) & (src <= trained - 3)  # all four taps inside the grid: no border clamping
    expected = torch.einsum("pa,qb,abc->pqc", w, w, field)
    torch.testing.assert_close(got[inner][:, inner], expected[inner][:, inner], rtol=0, atol=1e-5)
    plain = torch.einsum("pa,qb,abc->pqc", w_plain, w_plain, field)
    assert (got[inner][:, inner] - plain[inner][:, inner]).abs().max() > 0.1  # a plain resize is measurably off
    assert interpolate_positions(pos, trained) is pos  # the trained grid: no resampling


def test_the_input_is_edm2s_resize_scale_and_imagenet_normalisation():
    """A constant image stays constant through the antialiased bicubic resize, so each channel is (c/255 - mean)/std."""
    colour = torch.tensor([10.0, 128.0, 250.0])
    pixels = colour.view(1, 3, 1, 1).expand(2, 3, 64, 64)
    x = detector_input(pixels)
    assert x.shape == (2, 3, 224, 224)
    expected = (colour / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), expected, rtol=0, atol=1e-5)
    assert x.std(dim=(0, 2, 3)).max() < 1e-5


def test_grey_images_are_repeated_to_three_channels(dinov2):
    features = DETECTORS["fd_dinov2"].build("torch", CPU)
    grey = torch.rand(2, 1, 16, 16) * 2 - 1
    np.testing.assert_array_equal(features(grey), features(grey.expand(-1, 3, -1, -1)))
    assert features.features == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("blocks.1.ls2.gamma"), "missing tensor 'blocks.1.ls2.gamma'"),
        (lambda s: s.update(register_tokens=torch.zeros(1, 4, 64)), "unexpected tensor 'register_tokens'"),
        (lambda s: s.update({"blocks.0.mlp.fc1.bias": torch.zeros(3)}), r"blocks.0.mlp.fc1.bias has shape \(3,\)"),
        (lambda s: s.pop("cls_token"), "not a DINOv2 checkpoint: no tensor 'cls_token'"),
    ],
)
def test_a_foreign_state_dict_is_refused_naming_the_file_and_the_tensor(tmp_path, change, message):
    state = dinov2_state_dict()
    change(state)
    path = write_dinov2(tmp_path, state)
    with pytest.raises(BadInput, match=f"{path}: {message}"):
        load_dinov2(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "dinov2_vitl14_pretrain.pth").write_bytes(pickle.dumps({"cls_token": _Payload(marker)}))
    with pytest.raises(BadInput, match="not a DINOv2 state dict readable without running code"):
        load_dinov2(tmp_path / "dinov2_vitl14_pretrain.pth")
    assert not marker.exists()


def test_missing_weights_stop_the_jobs_naming_the_file_before_torch_is_imported(tmp_path, monkeypatch):
    monkeypatch.setenv(DINOV2_DIR_ENV, str(tmp_path / "none"))
    with pytest.raises(MissingWeights, match=str(tmp_path / "none" / "dinov2_vitl14_pretrain.pth")):
        require_dinov2()
    data = '"data": {"source": "edm_zip", "path": "/nowhere/d.zip"}'
    env = {"PATH": "/usr/bin:/bin", DINOV2_DIR_ENV: str(tmp_path)}
    runs = {
        "evaluate.fd_dinov2": ["fid-reference", "--metric", "fd_dinov2", "--params", "{%s}" % data, "--work", "w"],
        "evaluate.metrics": [
            "evaluate",
            "--params",
            '{%s, "evaluate": {"metrics": ["fd_dinov2"]}}' % data,
            "--model",
            "m",
            "--label",
            "x",
        ],
    }
    for key, args in runs.items():
        cmd = [sys.executable, "-X", "importtime", "-m", "cmt", *args, "--out", str(tmp_path / "r.npz")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
        message = f"missing weights: {key}: FD_DINOv2 needs the DINOv2 ViT-L/14 weights at {tmp_path}"
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "| torch" not in done.stderr and "/nowhere" not in done.stderr and not (tmp_path / "r.npz").exists()


def test_a_set_scores_zero_against_its_own_statistics_and_more_when_shifted(dinov2, tmp_path):
    """The reference rule's statistics of every image, then the scorer: the same images give ~0, darker ones more."""
    from cmt.stages.evaluate import Scorer

    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    features = DETECTORS["fd_dinov2"].build("torch", CPU)
    stats = reference_statistics(ImageDataset(images, None, "ref"), features, "torch", batch_size=16, workers=0)
    assert stats["mu"].shape == (64,) and stats["count"] == 40
    save_statistics(tmp_path / "ref.npz", stats)
    scorer = Scorer(None, None, {"fd_dinov2": tmp_path / "ref.npz"}, {"fd_dinov2": "torch"})
    same = scorer.score([scorer.measure(images[:25]), scorer.measure(images[25:])])["fd_dinov2"]
    darker = scorer.score([scorer.measure(images * 0.5 - 0.5)])["fd_dinov2"]
    assert abs(same) < 1e-6 * darker and darker > 0
    assert distance_to(features(images), stats) == pytest.approx(same, abs=1e-9)
