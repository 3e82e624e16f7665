"""Autoguidance (docs/latent.md 8.1): the guided denoiser's closed forms, the autoguided teacher kind trained and
stored by the teacher stage, and its NFE counted as two network passes per call where a teacher is read."""

import json

import pytest
import torch
from helpers.models import perturbed_denoiser
from helpers.project import ROOT

from cmt.cli import main
from cmt.config import load_config
from cmt.errors import BadInput
from cmt.formats.names import GUIDE
from cmt.numerics.autoguidance import Autoguided
from cmt.objectives.ecd import teacher_step
from cmt.stages.evaluate import samplers
from cmt.stages.posttrain import runner
from cmt.stages.student import StudentJob
from cmt.teachers import load_teacher

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
SIGMA = torch.tensor([0.01, 0.5, 3.0, 80.0])


def pair(weight: float) -> tuple[Autoguided, torch.nn.Module, torch.nn.Module]:
    main_net, guide = perturbed_denoiser(seed=1), perturbed_denoiser(seed=2, model_channels=16)
    return Autoguided(main_net, guide, weight).eval(), main_net, guide


@torch.no_grad()
def test_weight_one_is_the_main_network_and_zero_the_guide():
    guided, main_net, guide = pair(1.0)
    assert torch.equal(guided(X, SIGMA), main_net(X, SIGMA))
    guided.weight = 0.0
    assert torch.equal(guided(X, SIGMA), guide(X, SIGMA))


@torch.no_grad()
def test_the_guided_denoiser_is_affine_in_the_weight_and_extrapolates_past_the_main_network():
    guided, main_net, guide = pair(0.0)
    outputs = {}
    for w in (1.0, 2.05, 3.1):
        guided.weight = w
        outputs[w] = guided(X, SIGMA).double()
    torch.testing.assert_close(outputs[2.05], (outputs[1.0] + outputs[3.1]) / 2, rtol=0, atol=1e-5)
    step = main_net(X, SIGMA).double() - guide(X, SIGMA).double()  # w > 1 moves past D_main, away from the guide
    torch.testing.assert_close(outputs[2.05] - outputs[1.0], 1.05 * step, rtol=0, atol=1e-5)


def test_a_guide_of_another_task_is_refused():
    main_net = perturbed_denoiser(seed=1)
    with pytest.raises(BadInput, match="label_dim 10 differs from the main network's 0"):
        Autoguided(main_net, perturbed_denoiser(label_dim=10), 2.0)
    with pytest.raises(BadInput, match="image shape"):
        Autoguided(main_net, perturbed_denoiser(img_resolution=16), 2.0)


@torch.no_grad()
def test_ecds_teacher_step_at_weight_one_is_the_main_networks():
    guided, main_net, _ = pair(1.0)
    t, r = torch.full((4,), 2.0), torch.full((4,), 1.5)
    assert torch.equal(teacher_step(guided, X, t, r, "heun"), teacher_step(main_net, X, t, r, "heun"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An autoguided teacher on the digits: a 12-iteration main network and a 4-iteration guide of half the width."""
    out = tmp_path_factory.mktemp("autoguided")
    section = {
        "kind": "autoguided",
        "guidance": 2.0,
        "guide": {"iterations": 4, "network": {"model_channels": 16}},
        "train": {"iterations": 12, "checkpoint_every": 0},
        "sample": {"num_samples": 9, "steps": 4},
    }
    params = {"teacher": section, "job": {"job": "teacher", "kind": "teacher"}}
    assert main(["teacher", "--params", json.dumps(params), "--out", str(out / "t"), "--work", str(out / "w")]) == 0
    return out / "t"


def test_the_teacher_stage_trains_and_stores_a_smaller_shorter_trained_guide(teacher):
    meta = json.loads((teacher / "meta.json").read_text())
    assert meta["teacher_kind"] == "autoguided" and meta["guidance"] == 2.0
    assert meta["train"]["iterations"] == 12 and meta["guide"]["train"]["iterations"] == 4
    assert meta["guide"]["parameters"] < meta["parameters"] / 2
    model, kind = load_teacher(teacher)
    assert isinstance(model, Autoguided) and kind.passes == 2 and model.weight == 2.0
    assert model.guide.model.cfg.model_channels == 16 and (teacher / GUIDE / "model.safetensors").exists()
    record = json.loads((teacher / "run.json").read_text())
    assert record["tags"]["teacher_kind"] == "autoguided" and "loss-guide.png" in record["artifacts"]
    assert not (teacher.parent / "w" / GUIDE / "resume.pt").exists()


def count_passes(model: Autoguided) -> list[int]:
    """Rows each network of the pair evaluates, by forward hooks on the raw networks: [main, guide]."""
    rows = [0, 0]
    for k, net in enumerate((model.main.model, model.guide.model)):
        net.register_forward_hook(lambda _m, args, _out, k=k: rows.__setitem__(k, rows[k] + args[0].shape[0]))
    return rows


def test_ecd_from_an_autoguided_teacher_counts_both_networks_passes(teacher, tmp_path, monkeypatch):
    real, seen = runner.load_teacher, []

    def load(path):
        model, kind = real(path)
        seen.append(count_passes(model))
        return model, kind

    monkeypatch.setattr(runner, "load_teacher", load)
    cfg = load_config(ROOT / "config" / "config.yaml")
    job = StudentJob(cfg["data"], cfg["precond"], 0, teacher, None, tmp_path / "out", tmp_path / "w", "cpu")
    ecd = {**cfg["posttrain"]["ecd"], "iterations": 3, "eval_every": 0, "checkpoint_every": 0, "batch_size": 8}
    final = runner.run("ecd", ecd, "diffusion", None, job)
    (rows,) = seen
    assert rows[0] == rows[1] > 0 and final["teacher_nfe"] == sum(rows)  # one call = a main and a guide pass


def test_the_teachers_own_sampler_is_named_by_network_passes(teacher):
    model, _ = load_teacher(teacher)
    meta = json.loads((teacher / "meta.json").read_text())
    cfg = load_config(ROOT / "config" / "config.yaml")
    evaluate = {**cfg["evaluate"], "sample": {**cfg["teacher"]["sample"], "steps": 4}}
    (plain,) = samplers(model.main, {**meta, "teacher_kind": "ode"}, evaluate, cfg["precond"])
    (guided,) = samplers(model, meta, evaluate, cfg["precond"])
    assert guided == f"{2 * int(plain.removesuffix('nfe'))}nfe"
