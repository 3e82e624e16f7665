"""The latent path through real Snakemake (config/smoke-latent.yaml, docs/latent.md 4): the autoencoder job, then
the digits encoded into a latent zip whose sha256 the record names; a rerun plans nothing."""

import json

import pytest
from helpers.project import copy_project, planned_jobs, snakemake

from cmt.data.latent_zip import load_latent_zip
from cmt.formats.fetch import file_sha256
from cmt.latents.autoencoder import load_autoencoder

pytestmark = pytest.mark.slow  # runs the real workflow
ARGS = ("--configfile", "config/smoke.yaml", "config/smoke-latent.yaml")


@pytest.fixture(scope="module")
def latent_project(tmp_path_factory):
    work = copy_project(tmp_path_factory.mktemp("latent"))
    assert planned_jobs(snakemake(work, "-n", "latents", *ARGS).stdout) == {"vae": 1, "encode": 1, "latents": 1}
    snakemake(work, "--cores", "2", "latents", *ARGS)
    return work


def test_the_latent_target_trains_the_autoencoder_and_encodes_every_digit(latent_project):
    results = latent_project / "results" / "smoke-latent"
    record = json.loads((results / "latents" / "encode.json").read_text())
    assert record["sha256"] == file_sha256(results / "latents" / "latents.zip")
    data = load_latent_zip(results / "latents" / "latents.zip")
    auto = load_autoencoder(results / "vae")
    assert len(data) == record["count"] == 1797 and data.shape == (4, 4, 4)
    assert data.convention == auto.convention and data.convention.name == "sd"
    assert json.loads((results / "vae" / "vae.json").read_text())["reconstruction"]["psnr_db"] > 17
    assert "Nothing to be done" in snakemake(latent_project, "-n", "latents", *ARGS).stdout
