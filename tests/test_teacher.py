"""The EDM teacher: the loss falls with training, and the main job writes its artifacts."""

import json
from pathlib import Path

import pytest
import torch
from helpers.figures import assert_plot
from PIL import Image

from cmt.cli import main
from cmt.config import load_config
from cmt.data.datasets import load_digits
from cmt.formats.checkpoints import save_denoiser
from cmt.formats.fetch import FetchError, file_sha256
from cmt.objectives import registry
from cmt.objectives.base import Context
from cmt.objectives.edm import edm_loss
from cmt.stages.student import InitWeights, StudentJob, init_student
from cmt.stages.teacher import TeacherJob, build_denoiser, train_teacher

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config" / "config.yaml")


def test_training_lowers_the_edm_loss(cfg, tmp_path):
    data = load_digits()
    den = build_denoiser(cfg["network"], cfg["precond"], seed=0)
    fixed = data.images[:256]

    def eval_loss(model):
        with torch.no_grad():
            return float(edm_loss(model.eval(), fixed, -1.2, 1.2, torch.Generator().manual_seed(5)))

    before = eval_loss(den)
    train_cfg = {**cfg["teacher"]["train"], "iterations": 60, "warmup_iterations": 10, "ema_halflife_images": 500}
    result = train_teacher(
        den,
        data,
        train_cfg,
        TeacherJob(cfg["teacher"], cfg["network"], cfg["precond"], cfg["data"], 0, tmp_path, tmp_path),
        Context(0.002, 80.0, data.shape, torch.device("cpu")),
    )
    assert [h["step"] for h in result.history] == list(range(1, 61))
    assert eval_loss(result.ema) < 0.8 * before


def test_teacher_stage_writes_checkpoint_grid_curve_and_record(tmp_path, cfg):
    train = {**cfg["teacher"]["train"], "iterations": 15}
    teacher_cfg = {**cfg["teacher"], "train": train, "sample": {**cfg["teacher"]["sample"], "num_samples": 16}}
    params = {"teacher": teacher_cfg, "job": {"job": "teacher", "kind": "teacher"}}  # the rest: schema defaults
    out = tmp_path / "out"
    assert main(["teacher", "--params", json.dumps(params), "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["iterations"] == 15 and meta["architecture"]["img_resolution"] == 8
    assert meta["model_kind"] == "diffusion" and len(meta["config_hash"]) == 12
    with Image.open(out / "samples.png") as grid:
        assert grid.size == ((4 * 9 + 1) * 4, (4 * 9 + 1) * 4)
    assert_plot(out / "loss.png", (600, 384))
    record = json.loads((out / "run.json").read_text())
    assert record["stage"] == "teacher" and record["metrics"]["images"] == 15 * 128
    expected = {"label": "teacher", "teacher_kind": "ode", "job": "teacher", "kind": "teacher", "stage": "teacher"}
    expected["device"] = "cpu"
    assert record["tags"] == expected
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 15
    assert not (tmp_path / "w" / "resume.pt").exists()


def run_teacher_stage(tmp_path, cfg, seed, name):
    train = {**cfg["teacher"]["train"], "iterations": 12, "checkpoint_every": 0}
    params = {"teacher": {**cfg["teacher"], "train": train, "sample": {**cfg["teacher"]["sample"], "num_samples": 9}}}
    params |= {"seed": seed, "job": {"job": "teacher", "kind": "teacher"}}
    out = tmp_path / name
    assert (
        main(["teacher", "--params", json.dumps(params), "--out", str(out), "--work", str(tmp_path / f"{name}-w")]) == 0
    )
    return out


def test_the_seed_fixes_the_teacher_and_its_files_hold_content_only(tmp_path, cfg):
    """Two runs with one seed give byte-identical model files (weights and header); another seed other weights."""
    first, again, other = (
        run_teacher_stage(tmp_path, cfg, seed, name) for seed, name in ((0, "a"), (0, "b"), (1, "c"))
    )
    for name in ("model.safetensors", "meta.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    record = json.loads((first / "run.json").read_text())
    assert {"wall_seconds", "resumed_from"} <= set(record["metrics"])  # run facts live in the record
    assert not {"wall_seconds", "resumed_from", "git_commit"} & set(
        json.loads((first / "meta.json").read_text())["train"]
    )


ECT = registry.method("posttrain", "ect")


def test_the_seed_fixes_a_random_init_student(tmp_path, cfg):
    save_denoiser(tmp_path / "arch", build_denoiser(cfg["network"], cfg["precond"], seed=0), {"stage": "teacher"})

    def job(seed: int) -> StudentJob:
        return StudentJob(cfg["data"], cfg["precond"], seed, tmp_path / "arch", None, tmp_path, tmp_path, "cpu")

    students = [init_student(InitWeights("random"), job(seed), 0.0, ECT)[0] for seed in (3, 3, 4)]
    same, other = (zip(students[0].state_dict().values(), s.state_dict().values()) for s in students[1:])
    assert all(torch.equal(a, b) for a, b in same)
    assert not all(torch.equal(a, b) for a, b in other)


def test_a_fetched_init_file_starts_a_student_from_its_weights_and_a_bad_checksum_stops_it(tmp_path, cfg):
    """Init source ``file``: the checkpoint at init_file.url, sha256-checked, is the student's start."""
    teacher = build_denoiser(cfg["network"], cfg["precond"], seed=7)
    save_denoiser(tmp_path / "ckpt", teacher, {"stage": "teacher"})
    weights = tmp_path / "ckpt" / "model.safetensors"
    job = StudentJob(cfg["data"], cfg["precond"], 0, tmp_path / "ckpt", None, tmp_path, tmp_path / "work", "cpu")
    spec = {"url": weights.as_uri(), "sha256": file_sha256(weights)}
    student, meta = init_student(InitWeights("file", file=spec), job, 0.0, ECT)
    assert all(
        torch.equal(a, b) for a, b in zip(student.model.state_dict().values(), teacher.model.state_dict().values())
    )
    assert (
        meta["converted_from"]["sha256"] == spec["sha256"] and student.sigma_min == cfg["precond"]["boundary_sigma_min"]
    )
    with pytest.raises(FetchError, match="^posttrain.ect.init_file: sha256 mismatch"):
        init_student(InitWeights("file", file={**spec, "sha256": "0" * 64}), job, 0.0, ECT)
    with pytest.raises(ValueError, match="^posttrain.ect.init_file: init 'file' needs the job's init_file"):
        init_student(InitWeights("file"), job, 0.0, ECT)
