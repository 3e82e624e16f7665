"""Metrics: FD/KID closed forms, the feature net on real digits, Inception weights never downloaded."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cmt.data.datasets import load_digits, split
from cmt.evaluation.featnet_fd import (
    classifier_scores,
    extract,
    kernel_distance,
    load_feature_net,
    save_feature_net,
    train_feature_net,
)
from cmt.evaluation.frechet import feature_distance


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert feature_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # equal covariances: FD = ||mu1 - mu2||^2
    assert feature_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # scaled copy: FD = sum (1 - s)^2 * var over dims (same mean)
    assert feature_distance(a, 2 * a) == pytest.approx(4 * 1.0, rel=0.05)


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2000, 8)), rng.standard_normal((2000, 8))
    assert abs(kernel_distance(a, b)) < 0.01 < kernel_distance(a, b + 1.0)


@pytest.fixture(scope="module")
def featnet(tmp_path_factory):
    train, holdout = split(load_digits(), 0.2, seed=0)
    net, accuracy = train_feature_net(train, holdout, epochs=8, seed=0, work_dir=tmp_path_factory.mktemp("featnet"))
    return net, accuracy, holdout


def test_feature_net_learns_real_digits_and_round_trips(featnet, tmp_path):
    net, accuracy, holdout = featnet
    assert accuracy > 0.85
    save_feature_net(net, tmp_path / "f.safetensors", {"holdout_accuracy": accuracy})
    back = load_feature_net(tmp_path / "f.safetensors")
    np.testing.assert_array_equal(extract(back, holdout.images), extract(net, holdout.images))


def test_feature_net_files_are_byte_identical_across_processes_and_old_files_load(featnet, tmp_path):
    """safetensors writes a header of several metadata keys in a per-process random order: we write one."""
    net, accuracy, holdout = featnet
    torch.save(net.state_dict(), tmp_path / "state.pt")
    script = (
        "import sys, torch; from cmt.evaluation.featnet_fd import ClassifierFeatureNet, save_feature_net;"
        f"net = ClassifierFeatureNet(**{net.config!r}); net.load_state_dict(torch.load(sys.argv[1]));"
        "save_feature_net(net, sys.argv[2], {'holdout_accuracy': 0.9})"
    )
    files = [tmp_path / f"f{k}.safetensors" for k in range(5)]  # two header keys: all five alike with p = 1/16
    for file in files:
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.pt"), str(file)], check=True)
    assert len({file.read_bytes() for file in files}) == 1
    legacy = {"config": json.dumps(net.config), "meta": json.dumps({"holdout_accuracy": accuracy})}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "old.safetensors", metadata=legacy)
    old = load_feature_net(tmp_path / "old.safetensors")
    np.testing.assert_array_equal(extract(old, holdout.images), extract(net, holdout.images))


def test_classifier_scores_detect_mode_collapse(featnet):
    net, _, holdout = featnet
    varied = classifier_scores(net, holdout.images)
    collapsed = classifier_scores(net, holdout.images[:1].repeat(300, 1, 1, 1))
    assert varied["class_entropy"] > 0.95 and collapsed["class_entropy"] == 0.0
    assert 0.8 < varied["confidence"] <= 1.0
