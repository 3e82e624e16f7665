"""Evaluation in batches: each sample's noise, re-noise draw and label are fixed by its index and the seed, so the
features (and every score) are the same whatever the batch size, up to the float rounding of batched kernels (CPU
convolutions block their work by batch size: about 1e-7 relative here)."""

import numpy as np
import pytest
import torch
from helpers.models import conditional_denoiser

from cmt.data.datasets import ImageDataset
from cmt.evaluation.featnet_fd import ClassifierFeatureNet, save_feature_net
from cmt.nets import PRESETS, build_network
from cmt.numerics.precond import Denoiser
from cmt.stages.evaluate import Scorer, sample_batches, samplers, score_samples

PRECOND = {"sigma_max": 80.0, "sigma_min": 0.002}
TEACHER_SAMPLER = {"grid": "karras", "steps": 4, "solver": "heun"}
ONE_RANGE = {"count": 1, "reduce": "min"}


def features_by_sampler(model, meta, scorer, batch_size):
    cfg = {"num_samples": 12, "batch_size": batch_size, "seed": 5, "t_mid": 0.821, "sample": TEACHER_SAMPLER}
    found = {}
    for name, images, labels in sample_batches(model, samplers(model, meta, cfg, PRECOND), cfg, (1, 8, 8), "cpu"):
        feats = scorer.measure(images)["featnet"]
        found.setdefault(name, []).append((feats, labels))
    return {name: (np.concatenate([f for f, _ in parts]), [lab for _, lab in parts]) for name, parts in found.items()}


@pytest.fixture
def scorer(tmp_path):
    torch.manual_seed(0)
    save_feature_net(ClassifierFeatureNet(1, 10), tmp_path / "featnet.safetensors", {})
    return Scorer(tmp_path / "featnet.safetensors", ImageDataset(torch.rand(30, 1, 8, 8) * 2 - 1, None, "ref"))


@pytest.mark.parametrize("kind", ["consistency", "diffusion", "conditional"])
def test_features_are_the_same_with_one_two_or_three_batches(scorer, kind):
    torch.manual_seed(1)
    model = conditional_denoiser() if kind == "conditional" else Denoiser(build_network(PRESETS["digits-tiny"])).eval()
    meta = {"model_kind": "diffusion" if kind == "diffusion" else "consistency"}
    whole, halves, thirds = (features_by_sampler(model, meta, scorer, size) for size in (12, 6, 4))
    for name, (feats, labels) in whole.items():
        np.testing.assert_allclose(halves[name][0], feats, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(thirds[name][0], feats, rtol=1e-5, atol=1e-6, err_msg=name)
        if kind == "conditional":
            assert torch.equal(torch.cat(thirds[name][1]), labels[0])


def test_scores_and_grids_do_not_depend_on_the_batch_size(scorer, tmp_path):
    model = conditional_denoiser()
    results = []
    for size in (12, 5):
        out = tmp_path / str(size)
        out.mkdir()
        cfg = {"num_samples": 12, "batch_size": size, "seed": 5, "t_mid": 0.821, "sample": TEACHER_SAMPLER}
        named = samplers(model, {"model_kind": "consistency"}, cfg, PRECOND)
        scores, _ = score_samples(model, named, {**cfg, "seed_ranges": ONE_RANGE}, scorer, "cpu", out)
        results.append((scores, (out / "grid-2step.png").read_bytes()))
    (scores, grid), (scores_5, grid_5) = results
    assert scores_5 == pytest.approx(scores, rel=1e-5)
    assert grid == grid_5  # 8-bit images: the same pixels


@pytest.mark.parametrize("reduce", ["min", "mean"])
def test_seed_ranges_score_disjoint_index_ranges_and_reduce_the_distances(scorer, tmp_path, reduce):
    """EDM2's protocol (docs/latent.md 8.7): range r holds sample indices r*N .. (r+1)*N - 1 and is scored on its own;
    the headline of a distance is the minimum (or mean) over the ranges, a class score the mean; range 0 is the
    one-range evaluation."""
    model = conditional_denoiser()
    cfg = {"num_samples": 10, "batch_size": 4, "seed": 5, "t_mid": 0.821, "sample": TEACHER_SAMPLER}
    named = samplers(model, {"model_kind": "consistency"}, cfg, PRECOND)
    (tmp_path / "one").mkdir(), (tmp_path / "three").mkdir()
    one, _ = score_samples(model, named, {**cfg, "seed_ranges": ONE_RANGE}, scorer, "cpu", tmp_path / "one")
    ranges = {"count": 3, "reduce": reduce}
    headline, per_range = score_samples(model, named, {**cfg, "seed_ranges": ranges}, scorer, "cpu", tmp_path / "three")
    assert len(per_range) == 3 and per_range[0] == one
    second = [
        scorer.measure(images)
        for name, images, _ in sample_batches(model, named, cfg, (1, 8, 8), "cpu", start=10)
        if name == "2step"
    ]
    assert per_range[1]["fd_2step"] == scorer.score(second)["fd"]  # indices 10..19: the second range
    assert len({r["fd_2step"] for r in per_range}) == 3  # three different sample sets
    pick = min if reduce == "min" else np.mean
    for key in ("fd_1step", "fd_2step", "kid_2step"):
        assert headline[key] == pytest.approx(pick([r[key] for r in per_range]), rel=1e-12)
    assert headline["confidence_2step"] == pytest.approx(np.mean([r["confidence_2step"] for r in per_range]))
