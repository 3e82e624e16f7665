"""The authors' latent LPIPS (docs/latent.md 8.5): a distance (zero on equal inputs, symmetric, one augmentation for
both inputs, gradients to the student only), its backbone's taps at the authors' resolutions, the backbone folder's
round trip and refusals, the augmentation's band filter, and the embedded backbone learning the digits' classes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cmt.config import resolve_params
from cmt.errors import BadInput, MissingInput
from cmt.latents.augment import BANDS, augment_pair, band_gains, filtered
from cmt.latents.lpips import CONFIG, WEIGHTS, LatentLPIPS, load_backbone, save_backbone
from cmt.latents.vgg import BACKBONES, LatentVGG
from cmt.stages import latent_lpips, vae
from cmt.stages.latent_job import LatentJob


def tiny(seed: int = 0) -> LatentVGG:
    torch.manual_seed(seed)
    return LatentVGG(BACKBONES["tiny"])


def latents(seed: int, n: int = 6) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_distance_is_zero_on_equal_inputs_and_symmetric_under_the_same_draws():
    distance, a, b = LatentLPIPS(tiny()), latents(0), latents(1)
    assert torch.equal(distance(a, a.clone(), gen()), torch.zeros(6))
    ab, ba = distance(a, b, gen()), distance(b, a, gen())
    assert torch.equal(ab, ba) and bool((ab > 0).all())


def test_both_inputs_get_one_augmentation_that_differs_per_sample_and_from_the_input():
    a = latents(0)
    x, y = augment_pair(a, a.clone(), gen())
    assert torch.equal(x, y)  # drawn once per pair: two independent draws would differ
    assert not torch.allclose(x, a, atol=1e-2)
    assert not torch.allclose(x[0], x[1], atol=1e-2) or not torch.allclose(a[0], a[1])  # per-sample draws


def test_augmentation_changes_the_value_and_no_generator_means_no_augmentation():
    distance, a, b = LatentLPIPS(tiny()), latents(0), latents(1)
    plain = LatentLPIPS(tiny(), augment=False)
    assert torch.equal(distance(a, b), plain(a, b, gen()))
    assert not torch.allclose(distance(a, b, gen()), plain(a, b))


def test_gradients_reach_the_student_only():
    distance = LatentLPIPS(tiny())
    student = torch.nn.Conv2d(4, 4, 1)
    target = latents(1)
    distance(student(latents(0)), target, gen()).sum().backward()
    assert student.weight.grad is not None and float(student.weight.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in distance.parameters())
    distance.train()
    assert not distance.backbone.training  # no dropout in the frozen backbone when the student trains


def test_the_authors_backbone_taps_a_64x64_latent_at_64_64_64_32_16():
    with torch.device("meta"):
        model = LatentVGG(BACKBONES["vgg16"])
        taps = model.taps(torch.empty(1, 4, 64, 64))
    assert [tuple(t.shape[1:]) for t in taps] == [
        (64, 64, 64),
        (128, 64, 64),
        (256, 64, 64),
        (512, 32, 32),
        (512, 16, 16),
    ]
    assert tuple(model(torch.empty(2, 4, 64, 64, device="meta")).shape) == (2, 1000)


def test_the_band_filter_is_linear_in_its_gains_and_unit_gains_are_the_identity():
    x = latents(0)
    torch.testing.assert_close(filtered(x, torch.ones(6, BANDS)), x, rtol=0, atol=1e-5)
    gains = band_gains(6, gen(), x.device)
    assert torch.allclose(gains.square().mean(1), torch.ones(6))
    parts = sum(gains[:, k].view(6, 1, 1, 1) * filtered(x, torch.eye(BANDS)[k].expand(6, -1)) for k in range(BANDS))
    torch.testing.assert_close(filtered(x, gains), parts, rtol=0, atol=1e-5)


def test_a_backbone_folder_round_trips_and_bad_ones_are_refused_naming_the_file(tmp_path):
    model = tiny(1).eval()
    save_backbone(model, tmp_path / "b", {"source": "train"})
    again = load_backbone(tmp_path / "b").eval()
    x = latents(2)
    assert torch.equal(again(x), model(x))
    with pytest.raises(MissingInput, match=str(tmp_path / "missing" / CONFIG)):
        load_backbone(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG).write_text(json.dumps({"config": BACKBONES["vgg16"].to_dict()}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad" / WEIGHTS))
    with pytest.raises(BadInput, match="not a latent LPIPS backbone"):
        load_backbone(tmp_path / "bad")


def test_the_embedded_backbone_learns_the_digits_classes_from_their_latents(tmp_path):
    """The tiny backbone on a digits latent zip (a briefly trained autoencoder): held-out top-1 far above 1/10."""
    cfg = {"name": "t", "latent": {"vae": {"train": {"iterations": 300}}, "lpips": {"train": {"iterations": 250}}}}
    p = resolve_params(json.dumps(cfg))
    vae.run(LatentJob(p["latent"], p["data"], 0, tmp_path / "vae", tmp_path / "vae-w"))
    from cmt.stages import encode

    encode.run(p["data"], p["latent"]["encode"], tmp_path / "vae", tmp_path / "latents.zip", "cpu")
    data = {**p["data"], "source": "latent_zip", "path": str(tmp_path / "latents.zip")}
    job = LatentJob(p["latent"], data, 0, tmp_path / "out", tmp_path / "w", "cpu")
    record = latent_lpips.run(job)
    assert record["classes"] == 10 and record["holdout_top1"] > 0.4
    assert json.loads((tmp_path / "out" / "run.json").read_text())["metrics"]["holdout_top1"] == record["holdout_top1"]
    assert load_backbone(tmp_path / "out").cfg.in_channels == 4


def test_the_accuracy_draws_of_a_streamed_zip_are_those_of_the_same_zip_in_memory(tmp_path):
    """ImageNet's latent zip streams: the backbone's held-out draws read row by row equal the in-memory ones."""
    from cmt.data.latent_zip import load_latent_zip, write_latent_zip
    from cmt.latents.conventions import EDM2_RAW_MEAN, EDM2_RAW_STD, edm2_convention

    moments = [torch.rand(8, 4, 4, generator=gen(k)).numpy() for k in range(5)]
    write_latent_zip(
        tmp_path / "l.zip",
        5,
        iter(zip(moments, [0, 1, 2, 3, 4])),
        edm2_convention(EDM2_RAW_MEAN, EDM2_RAW_STD).to_dict(),
    )
    streamed, in_memory = load_latent_zip(tmp_path / "l.zip", memory_limit=100), load_latent_zip(tmp_path / "l.zip")
    assert type(streamed).__name__ == "LatentFiles"
    (a, labels_a), (b, labels_b) = latent_lpips.drawn(streamed, 7, limit=4), latent_lpips.drawn(in_memory, 7, limit=4)
    assert torch.equal(a, b) and torch.equal(labels_a, labels_b) and len(a) == 4
