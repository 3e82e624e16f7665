"""`cmt sample`: any checkpoint of the smoke run, its kind's sampler, the same samples as `evaluate` draws."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cmt.config import load_config
from cmt.formats.images import tile
from cmt.workflow import jobs


def sample(project, job: str, out, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cmt", "sample", f"results/smoke/{job}", "--out", str(out), *args]
    return subprocess.run(
        [*command, "--configfile", "config/smoke.yaml"], cwd=project, capture_output=True, text=True, timeout=300
    )


def evaluation_grid(project, job: str, sampler: str) -> np.ndarray:
    with Image.open(project / "results" / "smoke" / jobs.eval_path(job) / f"grid-{sampler}.png") as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def smoke_jobs(smoke):
    config = load_config(smoke / "config" / "config.yaml", smoke / "config" / "smoke.yaml")
    mid = jobs.mid_path(jobs.BASE, *jobs.default_set(config), config["seed"])
    return config, {"cmt": mid, "ect": jobs.post_path("ect", "cmt", jobs.BASE, 40, config["seed"])}


@pytest.mark.parametrize("model", ["cmt", "ect"])
@pytest.mark.parametrize("steps", [1, 2])
def test_sample_reproduces_the_evaluation_samples_bit_for_bit(smoke, smoke_jobs, tmp_path, model, steps):
    config, found = smoke_jobs
    out = tmp_path / "samples.npz"
    done = sample(smoke, found[model], out, "--steps", str(steps), "--num", str(config["evaluate"]["num_samples"]))
    assert done.returncode == 0, done.stderr
    pixels = np.load(out)["arr_0"]
    assert pixels.dtype == np.uint8 and pixels.shape == (config["evaluate"]["num_samples"], 8, 8, 1)
    # evaluate's grid (another process, written by the workflow) holds its first 100 samples at 4x
    assert np.array_equal(tile(pixels[:100], scale=4)[..., 0], evaluation_grid(smoke, found[model], f"{steps}step"))


def test_the_teacher_samples_with_its_ode_solver_and_the_other_formats(smoke, smoke_jobs, tmp_path):
    config, _ = smoke_jobs
    out = tmp_path / "teacher.npz"
    done = sample(smoke, jobs.TEACHER, out, "--num", str(config["evaluate"]["num_samples"]))
    assert done.returncode == 0, done.stderr
    assert f"diffusion model, {config['teacher']['sample']['steps']} steps" in done.stdout
    (grid,) = (smoke / "results" / "smoke" / jobs.eval_path(jobs.TEACHER)).glob("grid-*nfe.png")
    with Image.open(grid) as image:
        assert np.array_equal(tile(np.load(out)["arr_0"][:100], scale=4)[..., 0], np.asarray(image))
    assert sample(smoke, jobs.TEACHER, tmp_path / "grid.png", "--num", "4", "--steps", "2").returncode == 0
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (2 * 9 + 1, 2 * 9 + 1)  # 2 x 2 samples of 8 px, 1 px borders
    assert sample(smoke, jobs.TEACHER, tmp_path / "pngs", "--num", "3", "--steps", "4").returncode == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["000000.png", "000001.png", "000002.png"]


def test_a_step_count_the_sampler_does_not_define_is_refused(smoke, smoke_jobs, tmp_path):
    done = sample(smoke, smoke_jobs[1]["cmt"], tmp_path / "x.npz", "--steps", "3")
    assert done.returncode != 0 and not (tmp_path / "x.npz").exists()
    assert "no 3-step sampler for a consistency model; its sampler defines: 1, 2" in done.stderr
