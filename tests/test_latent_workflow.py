"""The latent DAG through real Snakemake (config/smoke-latent.yaml, docs/latent.md 4 and 6): trained autoencoder ->
latent zip -> MeanFlow teacher on a tiny DiT -> its 4-step paths -> CMT-MF -> MeanFlow from three inits -> decoded
samples scored against the held-out digits -> the main table; a rerun plans nothing."""

import csv
import json
import math
import re

import pytest
from helpers.project import copy_project, planned_jobs, snakemake
from PIL import Image

from cmt.data.latent_zip import load_latent_zip
from cmt.formats.fetch import file_sha256
from cmt.latents.autoencoder import load_autoencoder

pytestmark = pytest.mark.slow  # runs the real workflow
ARGS = ("--configfile", "config/smoke.yaml", "config/smoke-latent.yaml")


@pytest.fixture(scope="module")
def latent_project(tmp_path_factory):
    work = copy_project(tmp_path_factory.mktemp("latent"))
    planned = planned_jobs(snakemake(work, "-n", "all", *ARGS).stdout)
    snakemake(work, "--cores", "2", "all", *ARGS)
    return work, planned


def test_the_plan_encodes_once_and_trains_on_the_latents(latent_project):
    _, planned = latent_project
    expected = {"vae": 1, "encode": 1, "featnet": 1, "teacher": 1, "trajectories": 1, "midtrain": 1, "posttrain": 3}
    assert {k: planned[k] for k in expected} == expected and planned["evaluate"] == 5


def test_the_autoencoder_and_the_latent_zip_are_recorded(latent_project):
    results = latent_project[0] / "results" / "smoke-latent"
    record = json.loads((results / "latents" / "encode.json").read_text())
    assert record["sha256"] == file_sha256(results / "latents" / "latents.zip")
    data = load_latent_zip(results / "latents" / "latents.zip")
    assert len(data) == record["count"] == 1797 and data.shape == (4, 4, 4)
    assert data.convention == load_autoencoder(results / "vae").convention and data.convention.name == "sd"
    assert json.loads((results / "vae" / "vae.json").read_text())["reconstruction"]["psnr_db"] > 17


def test_the_teacher_is_a_flow_map_and_its_set_is_in_flow_matching_time(latent_project):
    results = latent_project[0] / "results" / "smoke-latent"
    meta = json.loads((results / "teacher" / "meta.json").read_text())
    assert meta["teacher_kind"] == "flowmap" and meta["model_kind"] == "meanflow"
    assert meta["architecture"]["family"] == "dit" and meta["architecture"]["second_time"]
    index = json.loads((results / "traj" / "flowmap-nfe4" / "index.json").read_text())
    assert index["time"] == "fm" and index["times"] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_every_model_is_scored_on_decoded_samples_in_the_main_table(latent_project):
    work, _ = latent_project
    results = work / "results" / "smoke-latent"
    rows = {row["model"]: row for row in csv.DictReader((results / "tables" / "main.csv").open())}
    froms = [f"MeanFlow from {init} init" for init in ("random", "diffusion", "CMT")]
    assert set(rows) == {"teacher (MeanFlow)", "CMT only", *froms}
    assert math.isfinite(float(rows["teacher (MeanFlow)"]["FD teacher 4 NFE"]))
    assert all(math.isfinite(float(rows[name]["FD 1-step"])) for name in ["CMT only", *froms])
    cmt = rows["MeanFlow from CMT init"]  # device-hours per stage of the lineage: wall time x max(1, GPUs)
    hours = {kind: float(cmt[f"device-h {kind}"]) for kind in ("teacher", "mid", "post")}
    wall = float(cmt["wall s (training)"])
    assert all(h > 0 for h in hours.values()) and sum(hours.values()) == pytest.approx(wall / 3600, rel=1e-6)
    assert cmt["devices"] == "cpu" and float(rows["MeanFlow from random init"]["device-h teacher"]) == 0
    assert (results / "tables" / "score_vs_device_hours.png").stat().st_size > 0
    with Image.open(results / "eval" / "teacher" / "grid-4nfe.png") as grid:  # decoded: 1-channel 8 x 8 digits
        assert grid.mode == "L" and grid.width == 4 * (10 * (8 + 1) + 1)
    assert "Nothing to be done" in snakemake(work, "-n", "all", *ARGS).stdout


def test_the_latent_sweep_plans_flow_map_jobs_only(latent_project):
    """all_ablations on the latent overlay: CMT-MF on the teacher's 2-, 4- and 8-step paths and its variants, no
    ODE solver, no consistency method (a transformer has no consistency boundary)."""
    work, _ = latent_project
    dry = snakemake(work, "-n", "-p", "all_ablations", *ARGS).stdout
    jobs = planned_jobs(dry)
    assert jobs["trajectories"] == 2 and jobs["midtrain"] == 7 and "posttrain" not in jobs  # the main run's are done
    sets = set(re.findall(r"/traj/([a-z0-9_]+)-nfe(\d+)", dry))  # every set a job writes or reads
    assert sets == {("flowmap", "2"), ("flowmap", "4"), ("flowmap", "8")} and "--method" not in dry
