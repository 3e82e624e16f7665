"""SiT's released checkpoints as our DiT (cmt/formats/sit_checkpoint.py, docs/latent.md 7): a checkpoint in SiT's
layout (DiT's names, learn_sigma's 2C outputs, its `ema` entry) converts by name, and the converted network
computes our velocity at the same instant, u(z, t) = −v_SiT(z, 1 − t) on the velocity channels; a MeanFlow student
made from it starts as that velocity for every r; a file of another layout is refused naming it."""

import dataclasses

import pytest
import torch

from cmt.errors import BadInput
from cmt.formats.checkpoint_import import load_any
from cmt.nets import DiTConfig, add_second_time, build_network
from cmt.numerics.precond import Denoiser

SIT = DiTConfig(8, 4, 8, patch_size=2, hidden_size=384, depth=2, num_heads=6, label_dim=10)  # an S-width SiT


@pytest.fixture(scope="module")
def sit_file(tmp_path_factory):
    """A network in SiT's layout and convention (learn_sigma: 8 outputs for 4 channels), random weights, saved as
    SiT's train.py saves a checkpoint."""
    torch.manual_seed(0)
    net = build_network(SIT).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("sit") / "SiT-S-2.pt"
    state = {k: v.float() for k, v in net.state_dict().items()}
    torch.save({"model": state, "ema": state, "args": None}, path)
    return path, net.float()


def test_the_converted_network_is_sits_velocity_in_our_time(sit_file):
    path, sit = sit_file
    model, meta = load_any(path, url="https://example.org/SiT-S-2.pt")
    assert meta["format"] == "sit" and meta["learn_sigma"] and meta["converted_from"]["format"] == "sit"
    cfg = model.model.cfg
    assert (cfg.out_channels, cfg.num_heads, cfg.label_dim, cfg.time_reversed) == (4, 6, 10, True)
    assert model.parameterisation == "flow"
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, 8, 8, generator=gen)
    t = torch.rand(5, generator=gen)
    labels = torch.nn.functional.one_hot(torch.arange(5), 10).float()
    with torch.no_grad():
        ours = model.model(z, t, None, labels)  # a one-time flow network's output is its velocity
        theirs = sit(z, 1 - t, None, labels)[:, :4]  # SiT's time s = 1 - t; its first C outputs: the velocity
    torch.testing.assert_close(ours, -theirs, rtol=1e-5, atol=1e-5)


def test_a_meanflow_student_from_sit_starts_as_its_velocity_for_every_r(sit_file):
    path, sit = sit_file
    model, _ = load_any(path)
    student = Denoiser(add_second_time(model.model)).eval()
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t, labels = torch.tensor([0.9, 0.5, 0.2]), torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), 10).float()
    with torch.no_grad():
        for r in (t, torch.zeros(3), t / 2):
            torch.testing.assert_close(student.mean_velocity(z, r, t, labels), model.model(z, t, None, labels))


def test_a_state_dict_of_another_layout_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(BadInput, match=f"{path}: no tensor 'x_embedder.proj.weight'"):
        load_any(path)
    odd = dataclasses.replace(SIT, hidden_size=96, num_heads=4)  # a width none of DiT's sizes has
    torch.save(build_network(odd).state_dict(), tmp_path / "odd.pt")
    with pytest.raises(BadInput, match="width 96 is none of DiT's sizes"):
        load_any(tmp_path / "odd.pt")
