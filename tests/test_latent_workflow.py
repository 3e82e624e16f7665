"""The latent DAGs through real Snakemake. config/smoke-latent.yaml (docs/latent.md 4 and 6): trained autoencoder ->
latent zip -> MeanFlow teacher on a tiny DiT -> its 4-step paths -> CMT-MF -> MeanFlow from three inits -> decoded
samples scored against the held-out digits -> the main table; a rerun plans nothing. config/smoke-latent-edm.yaml
(docs/latent.md 8): an EDM teacher on the latents, CMT with the latent LPIPS, ECD with an autoguided teacher, scored
with FD_DINOv2 over two seed ranges."""

import csv
import json
import math
import re

import numpy as np
import pytest
import yaml
from helpers.image_standins import write_dinov2
from helpers.project import copy_project, planned_jobs, snakemake
from PIL import Image

from cmt.data.latent_zip import load_latent_zip
from cmt.formats.fetch import file_sha256
from cmt.formats.pretrained import DINOV2_DIR_ENV
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


# config/smoke-latent-edm.yaml (it extends smoke-latent), scored as EDM2 scores: FD_DINOv2 beside the feature net's
# FD (a stand-in DINOv2 state dict where the weights are looked for), the minimum over two seed ranges of half the
# smoke run's samples each
EDM_ARGS = ("--configfile", "config/smoke.yaml", "config/smoke-latent-edm.yaml", "config/edm2-scores.yaml")
EDM2_SCORES = {
    "evaluate": {"metrics": ["featnet", "fd_dinov2"], "num_samples": 100, "seed_ranges": {"count": 2, "reduce": "min"}}
}


@pytest.fixture(scope="module")
def edm_project(tmp_path_factory):
    """The embedded ImageNet-512 path (config/smoke-latent-edm.yaml, docs/latent.md 8) and its sweep, run for real."""
    work = copy_project(tmp_path_factory.mktemp("latent-edm"))
    (work / "config" / "edm2-scores.yaml").write_text(yaml.safe_dump(EDM2_SCORES))
    with pytest.MonkeyPatch.context() as env:
        env.setenv(DINOV2_DIR_ENV, str(write_dinov2(work / "dinov2").parent))
        snakemake(work, "--cores", "2", "all_ablations", *EDM_ARGS)
    return work


def test_guided_ecd_and_latent_lpips_cmt_run_end_to_end_on_the_digits_latents(edm_project):
    """An EDM teacher on the latents, its autoguided pair as ECD's teacher (a guide half as wide, a quarter as long
    trained), CMT with the latent LPIPS against l2, ECD from the pair's main network and from CMT: every row scored on
    decoded samples, the pair's own sampler counted in network passes; a rerun plans nothing."""
    results = edm_project / "results" / "smoke-latent-edm"
    post = json.loads((results / "teacher-post" / "meta.json").read_text())
    assert post["teacher_kind"] == "autoguided" and post["guide"]["train"]["iterations"] == 30
    assert post["guide"]["parameters"] < post["parameters"] / 2 and post["train"]["iterations"] == 120
    rows = {row["model"]: row for row in csv.DictReader((results / "tables" / "main.csv").open())}
    assert math.isfinite(float(rows["teacher (EDM)"]["FD teacher 16 NFE"]))  # its own 8-step Heun sampler
    assert math.isfinite(float(rows["post-training teacher (EDM, autoguided)"]["FD teacher 32 NFE"]))  # two passes
    for name in ("CMT only", "ECD from diffusion init", "ECD from CMT init"):
        assert math.isfinite(float(rows[name]["FD 2-step"]))
    assert float(rows["ECD from diffusion init"]["device-h teacher"]) == pytest.approx(
        json.loads((results / "teacher-post" / "run.json").read_text())["metrics"]["device_hours"], rel=1e-6
    )  # the diffusion init's lineage runs through the post-training teacher
    mid = json.loads((results / "mid" / "base" / "heun-nfe8" / "s0" / "run.json").read_text())
    assert mid["tags"]["loss"] == "latent_lpips"
    backbone = json.loads((results / "latent-lpips" / "backbone.json").read_text())
    assert backbone["classes"] == 10 and backbone["holdout_top1"] > 0.2  # chance: 0.1
    losses = {row["variant"]: row for row in csv.DictReader((results / "tables" / "loss.csv").open())}
    assert set(losses) == {"base", "l2"} and all(math.isfinite(float(r["FD 2-step"])) for r in losses.values())
    assert all(math.isfinite(float(r["FD_DINOv2 2-step"])) for r in losses.values())
    assert "Nothing to be done" in snakemake(edm_project, "-n", "all_ablations", *EDM_ARGS).stdout


def test_fd_dinov2_and_the_seed_protocol_are_scored_and_recorded(edm_project):
    """Every evaluation scores FD_DINOv2 against the training images' statistics (rule fd_dinov2_reference, once),
    over two disjoint seed ranges whose minimum is the headline; the protocol and the statistics are recorded, and
    the main table carries FD_DINOv2 beside FD."""
    results = edm_project / "results" / "smoke-latent-edm"
    reference = np.load(results / "fd-dinov2-ref" / "torch.npz")
    assert reference["mu"].shape == (64,) and str(reference["source"]) == "training set"
    scores = json.loads((results / "eval" / "post" / "ecd-cmt" / "base" / "it40" / "s0" / "scores.json").read_text())
    assert scores["seed_ranges"] == 2 and scores["seed_reduce"] == "min" and len(scores["ranges"]) == 2
    assert scores["fd_dinov2_mode"] == "torch" and scores["fd_dinov2_reference"] == "training set"
    for key in ("fd_dinov2_2step", "fd_2step"):
        assert (
            scores[key] == min(r[key] for r in scores["ranges"])
            and scores["ranges"][0][key] != scores["ranges"][1][key]
        )
    header = (results / "tables" / "main.md").read_text().split("\n| model")[1].split("\n")[0]
    assert "| FD 1-step | FD 2-step |" in header and "| FD_DINOv2 1-step | FD_DINOv2 2-step |" in header
