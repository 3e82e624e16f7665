"""A flow-map teacher (docs/latent.md 6): its stored trajectories are the states of its k-step path in flow-matching
time, ending at exactly the k-step sample; CMT's flow-map form reads them without the EDM conversion and is exact
on a teacher that is its own target; the consistency form and ODE solvers are refused for it."""

import dataclasses
import json

import pytest
import torch

from cmt.cli import main
from cmt.errors import BadInput
from cmt.formats.checkpoints import save_denoiser
from cmt.formats.fetch import file_sha256
from cmt.nets import PRESETS, build_network
from cmt.numerics.precond import Denoiser
from cmt.objectives.cmt_flowmap import cmt_flowmap_loss, state_pairs
from cmt.sampling.samplers import Draws, sample_few_step
from cmt.sampling.trajectory_sets import (
    INDEX,
    SetSize,
    StoredTrajectories,
    check_solver,
    shard_seed,
    trajectory_spec,
    write_set,
)
from cmt.teachers import load_teacher

CFG = dataclasses.replace(PRESETS["dit-digits-tiny"], second_time=True)
SECTION = {"solver": "flowmap", "nfe": 4, "grid": "logsnr", "sigma_min": 0.002, "sigma_max": 80.0, "start": "prior"}


@pytest.fixture(scope="module")
def teacher() -> Denoiser:
    """A tiny two-time DiT with every weight random (adaLN-Zero would make a fresh one output zeros)."""
    torch.manual_seed(0)
    net = build_network(CFG)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return Denoiser(net).eval()


def test_a_stored_path_ends_at_the_k_step_sample_and_records_flow_matching_time(teacher, tmp_path):
    spec = trajectory_spec(SECTION, CFG.image_shape, teacher)
    assert spec.time == "fm" and spec.grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    index = write_set(tmp_path, teacher, spec, SetSize(6, 4, 2), data=None, provenance={})
    assert json.loads((tmp_path / INDEX).read_text())["time"] == "fm" and index["times"] == spec.grid.tolist()
    stored = StoredTrajectories(tmp_path)
    assert stored.time == "fm" and torch.equal(stored.grid, spec.grid)
    states = stored.read(torch.arange(4)).states  # shard 0: 4 paths from its own seeded noise
    noise = torch.randn((4, *CFG.image_shape), generator=torch.Generator().manual_seed(shard_seed(2, 0)))
    assert torch.equal(states[:, 0], noise)  # t = 1: pure noise
    sample = sample_few_step(teacher, "meanflow", Draws(noise), 4, 80.0, 0.0)
    torch.testing.assert_close(states[:, -1], sample, rtol=0, atol=1e-6)


def test_cmt_flowmap_reads_the_path_as_is_and_is_exact_on_its_own_teacher(teacher, tmp_path):
    spec = trajectory_spec(SECTION, CFG.image_shape, teacher)
    write_set(tmp_path, teacher, spec, SetSize(8, 8, 0), data=None, provenance={})
    states = StoredTrajectories(tmp_path).read(torch.arange(8)).states
    adjacent = torch.stack([torch.arange(4), torch.arange(1, 5)], dim=1).expand(8, 4, 2)  # each step of the path
    with torch.no_grad():  # one teacher step is exactly u(z_a, t_b, t_a): the teacher's loss is zero
        own = cmt_flowmap_loss(teacher, states, spec.grid, adjacent, None, "fm")
        every = cmt_flowmap_loss(teacher, states, spec.grid, state_pairs(4).expand(8, -1, -1), None, "fm")
        misread = cmt_flowmap_loss(teacher, states, spec.grid, adjacent, None, "sigma")
    # float32 states: the teacher's own steps agree to rounding, other pairs and an EDM reading do not
    assert float(own) < 1e-6 * float(every) and float(own) < 1e-6 * float(misread)


def test_a_flowmap_teacher_takes_its_own_sampler_and_nothing_else():
    check_solver("flowmap", "meanflow")
    with pytest.raises(BadInput, match="need solver flowmap"):
        check_solver("heun", "meanflow")
    with pytest.raises(BadInput, match="an ODE solver"):
        check_solver("flowmap", "diffusion")
    with pytest.raises(BadInput, match="starts from the prior"):
        trajectory_spec({**SECTION, "start": "data_plus_noise"}, CFG.image_shape)


def test_the_teacher_rule_fetches_a_flowmap_teacher_and_refuses_a_network_without_a_second_time(
    teacher, tmp_path, capsys
):
    """``teacher.source: fetch`` with ``kind: flowmap``: our checkpoint of a mean-flow model is fetched, kept bit for
    bit and sampled by its own k-step map; a one-time network (an ODE teacher's) is refused naming the URL."""
    pixels = dataclasses.replace(CFG, img_resolution=8, in_channels=1, out_channels=1)  # the digits' pixel shape
    flowmap, plain = (
        Denoiser(build_network(pixels)),
        Denoiser(build_network(dataclasses.replace(pixels, second_time=False))),
    )
    for name, model in (("flowmap", flowmap), ("plain", plain)):
        save_denoiser(tmp_path / name, model, {"stage": "teacher"})

    def fetch(name: str, out: str) -> int:
        weights = tmp_path / name / "model.safetensors"
        section = {"kind": "flowmap", "source": "fetch", "sample": {"steps": 2, "num_samples": 4}}
        section["fetch"] = {"url": weights.as_uri(), "sha256": file_sha256(weights)}
        params = {"teacher": section, "job": {"job": "teacher", "kind": "teacher"}}
        return main(
            ["teacher", "--params", json.dumps(params), "--out", str(tmp_path / out), "--work", str(tmp_path / "w")]
        )

    assert fetch("flowmap", "out") == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["teacher_kind"] == "flowmap" and meta["model_kind"] == "meanflow" and meta["source"] == "fetch"
    stored, _ = load_teacher(tmp_path / "out")
    for a, b in zip(stored.state_dict().values(), flowmap.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "out" / "samples.png").exists()
    capsys.readouterr()
    assert fetch("plain", "refused") != 0 and not (tmp_path / "refused" / "model.safetensors").exists()
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("cmt teacher: error: teacher.fetch: file://") and "without a second time input" in line
