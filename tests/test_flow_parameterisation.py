"""The flow parameterisation (cmt/numerics/precond.py, docs/latent.md 3): a transformer's output is its mean velocity,
read without EDM preconditioning; its denoiser view and the EDM converter are inverses; it samples from t = 1 and has
no consistency boundary; checkpoints keep it."""

import dataclasses

import pytest
import torch

from cmt.data.labels import bound
from cmt.errors import BadInput
from cmt.formats.checkpoints import load_denoiser, save_denoiser
from cmt.nets import PRESETS, add_second_time, build_network
from cmt.numerics.precond import Denoiser, converted_mean_velocity, fm_range, fm_time, mean_velocity
from cmt.objectives.base import Context
from cmt.objectives.meanflow import build as build_meanflow
from cmt.sampling.samplers import Draws, sample_few_step

CFG = dataclasses.replace(PRESETS["dit-digits-tiny"], label_dim=10, second_time=True)


def _flow_model() -> Denoiser:
    """A tiny DiT with every weight random (adaLN-Zero would make a fresh one output zeros), in float64."""
    torch.manual_seed(0)
    net = build_network(CFG).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return Denoiser(net).eval()


def _inputs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn((n, *CFG.image_shape), generator=gen, dtype=torch.float64)
    t = torch.rand(n, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(n, generator=gen, dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).double()
    return z, r, t, labels


def test_the_mean_velocity_is_the_networks_raw_output_fed_t_and_h():
    model = _flow_model()
    z, r, t, labels = _inputs()
    with torch.no_grad():
        raw = model.model(z, t, t - r, labels)
        assert model.parameterisation == "flow" and torch.equal(mean_velocity(bound(model, labels), z, r, t), raw)
        assert torch.equal(model.mean_velocity(z, r, t, labels), raw)


def test_the_denoiser_view_and_the_edm_converter_are_inverses():
    # D(x, sigma) = z - t u(z, t, t) at z = x / (1 + sigma); the converter (z - D) / t must give u back
    model = _flow_model()
    z, r, t, labels = _inputs()
    with torch.no_grad():
        direct = model.mean_velocity(z, r, t, labels)
        via_denoiser = converted_mean_velocity(lambda x, s, h: model(x, s, h, labels), z, r, t)
    torch.testing.assert_close(via_denoiser, direct, rtol=1e-10, atol=1e-10)


def test_an_edm_network_still_reads_through_the_converter():
    model = Denoiser(add_second_time(build_network(PRESETS["digits-tiny"]))).double().eval()
    z, r, t, _ = _inputs()
    z = z[:, :1].repeat(1, 1, 2, 2)  # digits-tiny takes 1 x 8 x 8
    with torch.no_grad():
        assert torch.equal(mean_velocity(model, z, r, t), converted_mean_velocity(model, z, r, t))


def test_a_flow_model_spans_all_of_flow_matching_time_and_samples_one_step_from_pure_noise():
    assert fm_range("flow", 0.002, 80.0) == (0.0, 1.0)
    assert fm_range("edm", 0.002, 80.0) == (fm_time(0.002), fm_time(80.0))
    context = Context(0.002, 80.0, CFG.image_shape, torch.device("cpu"), None, "flow")
    assert build_meanflow({}, context).t_range == (0.0, 1.0)
    model = _flow_model()
    z, _, _, _ = _inputs()
    labels = torch.arange(z.shape[0]) % 10
    one = torch.ones(z.shape[0], dtype=torch.float64)
    with torch.no_grad():
        expected = z - model.model(z, one, one, torch.nn.functional.one_hot(labels, 10).double())
        got = sample_few_step(model, "meanflow", Draws(z, None, labels), 1, 80.0, 0.8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_a_flow_model_refuses_the_consistency_boundary_and_consistency_sampling():
    model = _flow_model()
    with pytest.raises(BadInput, match="no consistency boundary mode"):
        model.set_mode("boundary")
    z, _, _, _ = _inputs()
    with pytest.raises(BadInput, match="flow-map method"):
        sample_few_step(model, "consistency", Draws(z, z, torch.zeros(len(z), dtype=torch.long)), 1, 80.0, 0.8)


def test_a_checkpoint_keeps_the_flow_parameterisation_and_the_outputs(tmp_path):
    model = _flow_model().float()
    save_denoiser(tmp_path, model, {"stage": "test"})
    loaded, meta = load_denoiser(tmp_path)
    z, r, t, labels = (v.float() for v in _inputs())
    assert meta["architecture"]["family"] == "dit" and loaded.parameterisation == "flow"
    with torch.no_grad():
        assert torch.equal(loaded.eval().mean_velocity(z, r, t, labels), model.mean_velocity(z, r, t, labels))
