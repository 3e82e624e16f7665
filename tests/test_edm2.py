"""EDM2's magnitude-preserving U-Net: its layers' closed forms, the released sizes, the second time input, forward-mode
AD, and EDM2 snapshots (float16, Precond + UNet + uncertainty head) converted to our denoiser."""

import pytest
import torch
from helpers.edm_standin import edm2_snapshot, write_pickle

from cmt.config import resolve
from cmt.data.labels import conditioned
from cmt.formats.checkpoint_import import describe, load_any
from cmt.nets import (
    PRESETS,
    EDM2Config,
    EDM2UNet,
    add_second_time,
    build_network,
    count_parameters,
    network_config,
)
from cmt.nets.edm2 import mp_cat, mp_silu, mp_sum, normalize
from cmt.numerics.precond import Denoiser
from cmt.objectives.distances import make_distance
from cmt.objectives.ect import ect_loss
from cmt.objectives.meanflow import meanflow_loss
from cmt.training.loop import LoopConfig, fit

TINY = EDM2Config(
    img_resolution=8,
    img_channels=3,
    model_channels=16,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(4,),
    channels_per_head=8,
    logvar_channels=8,
)


def tiny_denoiser(label_dim: int = 0, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    denoiser = Denoiser(EDM2UNet(EDM2Config(**{**TINY.__dict__, "label_dim": label_dim}))).eval()
    with torch.no_grad():  # the zero-initialised gains too, so every weight matters
        for p in denoiser.parameters():
            if p.ndim == 0:
                p.fill_(0.5)
    return denoiser


def test_magnitude_preserving_layers_keep_unit_magnitude():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200_000, generator=gen, dtype=torch.float64), torch.randn(200_000, generator=gen).double()
    for t in (0.3, 0.5, 0.8):
        assert mp_sum(a, b, t).square().mean().item() == pytest.approx(1.0, abs=0.01)  # EDM2 Eq. 88
    x, y = torch.randn(64, 48, 2, generator=gen), torch.randn(64, 16, 2, generator=gen)
    assert mp_cat(x, y, 0.3).square().mean().item() == pytest.approx(1.0, abs=0.02)  # EDM2 Eq. 103
    assert mp_silu(a).square().mean().item() == pytest.approx(1.0, abs=0.01)  # silu's second moment is 0.596^2
    w = normalize(3.0 * torch.randn(8, 5, 3, 3, generator=gen))
    torch.testing.assert_close(w.square().mean((1, 2, 3)), torch.ones(8), rtol=1e-3, atol=0)


def test_the_released_configurations_have_edm2s_parameter_counts():
    """EDM2 paper Table 2: XS 125M, S 280M, M 498M, L 777M, XL 1119M, XXL 1523M (built on the meta device)."""
    expected = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1119, "xxl": 1523}
    for size, millions in expected.items():
        with torch.device("meta"):
            net = EDM2UNet(PRESETS[f"edm2-img512-{size}"])
        assert count_parameters(net) / 1e6 == pytest.approx(millions, abs=0.6)


def test_a_second_time_input_starts_as_the_parent_and_jvp_runs_through():
    parent = tiny_denoiser()
    child = Denoiser(add_second_time(parent.model)).eval()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    with torch.no_grad():
        assert torch.equal(child(x, sigma, torch.tensor([0.1, 0.7])), parent(x, sigma))
        child.model.time2_gain.fill_(1.0)
        assert not torch.allclose(child(x, sigma, torch.tensor([0.1, 0.7])), parent(x, sigma))
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda x_: child(x_, sigma, torch.tensor([0.1, 0.7])), (x,), (tangent,))
    h = 1e-3
    with torch.no_grad():
        h2 = torch.tensor([0.1, 0.7])
        diff = (child(x + h * tangent, sigma, h2) - child(x - h * tangent, sigma, h2)) / (2 * h)
    torch.testing.assert_close(jvp, diff, rtol=2e-2, atol=2e-3)


def test_forced_weight_normalisation_runs_before_each_training_step_not_in_forward(tmp_path):
    denoiser = tiny_denoiser().train()
    conv = denoiser.model.enc["8x8_conv"]
    with torch.no_grad():
        conv.weight.mul_(3.0)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0])
    before = denoiser(x, sigma)
    assert conv.weight.square().mean((1, 2, 3)).mean().item() == pytest.approx(9.0, rel=0.2)  # forward: no change
    loop = LoopConfig.from_dict(
        {
            "iterations": 1,
            "batch_size": 2,
            "lr": 0.0,
            "optimizer": "adam",
            "betas": [0.9, 0.99],
            "lr_schedule": "constant",
        }
        | {"warmup_iterations": 0, "ema_beta": 0.9, "checkpoint_every": 0, "eval_every": 0}
    )
    fit(denoiser, lambda model, step, gen: model(x, sigma).square().mean(), loop, tmp_path, "t", seed=0)
    torch.testing.assert_close(conv.weight.square().mean((1, 2, 3)), torch.ones(16), rtol=1e-3, atol=0)
    torch.testing.assert_close(denoiser(x, sigma), before, rtol=0, atol=1e-4)  # the same outputs, up to eps 1e-4


def test_ect_trains_an_edm2_student_through_its_no_grad_target_pass():
    """ECT's online pass, then its no-grad target pass, then backward: the forced weight normalisation must not
    modify weights between the forward and the backward pass."""
    student = tiny_denoiser().train()
    cfg = {"p_mean": -0.8, "p_std": 1.6, "q": 4.0, "k": 8.0, "b": 1.0, "weighting": "edm2"}
    y = torch.randn(4, 3, 8, 8)
    loss = ect_loss(student, y, torch.Generator().manual_seed(0), cfg, 0, make_distance("pseudo_huber"))
    loss.backward()
    grads = [p.grad for name, p in student.named_parameters() if "logvar" not in name]  # the head is unused here
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("label_dim", [0, 10])
def test_an_edm2_snapshot_converts_to_the_network_it_holds(tmp_path, label_dim):
    original = tiny_denoiser(label_dim)
    path = write_pickle(lambda: edm2_snapshot(original), tmp_path / "edm2-img64-tiny-0000000-0.100.pkl")
    shown = describe(path)
    assert shown["format"] == "edm2-pickle" and shown["class"] == "Precond/UNet" and shown["dtypes"] == ["float16"]
    assert shown["label_dim"] == label_dim and shown["parameters"] == count_parameters(original)
    converted, meta = load_any(path)
    assert meta["extras"] == [] and meta["converted_from"]["format"] == "edm2-pickle"
    reference = tiny_denoiser(label_dim)
    with torch.no_grad():  # what the file holds: the weights rounded to float16
        for p in [*reference.parameters(), *reference.buffers()]:
            p.copy_(p.half().float())
    labels = torch.tensor([1, 7]) if label_dim else None
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.05, 20.0])
    with torch.no_grad():
        assert torch.equal(conditioned(converted, labels)(x, sigma), conditioned(reference, labels)(x, sigma))
        logvar = converted.model.logvar(sigma.log() / 4)
        assert torch.equal(logvar, reference.model.logvar(sigma.log() / 4)) and logvar.shape == (2,)


def test_edm2_constructor_arguments_we_do_not_know_are_named(tmp_path):
    def snapshot():
        snap = edm2_snapshot(tiny_denoiser())
        snap["ema"].state["_modules"]["unet"].state["_init_kwargs"]["fancy_skip"] = True
        return snap

    path = write_pickle(snapshot, tmp_path / "edm2.pkl")
    with pytest.raises(ValueError, match=rf"{path}: EDM2 constructor arguments \['fancy_skip'\]"):
        load_any(path)


def test_a_config_network_section_selects_an_edm2_preset_and_sizes_it_for_digits():
    section = {"preset": "edm2-img64-s", "img_resolution": 8, "in_channels": 1, "label_dim": 10}
    section |= {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
    cfg = network_config({**section, "channels_per_head": 8})
    assert isinstance(cfg, EDM2Config) and cfg.image_shape == (1, 8, 8) and cfg.label_dim == 10
    resolve({"name": "x", "network": {**section, "channels_per_head": 8}}, "overlay.yaml")  # the schema takes it
    net = Denoiser(build_network(cfg)).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), None, torch.eye(10)[[3, 4]])
    assert out.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="in/out_channels differ"):
        network_config({**section, "out_channels": 3})
    with pytest.raises(ValueError, match="network.num_heads: not a field of EDM2 preset 'edm2-img64-s'"):
        network_config({**section, "num_heads": 2})


def test_meanflow_trains_an_edm2_student_through_its_jvp():
    student = Denoiser(add_second_time(tiny_denoiser().model)).train()
    cfg = {**resolve({"name": "x"}, "x")["posttrain"]["meanflow"], "frac_r_neq_t": 0.5, "p": 1.0}
    loss = meanflow_loss(
        student, torch.randn(4, 3, 8, 8), torch.Generator().manual_seed(0), cfg, (0.002 / 1.002, 80 / 81)
    )
    loss.backward()
    assert torch.isfinite(loss) and student.model.time2_gain.grad is not None
