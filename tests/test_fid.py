"""FID through clean-fid's Inception wrapper and resizers, on a TorchScript stand-in placed where the weights are
looked for: missing weights fail at once naming the file, statistics of the full training set, the mode recorded
and checked, published statistics sha256-checked, scores independent of the batch size."""

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.image_standins import write_image_folder, write_inception

from cmt.data.dataset_tool import build
from cmt.data.datasets import load_edm_zip
from cmt.evaluation.detectors import DETECTORS
from cmt.evaluation.frechet import feature_distance, frechet_distance, statistics
from cmt.evaluation.reference_stats import distance_to, load_statistics, reference_statistics, save_statistics
from cmt.formats.fetch import FetchError
from cmt.formats.pretrained import INCEPTION_DIR_ENV
from cmt.stages import fid_reference

CPU = torch.device("cpu")


@pytest.fixture
def inception(tmp_path, monkeypatch):
    write_inception(tmp_path / "weights")
    monkeypatch.setenv(INCEPTION_DIR_ENV, str(tmp_path / "weights"))
    return tmp_path / "weights"


@pytest.fixture
def images_zip(tmp_path):
    write_image_folder(tmp_path / "src", 40, 8)
    build({"from": "image_folder", "archive": str(tmp_path / "src")}, tmp_path / "d.zip")
    return tmp_path / "d.zip"


def inception_features(mode: str):
    return DETECTORS["fid"].build(mode, CPU)


def inception_statistics(data, mode: str, batch_size: int) -> dict:
    return reference_statistics(data, inception_features(mode), mode, batch_size, workers=0)


def test_missing_weights_fail_naming_the_file_and_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv(INCEPTION_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "inception-2015-12-05.pt")):
        inception_features("legacy_tensorflow")
    assert not (tmp_path / "empty").exists()


def test_the_jobs_stop_naming_the_file_before_importing_torch_or_reading_data(tmp_path):
    """`fid-reference` and `evaluate` check the Inception file first: no torch import, no dataset, no output."""
    data = '"data": {"source": "edm_zip", "path": "/nowhere/d.zip"}'
    env = {"PATH": "/usr/bin:/bin", INCEPTION_DIR_ENV: str(tmp_path)}
    verbs = {
        "fid-reference": ["--params", "{%s}" % data, "--work", str(tmp_path / "w")],
        "evaluate": ["--params", '{%s, "evaluate": {"metrics": ["fid"]}}' % data, "--model", "m", "--label", "x"],
    }
    keys = {"fid-reference": "evaluate.fid", "evaluate": "evaluate.metrics"}  # the setting that needs the file
    for verb, args in verbs.items():
        cmd = [sys.executable, "-X", "importtime", "-m", "cmt", verb, *args, "--out", str(tmp_path / "r.npz")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        message = f"cmt {verb}: missing weights: {keys[verb]}: FID needs the Inception weights at {tmp_path}"
        assert done.returncode == 1 and message in done.stderr
        assert "| torch" not in done.stderr and "/nowhere" not in done.stderr and not (tmp_path / "r.npz").exists()


def test_frechet_distance_agrees_with_clean_fid_sqrtm():
    from cleanfid.fid import frechet_distance as clean_fid_fd

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((100, 256)), rng.standard_normal((300, 256)) @ rng.standard_normal((256, 256)) * 0.2
    (mu1, s1), (mu2, s2) = statistics(a), statistics(b + 0.1)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(clean_fid_fd(mu1, s1, mu2, s2), rel=1e-7)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-7 * np.trace(s1)  # rank-deficient: rounding only
    # the offline feature net's FD (64 features, about 1000 samples, as evaluate scores): the same formula
    f1, f2 = rng.standard_normal((1000, 64)), rng.standard_normal((900, 64)) @ rng.standard_normal((64, 64)) * 0.3
    expected = clean_fid_fd(*statistics(f1), *statistics(f2 + 0.2))
    assert feature_distance(f1, f2 + 0.2) == pytest.approx(expected, rel=1e-7)


def test_reference_of_the_training_set_scores_itself_zero_and_others_higher(inception, images_zip):
    data = load_edm_zip(images_zip)
    stats = inception_statistics(data, "legacy_tensorflow", batch_size=7)
    assert stats["count"] == 40 and stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
    features = inception_features("legacy_tensorflow")
    same = np.concatenate([features(data.read(torch.arange(k, min(k + 16, 40)))) for k in range(0, 40, 16)])
    shifted = features((data.images * 0.5).clamp(-1, 1))
    assert abs(distance_to(same, stats)) < 1e-3 * distance_to(shifted, stats)  # 0 up to sqrtm of a rank-39 covariance


def test_modes_differ_and_a_mismatch_is_refused(inception, images_zip, tmp_path):
    from cmt.stages.evaluate import Scorer

    data = load_edm_zip(images_zip)
    legacy = inception_statistics(data, "legacy_tensorflow", 40)
    clean = inception_statistics(data, "clean", 40)
    assert not np.allclose(legacy["mu"], clean["mu"])  # clean-fid's PIL bicubic resize outside the network
    save_statistics(tmp_path / "clean.npz", clean)
    assert load_statistics(tmp_path / "clean.npz", "fid")["mode"] == "clean"
    with pytest.raises(ValueError, match="statistics of mode 'clean', evaluate.fid.mode is 'legacy_tensorflow'"):
        Scorer(None, None, {"fid": tmp_path / "clean.npz"}, {"fid": "legacy_tensorflow"})


def test_published_statistics_are_sha256_checked_and_validated(inception, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar10-32x32.npz", mu=rng.standard_normal(2048), sigma=np.eye(2048))
    digest = hashlib.sha256((tmp_path / "cifar10-32x32.npz").read_bytes()).hexdigest()
    cfg = {"mode": "legacy_tensorflow", "batch_size": 10}
    url = (tmp_path / "cifar10-32x32.npz").as_uri()
    fid_reference.run(
        "fid", {**cfg, "reference": {"url": url, "sha256": digest}}, {}, tmp_path / "ref.npz", tmp_path / "w", "cpu"
    )
    stats = load_statistics(tmp_path / "ref.npz", "fid")
    assert stats["mode"] == "legacy_tensorflow" and np.array_equal(stats["sigma"], np.eye(2048))
    assert stats["source"] == url  # the statistics record which published file they are
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fid_reference.run(
            "fid", {**cfg, "reference": {"url": url, "sha256": "0" * 64}}, {}, tmp_path / "x.npz", tmp_path / "w", "cpu"
        )
    with pytest.raises(ValueError, match="published statistics are legacy_tensorflow mode"):
        fid_reference.run(
            "fid",
            {**cfg, "mode": "clean", "reference": {"url": url, "sha256": digest}},
            {},
            tmp_path / "y.npz",
            tmp_path / "w",
            "cpu",
        )
    np.savez(tmp_path / "bad.npz", mu=np.zeros(2048))
    with pytest.raises(ValueError, match="bad.npz: no array 'sigma'"):
        load_statistics(tmp_path / "bad.npz", "fid", 2048)
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match=r"small.npz: mu must be finite of shape \(2048,\)"):
        load_statistics(tmp_path / "small.npz", "fid", 2048)


def test_adms_reference_file_gives_its_mu_and_sigma_without_unpickling_or_reading_the_images(tmp_path):
    # ADM's VIRTUAL_imagenet256_labeled.npz holds arr_0 (reference images), mu, sigma, mu_s, sigma_s; here arr_0 is
    # an object array, which numpy can only read by unpickling: loading must not touch it
    gen = np.random.default_rng(0)
    mu, sigma = gen.standard_normal(2048), np.diag(gen.uniform(0.1, 1.0, 2048))
    arr_0 = np.empty(2, dtype=object)
    arr_0[:] = [{"payload": 1}, None]
    np.savez(tmp_path / "adm.npz", arr_0=arr_0, mu=mu, sigma=sigma, mu_s=mu[:7], sigma_s=sigma[:7, :7])
    stats = load_statistics(tmp_path / "adm.npz", "fid", 2048, mode="legacy_tensorflow")
    assert np.array_equal(stats["mu"], mu) and np.array_equal(stats["sigma"], sigma)
    assert stats["mode"] == "legacy_tensorflow" and stats["count"] == -1 and stats["source"] == "adm.npz"
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(tmp_path / "adm.npz")["arr_0"]  # the object array does need unpickling


class _Payload:
    """What a hostile pickle carries: a callable the unpickler would run (here: writing a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_edm2s_reference_pickle_is_read_as_plain_data_and_a_hostile_one_never_runs(tmp_path):
    """EDM2's dataset-refs/img512.pkl layout (num_images, fid and fd_dinov2 mu/sigma), fetched and sha256-checked
    like any published reference; a pickle that names any other callable is refused before anything runs."""
    gen = np.random.default_rng(1)
    mu, sigma = gen.standard_normal(2048), np.diag(gen.uniform(0.1, 1.0, 2048))
    dino_mu, dino_sigma = mu[:1024] + 1, sigma[:1024, :1024] * 2
    edm2 = {"num_images": 1281167, "fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": dino_mu, "sigma": dino_sigma}}
    (tmp_path / "img512.pkl").write_bytes(pickle.dumps(edm2))
    url, digest = (tmp_path / "img512.pkl").as_uri(), hashlib.sha256((tmp_path / "img512.pkl").read_bytes()).hexdigest()
    cfg = {"mode": "legacy_tensorflow", "batch_size": 10, "reference": {"url": url, "sha256": digest}}
    fid_reference.run("fid", cfg, {}, tmp_path / "ref.npz", tmp_path / "w", "cpu")
    stats = load_statistics(tmp_path / "ref.npz", "fid")
    assert np.array_equal(stats["mu"], mu) and np.array_equal(stats["sigma"], sigma)
    assert stats["count"] == 1281167 and stats["source"] == url
    # the same file's FD_DINOv2 statistics, under their own key and mode (docs/latent.md 8.7)
    dino = {"mode": "torch", "batch_size": 10, "reference": cfg["reference"]}
    fid_reference.run("fd_dinov2", dino, {}, tmp_path / "dino.npz", tmp_path / "w2", "cpu")
    stats = load_statistics(tmp_path / "dino.npz", "fd_dinov2", 1024)
    assert np.array_equal(stats["mu"], dino_mu) and np.array_equal(stats["sigma"], dino_sigma)
    assert stats["mode"] == "torch" and stats["count"] == 1281167
    marker = tmp_path / "ran"
    (tmp_path / "hostile.pkl").write_bytes(pickle.dumps({"fid": {"mu": _Payload(marker)}}))
    with pytest.raises(ValueError, match="hostile.pkl: the pickle asks for pathlib"):
        load_statistics(tmp_path / "hostile.pkl", "fid")
    assert not marker.exists()
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"mu": mu}))
    with pytest.raises(ValueError, match=r"other.pkl: no 'fid' statistics \(EDM2's layout; found: mu\)"):
        load_statistics(tmp_path / "other.pkl", "fid")
