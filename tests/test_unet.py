"""The EDM-style U-Net: shapes, EDM parameter names and count, forward-mode AD, second time input."""

import pytest
import torch
from torch.func import jvp

from cmt.nets import PRESETS, UNetConfig, add_second_time, build_network, count_parameters, network_config
from cmt.numerics.precond import Denoiser


def perturbed(net, scale=0.05, seed=0):
    """EDM zero-inits output convs; perturb so every path contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return net


def test_cifar10_ddpmpp_parameter_count_and_edm_names():
    net = build_network(PRESETS["ddpmpp-cifar10"])
    assert count_parameters(net) == pytest.approx(55.7e6, rel=0.01)
    keys = set(Denoiser(net).state_dict())
    for name in [
        "model.enc.32x32_conv.weight",
        "model.enc.16x16_down.conv0.weight",
        "model.enc.16x16_block2.qkv.weight",
        "model.enc.16x16_down.skip.resample_filter",
        "model.dec.8x8_in0.proj.weight",
        "model.dec.32x32_aux_norm.weight",
        "model.dec.32x32_aux_conv.weight",
        "model.map_layer0.weight",
        "model.map_layer1.bias",
    ]:
        assert name in keys, name
    assert not any(k.startswith("model.map_augment") for k in keys)


@pytest.mark.parametrize("preset", ["digits-tiny", "ddpmpp-cifar10"])
def test_a_fresh_denoiser_is_the_skip_path(preset):
    """EDM's output layer starts near zero (init_zero: xavier x 1e-5), so a fresh D(x, sigma) is c_skip(sigma) x
    up to c_out(sigma) x 1e-4, and exactly c_skip(sigma) x, bit for bit, once that layer is zero."""
    den = Denoiser(build_network(PRESETS[preset])).eval()
    shape = (3, den.model.cfg.in_channels, den.model.cfg.img_resolution, den.model.cfg.img_resolution)
    x, sigma = torch.randn(shape, generator=torch.Generator().manual_seed(0)), torch.tensor([0.01, 1.0, 80.0])
    sd = den.sigma_data
    c_skip = (sd**2 / (sigma**2 + sd**2)).reshape(-1, 1, 1, 1)  # EDM Table 1
    c_out = (sigma * sd / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        fresh = den(x, sigma)
        assert ((fresh - c_skip * x).abs() <= 1e-4 * c_out).all()
        assert not torch.equal(fresh, c_skip * x)  # near zero, not zero: EDM's init
        out_layer = den.model.dec[f"{shape[-1]}x{shape[-1]}_aux_conv"]
        out_layer.weight.zero_()
        out_layer.bias.zero_()
        assert torch.equal(den(x, sigma), c_skip * x)


def test_shapes_32x32_and_8x8():
    cifar = build_network(PRESETS["ddpmpp-cifar10"]).eval()
    with torch.no_grad():
        assert cifar(torch.randn(2, 3, 32, 32), torch.randn(2)).shape == (2, 3, 32, 32)
    tiny = build_network(PRESETS["digits-tiny"])
    assert tiny(torch.randn(5, 1, 8, 8), torch.randn(5)).shape == (5, 1, 8, 8)
    assert 100_000 < count_parameters(tiny) < 1_000_000


def test_network_config_overrides_preset():
    cfg = network_config({"preset": "digits-tiny", "model_channels": 16, "channel_mult": [1, 1]})
    assert cfg.model_channels == 16 and cfg.channel_mult == (1, 1) and cfg.img_resolution == 8
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_jvp_matches_central_finite_difference():
    """torch.func.jvp through the whole net (attention included) vs a float64 central difference."""
    cfg = network_config({"preset": "digits-tiny", "attn_resolutions": [8, 4]})
    net = perturbed(build_network(cfg)).double().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    c_noise = torch.randn(3, generator=gen, dtype=torch.float64)
    dx = torch.randn_like(x)
    dc = torch.randn_like(c_noise)
    f = lambda a, b: net(a, b)  # noqa: E731
    _, tangent = jvp(f, (x, c_noise), (dx, dc))
    eps = 1e-6
    fd = (f(x + eps * dx, c_noise + eps * dc) - f(x - eps * dx, c_noise - eps * dc)) / (2 * eps)
    assert float(tangent.detach().abs().max()) > 1e-3
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-7)


def test_jvp_through_denoiser_in_float32():
    den = Denoiser(perturbed(build_network(PRESETS["digits-tiny"]))).eval()
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    out, tangent = jvp(lambda s: den(x, s), (sigma,), (torch.ones_like(sigma),))
    assert out.shape == tangent.shape == x.shape and torch.isfinite(tangent).all()


def test_second_time_branch_starts_as_parent_and_can_learn():
    parent = perturbed(build_network(PRESETS["digits-tiny"])).eval()
    child = add_second_time(parent).eval()
    x, c_noise = torch.randn(4, 1, 8, 8), torch.randn(4)
    for h in (torch.zeros(4), torch.rand(4), torch.full((4,), 0.9)):
        assert torch.equal(child(x, c_noise, h), parent(x, c_noise))
    child(x, c_noise, torch.rand(4)).square().sum().backward()
    assert child.map_time2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="second time"):
        child(x, c_noise)
    with pytest.raises(ValueError, match="second time"):
        parent(x, c_noise, torch.rand(4))


def test_dropout_active_only_in_train_mode():
    net = perturbed(build_network(network_config({"preset": "digits-tiny", "dropout": 0.5})))
    x, c = torch.randn(2, 1, 8, 8), torch.randn(2)
    net.eval()
    assert torch.equal(net(x, c), net(x, c))
    net.train()
    assert not torch.equal(net(x, c), net(x, c))
