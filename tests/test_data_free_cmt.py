"""CMT that reads no data (docs/latent.md 8.3): online trajectories from the prior with uniform labels, on a latent
EDM teacher, its grids decoded with the autoencoder it is given; a data-plus-noise start still reads the data."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from cmt.config import resolve_params
from cmt.errors import MissingInput
from cmt.formats.checkpoints import save_denoiser
from cmt.nets import PRESETS, build_network
from cmt.numerics.precond import Denoiser
from cmt.sampling.trajectory_sets import trajectory_section
from cmt.stages import midtrain, vae
from cmt.stages.latent_job import LatentJob
from cmt.stages.student import StudentJob

PARAMS = resolve_params(
    json.dumps({"name": "t", "latent": {"convention": "edm2", "vae": {"train": {"iterations": 5}}}})
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A briefly trained digits autoencoder (EDM2 convention) and a class-conditional EDM teacher on its 4x4x4
    latents (random weights: CMT only needs its trajectories)."""
    root = tmp_path_factory.mktemp("data-free")
    vae.run(LatentJob(PARAMS["latent"], PARAMS["data"], 0, root / "vae", root / "vae-work"))
    torch.manual_seed(0)
    teacher = Denoiser(build_network(dataclasses.replace(PRESETS["digits-latent-tiny"], label_dim=10)))
    save_denoiser(root / "teacher", teacher, {"stage": "teacher"})
    return root


def run(folders, tmp_path, start):
    data = {**PARAMS["data"], "source": "latent_zip", "path": str(tmp_path / "never-written.zip")}
    job = StudentJob(data, PARAMS["precond"], 0, folders / "teacher", None, tmp_path / "out", tmp_path / "w", "cpu")
    job = dataclasses.replace(job, autoencoder=folders / "vae")
    cfg = {**PARAMS["midtrain"], "source": "online", "iterations": 2, "batch_size": 8, "eval_every": 0}
    traj = {**trajectory_section(PARAMS), "solver": "heun", "nfe": 4, "start": start}
    return midtrain.run(cfg, traj, None, job)


def test_online_cmt_from_the_prior_reads_no_data_and_decodes_with_the_autoencoder_it_is_given(folders, tmp_path):
    final = run(folders, tmp_path, "prior")
    assert final["teacher_nfe"] > 0 and not (tmp_path / "never-written.zip").exists()
    with Image.open(tmp_path / "out" / "grid-1step.png") as grid:  # decoded: the digits' 8x8 pixels, 10 classes
        assert grid.size == ((10 * 9 + 1) * 4, (8 * 9 + 1) * 4)


def test_a_data_plus_noise_start_reads_the_training_data(folders, tmp_path):
    with pytest.raises(MissingInput, match="never-written.zip"):
        run(folders, tmp_path, "data_plus_noise")
