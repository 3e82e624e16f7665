"""The latent path (cmt/latents, cmt/data/latent_zip.py, docs/latent.md 4): both conventions' constants and round
trips, a trained tiny autoencoder in each convention, the autoencoder from a local folder, a Hugging Face cache and
a file:// fetch with sha256, the latent zip's round trip, and the missing-weights error's time."""

import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cmt.config import resolve_params
from cmt.data.batches import make_batches
from cmt.data.datasets import load_dataset, train_holdout
from cmt.data.latent_zip import LatentFiles, latent_name, load_latent_zip, write_latent_zip
from cmt.data.pixels import holdout_images, sample_decoder
from cmt.errors import BadInput
from cmt.formats.fetch import FetchError
from cmt.latents.autoencoder import Autoencoder, load_autoencoder
from cmt.latents.conventions import (
    EDM2_RAW_MEAN,
    EDM2_RAW_STD,
    Convention,
    edm2_convention,
    measured_convention,
    sd_convention,
)
from cmt.sampling.trajectory_sets import start_points, trajectory_spec
from cmt.stages import encode, vae
from cmt.stages.latent_job import LatentJob

ITERATIONS = 300


def test_edm2s_constants_are_its_published_scale_and_bias():
    # EDM2's StabilityVAEEncoder: scale = 0.5 / raw_std, bias = -raw_mean * scale (its printed float32 values)
    c = edm2_convention(EDM2_RAW_MEAN, EDM2_RAW_STD)
    np.testing.assert_allclose(c.scale, [0.119904, 0.108225, 0.134771, 0.152439], atol=1e-6)
    np.testing.assert_allclose(c.bias, [-0.696643, -0.351732, -0.016173, 0.327744], atol=1e-6)


@pytest.mark.parametrize("name", ["sd", "edm2"])
def test_a_convention_is_inverted_exactly_and_measured_constants_normalise(name):
    gen = torch.Generator().manual_seed(0)
    raw = (
        torch.randn(500, 4, 4, 4, generator=gen, dtype=torch.float64)
        * torch.tensor([3.0, 1.0, 5.0, 0.5]).reshape(1, -1, 1, 1).double()
        + torch.tensor([2.0, -1.0, 0.0, 7.0]).reshape(1, -1, 1, 1).double()
    )
    c = measured_convention(name, raw)
    torch.testing.assert_close(c.to_raw(c.to_latent(raw)), raw, rtol=0, atol=1e-12)
    z = c.to_latent(raw)
    if name == "sd":  # one scale: the latents' overall std is 1 (the channel means stay)
        assert float(z.std()) == pytest.approx(1.0, abs=1e-9)
    else:  # per channel: mean 0, std 0.5 (EDM2's final_mean, final_std)
        per_channel = z.transpose(0, 1).flatten(1)
        torch.testing.assert_close(per_channel.mean(1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-9)
        torch.testing.assert_close(per_channel.std(1), torch.full((4,), 0.5, dtype=torch.float64), rtol=0, atol=1e-9)
    pixels = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(c.pixels_out(c.pixels_in(pixels)), pixels)
    assert float(c.pixels_in(-torch.ones(1))) == (0.0 if name == "edm2" else -1.0)


def test_a_convention_refuses_bad_names_and_mismatched_channels():
    with pytest.raises(BadInput, match="unknown convention 'ldm'"):
        Convention("ldm", (1.0,), (0.0,))
    with pytest.raises(BadInput, match="4 channels, latents have 3"):
        sd_convention(0.18215, 4).to_latent(torch.zeros(1, 3, 2, 2))


def _job(tmp_path: Path, name: str, **vae_cfg) -> LatentJob:
    cfg = {"latent": {"convention": name, "vae": vae_cfg or {"train": {"iterations": ITERATIONS}}}, "name": "t"}
    p = resolve_params(json.dumps(cfg))
    return LatentJob(p["latent"], p["data"], 0, tmp_path / "vae", tmp_path / "work")


@pytest.fixture(scope="module", params=["sd", "edm2"])
def trained(request, tmp_path_factory):
    """A tiny autoencoder trained on the digits in one convention, its folder and record."""
    folder = tmp_path_factory.mktemp(f"vae-{request.param}")
    record = vae.run(_job(folder, request.param))
    return folder / "vae", record


def test_a_trained_autoencoder_round_trips_in_its_convention_and_not_in_the_other(trained):
    folder, record = trained
    auto = load_autoencoder(folder)
    name = auto.convention.name
    assert record["reconstruction"]["psnr_db"] > 17, record  # pixels in [-1, 1]: 17 dB is an rms error of 0.28
    from cmt.data.datasets import load_digits

    images = load_digits().images[:256]
    with torch.no_grad():
        mean, std = auto.moments(images)
        own = (auto.decode(auto.latents(mean, std, torch.zeros_like(mean))) - images).square().mean()
        other = Convention("edm2" if name == "sd" else "sd", auto.convention.scale, auto.convention.bias)
        crossed = Autoencoder(auto.vae, other)
        wrong = (crossed.decode(crossed.latents(*crossed.moments(images), torch.zeros_like(mean))) - images).square()
    assert float(own) == pytest.approx(record["reconstruction"]["mse"], rel=0.5)
    assert float(wrong.mean()) > 2 * float(own)  # the pixel range is part of the convention


def test_the_record_keeps_the_measured_constants_and_every_file_loads(trained):
    folder, record = trained
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "run.json",
        "vae.json",
    ]
    assert record["source"] == "train" and record["train"]["iterations"] == ITERATIONS
    assert load_autoencoder(folder).convention == Convention.from_dict(json.loads((folder / "vae.json").read_text()))


def _hub_cache(root: Path, released: Path, repo: str, commit: str) -> None:
    """A Hugging Face cache holding ``repo`` at ``commit`` (its main branch), as huggingface_hub lays it out."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copyfile(released / name, snapshot / name)


def test_a_local_cache_and_a_file_fetch_give_the_same_autoencoder_with_its_files_sha256(trained, tmp_path):
    released, _ = trained
    name = load_autoencoder(released).convention.name  # edm2: EDM2's published constants (any 4-channel VAE)
    _hub_cache(tmp_path / "hub", released, "org/tiny-vae", "c0ffee")
    local = vae.run(_job(tmp_path / "a", name, source="local", path=str(tmp_path / "hub"), repo="org/tiny-vae"))
    weights = released / "diffusion_pytorch_model.safetensors"
    sha = {n: hashlib.sha256((released / n).read_bytes()).hexdigest() for n in ("config.json", weights.name)}
    assert local["files"] == sha
    served = tmp_path / "server" / "org/tiny-vae" / "resolve" / "c0ffee"
    served.mkdir(parents=True)
    for n in sha:
        shutil.copyfile(released / n, served / n)
    base = (tmp_path / "server").as_uri()
    fetched = vae.run(
        _job(tmp_path / "b", name, source="fetch", repo="org/tiny-vae", revision="c0ffee", files=sha, base_url=base)
    )
    assert fetched["files"] == sha and fetched["reconstruction"] == local["reconstruction"]
    assert (tmp_path / "b" / "vae" / weights.name).read_bytes() == weights.read_bytes()  # byte for byte
    bad = {**sha, weights.name: "0" * 64}
    with pytest.raises(FetchError, match="sha256 mismatch"):
        vae.run(
            _job(tmp_path / "c", name, source="fetch", repo="org/tiny-vae", revision="c0ffee", files=bad, base_url=base)
        )
    assert not (tmp_path / "c" / "vae").exists()


def test_missing_weights_stop_the_job_in_under_2_s_naming_the_path_and_the_source(tmp_path):
    params = {"name": "t", "latent": {"vae": {"source": "local", "path": str(tmp_path / "nowhere"), "repo": "a/b"}}}
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmt",
            "vae",
            "--params",
            json.dumps(params),
            "--out",
            str(tmp_path / "o"),
            "--work",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode != 0 and elapsed < 2.0, (elapsed, done.stderr)
    message = done.stderr.strip()
    assert "\n" not in message and str(tmp_path / "nowhere") in message and "huggingface.co/a/b" in message, message
    assert not (tmp_path / "o").exists()


def test_the_latent_zip_round_trips_and_is_byte_identical_when_rewritten(tmp_path):
    gen = torch.Generator().manual_seed(0)
    moments = [np.asarray(torch.rand(8, 4, 4, generator=gen), dtype=np.float32) for _ in range(5)]
    labels = [3, 1, 4, 1, 5]
    meta = sd_convention(0.5, 4).to_dict()
    for name in ("a.zip", "b.zip"):
        write_latent_zip(tmp_path / name, 5, iter(zip(moments, labels)), meta)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    data = load_latent_zip(tmp_path / "a.zip")
    assert data.shape == (4, 4, 4) and data.labels.tolist() == labels and data.convention == sd_convention(0.5, 4)
    for i, m in enumerate(moments):
        assert torch.equal(data.mean[i], torch.from_numpy(m[:4])) and torch.equal(data.std[i], torch.from_numpy(m[4:]))
    noise = torch.randn(5, 4, 4, 4, generator=gen)
    torch.testing.assert_close(data.draw(torch.arange(5), noise), 0.5 * (data.mean + data.std * noise))
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert latent_name(4) in zf.namelist() and latent_name(4) == "00000/img-mean-std-00000004.npy"


def test_a_damaged_latent_zip_is_refused_naming_the_file_and_entry(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("latents.json", json.dumps({**sd_convention(1.0, 4).to_dict(), "count": 1, "shape": [4, 2, 2]}))
        zf.writestr(latent_name(0), b"not numpy")
    with pytest.raises(BadInput, match=f"{path}: 00000/img-mean-std-00000000.npy: not a numpy array"):
        load_latent_zip(path)
    (tmp_path / "plain.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr(latent_name(0), b"")
    with pytest.raises(BadInput, match="no latents.json"):
        load_latent_zip(tmp_path / "plain.zip")


def test_encoding_stores_each_images_posterior_and_label(trained, tmp_path):
    folder, _ = trained
    params = resolve_params(json.dumps({"name": "t", "latent": {}}))
    record = encode.run(params["data"], params["latent"]["encode"], folder, tmp_path / "latents.zip")
    data = load_latent_zip(tmp_path / "latents.zip")
    from cmt.data.datasets import load_digits

    digits = load_digits()
    auto = load_autoencoder(folder)
    with torch.no_grad():
        mean, std = auto.moments(digits.images[[0, 900, 1796]])
    torch.testing.assert_close(data.mean[[0, 900, 1796]], mean)
    torch.testing.assert_close(data.std[[0, 900, 1796]], std)
    assert torch.equal(data.labels, digits.labels) and record["count"] == 1797
    assert data.convention == auto.convention and data.meta["vae"]["source"] == "train"


def test_latent_batches_are_fresh_posterior_draws_fixed_by_the_generator(tmp_path):
    mean, std = np.full((8, 2, 2), 3.0, dtype=np.float32), np.full((8, 2, 2), 0.5, dtype=np.float32)
    moments = [np.concatenate([mean + i, std]) for i in range(2)]  # two images, posterior means 3 and 4
    write_latent_zip(tmp_path / "l.zip", 2, iter(zip(moments, [0, 1])), sd_convention(0.2, 8).to_dict())
    params = resolve_params(
        json.dumps({"name": "t", "data": {"source": "latent_zip", "path": str(tmp_path / "l.zip")}})
    )
    data = load_dataset(params["data"])
    batches = make_batches(data, data.labels, 4000, 0, torch.device("cpu"), params["data"]["loader"])
    first = batches(0, torch.Generator().manual_seed(5))
    again = make_batches(data, data.labels, 4000, 0, torch.device("cpu"), params["data"]["loader"])(
        0, torch.Generator().manual_seed(5)
    )
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    for label, posterior_mean in ((0, 3.0), (1, 4.0)):
        rows = first.images[first.labels == label]
        # z = 0.2 (mean + 0.5 eps): mean 0.2 * posterior mean, std 0.1, over about 2000 rows x 32 values
        assert float(rows.mean()) == pytest.approx(0.2 * posterior_mean, abs=0.003)
        assert float(rows.std()) == pytest.approx(0.1, rel=0.02)
    with pytest.raises(BadInput, match="data.loader.xflip: latents"):
        make_batches(data, None, 4, 0, torch.device("cpu"), {**params["data"]["loader"], "xflip": True})


def test_a_data_plus_noise_trajectory_start_on_latents_is_refused_naming_prior(tmp_path):
    moments = [np.ones((8, 2, 2), dtype=np.float32)] * 2
    write_latent_zip(tmp_path / "l.zip", 2, iter(zip(moments, [0, 1])), sd_convention(0.2, 4).to_dict())
    spec = trajectory_spec(
        {
            "solver": "heun",
            "nfe": 4,
            "grid": "logsnr",
            "sigma_min": 0.002,
            "sigma_max": 80.0,
            "start": "data_plus_noise",
        },
        (4, 2, 2),
    )
    with pytest.raises(BadInput, match="data 'l' is a latent zip; use start: prior"):
        start_points(spec, 2, torch.Generator().manual_seed(0), load_latent_zip(tmp_path / "l.zip"))


def test_a_zip_over_the_memory_limit_streams_and_its_draws_are_fixed_by_seed_and_step(tmp_path):
    gen = torch.Generator().manual_seed(3)
    moments = [np.asarray(torch.rand(8, 2, 2, generator=gen), dtype=np.float32) for _ in range(12)]
    write_latent_zip(tmp_path / "l.zip", 12, iter(zip(moments, range(12))), sd_convention(0.5, 4).to_dict())
    streamed = load_latent_zip(tmp_path / "l.zip", memory_limit=100)
    assert isinstance(streamed, LatentFiles) and len(streamed) == 12 and streamed.shape == (4, 2, 2)
    in_memory = load_latent_zip(tmp_path / "l.zip")
    loader = {"workers": 0, "prefetch": 2, "pin_memory": False, "xflip": False}

    def batches():
        return make_batches(streamed, streamed.labels, 6, 7, torch.device("cpu"), loader)

    through = [batches()(step, torch.Generator()) for step in range(4)]
    resumed = batches()(3, torch.Generator())  # a run resumed at step 3 draws what step 3 drew
    assert torch.equal(resumed.images, through[3].images) and torch.equal(resumed.labels, through[3].labels)
    assert not torch.equal(through[2].images, through[3].images)
    for batch in through:  # each row a draw around its own image's posterior: within 6 std of its mean
        mean, std = in_memory.mean[batch.labels], in_memory.std[batch.labels]
        assert ((batch.images / 0.5 - mean).abs() <= 6 * std + 1e-6).all()
    half = streamed.subset(torch.arange(6))
    assert len(half) == 6 and torch.equal(half[5][0], torch.from_numpy(moments[5]))


def test_a_latent_jobs_hold_out_is_the_images_of_its_latent_rows_and_decodes_back_to_them(trained, tmp_path):
    folder, record = trained
    params = resolve_params(json.dumps({"name": "t", "latent": {}}))
    encode.run(params["data"], params["latent"]["encode"], folder, tmp_path / "latents.zip")
    latent_cfg = {**params["data"], "source": "latent_zip", "path": str(tmp_path / "latents.zip")}
    _, latent_holdout = train_holdout(latent_cfg)
    images = holdout_images(latent_cfg).images  # the digits' own held-out split, scored against
    auto = load_autoencoder(folder)
    with torch.no_grad():
        mean, _ = auto.moments(images)
        decoded = sample_decoder(latent_cfg)(latent_holdout.convention.to_latent(latent_holdout.mean))
    torch.testing.assert_close(latent_holdout.mean, mean)  # row k of both hold-outs is the same image
    assert float((decoded - images).square().mean()) == pytest.approx(record["reconstruction"]["mse"], rel=0.2)
