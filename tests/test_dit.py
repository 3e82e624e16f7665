"""The DiT / SiT family (cmt/nets/dit.py, docs/latent.md 1): DiT's published sizes, forward-mode AD through attention
against finite differences, MeanFlow's second time added without changing the output, labels and the null class."""

import dataclasses

import pytest
import torch

from cmt.errors import BadInput
from cmt.nets import PRESETS, DiTConfig, add_second_time, build_network, config_from_dict, count_parameters
from cmt.nets.dit import sincos_positions

TINY = DiTConfig(4, 4, 4, patch_size=2, hidden_size=32, depth=2, num_heads=4, label_dim=10, second_time=True)


def _meta_count(cfg: DiTConfig) -> int:
    """Parameters as DiT's code counts them: its fixed positions are a (frozen) parameter there, a buffer here."""
    with torch.device("meta"):
        net = build_network(cfg)
    return count_parameters(net) + net.pos_embed.numel()


def test_the_presets_have_dits_published_sizes():
    # DiT's XL/2 as its train.py prints it (learn_sigma: 8 output channels), and DiT paper Table 1's S, B, L
    assert _meta_count(dataclasses.replace(PRESETS["dit-xl2"], out_channels=8)) == 675_129_632
    for name, millions in {"dit-s2": 33, "dit-b2": 130, "dit-l2": 458}.items():
        assert _meta_count(dataclasses.replace(PRESETS[name], out_channels=8)) / 1e6 == pytest.approx(
            millions, rel=0.01
        )
    # MeanFlow's XL/2: 4 output channels, plus an h embedder as large as the t embedder (256 -> 1152 -> 1152)
    h_embedder = 256 * 1152 + 1152 + 1152 * 1152 + 1152
    assert (
        _meta_count(dataclasses.replace(PRESETS["dit-xl2"], second_time=True))
        == 675_129_632 - 1152 * 16 - 16 + h_embedder
    )


def _randomised(cfg: DiTConfig, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A network with every weight random (adaLN-Zero would make a fresh one output zeros)."""
    torch.manual_seed(0)
    net = build_network(cfg).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


def test_forward_mode_ad_through_attention_matches_finite_differences():
    net = _randomised(TINY)
    gen = torch.Generator().manual_seed(1)
    x, dx = (torch.randn(3, 4, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    t, h = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64), torch.tensor([0.3, 0.0, 0.2], dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.tensor([1, 7, 3]), 10).to(torch.float64)

    def f(x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return net(x, t, h, labels)

    tangents = (dx, torch.ones_like(t), torch.zeros_like(h))  # MeanFlow's (v, 1, 0)
    out, jvp = torch.func.jvp(f, (x, t, h), tangents)
    eps = 1e-6
    plus, minus = (f(x + s * eps * dx, t + s * eps, h) for s in (1, -1))
    assert torch.allclose(jvp, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    assert jvp.abs().max() > 1e-2  # not a trivially zero derivative
    loss = (out - jvp.detach()).square().mean() + jvp.square().mean()  # gradients flow through the tangent, too
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_a_fresh_network_outputs_zeros_and_adding_the_second_time_changes_nothing():
    cfg = dataclasses.replace(TINY, second_time=False)
    torch.manual_seed(0)
    fresh = build_network(cfg)
    x, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    labels = torch.eye(10)[:2]
    assert fresh(x, t, class_labels=labels).abs().max() == 0  # adaLN-Zero and a zero output layer
    net = _randomised(cfg, torch.float32)
    twin = add_second_time(net)
    assert twin.cfg.second_time and {k for k in twin.state_dict() if k not in net.state_dict()} == {
        "h_embedder.mlp.0.weight", "h_embedder.mlp.0.bias", "h_embedder.mlp.2.weight", "h_embedder.mlp.2.bias",
    }  # fmt: skip
    for h in (torch.zeros(2), torch.rand(2)):
        assert torch.equal(twin(x, t, h, labels), net(x, t, class_labels=labels))
    with pytest.raises(ValueError, match="needs a second time input"):
        twin(x, t, class_labels=labels)


def test_one_hot_labels_pick_table_rows_and_a_zero_row_the_null_class():
    net = _randomised(TINY, torch.float32)
    table = net.y_embedder.embedding_table.weight
    labels = torch.zeros(3, 10)
    labels[0, 4] = labels[1, 9] = 1  # the third row stays zero: a dropped label
    assert torch.allclose(net.y_embedder(labels), table[[4, 9, 10]])


def test_positions_are_dits_sin_cos_grid():
    pos = sincos_positions(8, 3)  # 3 x 3 patches, 8 channels: 4 for the column, 4 for the row
    assert pos.shape == (9, 8)
    assert torch.equal(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))  # sin 0 = 0, cos 0 = 1
    # patch (row 1, column 2): column block sin/cos(2 * omega), row block sin/cos(1 * omega), omega = 1, 1/100
    omega = torch.tensor([1.0, 0.01])
    expected = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(omega), torch.cos(omega)])
    assert torch.allclose(pos[5], expected)


def test_the_architecture_round_trips_and_bad_shapes_are_refused():
    assert config_from_dict(TINY.to_dict()) == TINY and TINY.to_dict()["family"] == "dit"
    with pytest.raises(BadInput, match="network.patch_size: 3 does not divide img_resolution 4"):
        build_network(dataclasses.replace(TINY, patch_size=3))
    with pytest.raises(BadInput, match="network.hidden_size: 30 must be a multiple of 4 and of num_heads 4"):
        build_network(dataclasses.replace(TINY, hidden_size=30))
