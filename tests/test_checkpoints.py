"""Checkpoint format: round trip, atomic writes, clear errors for damaged files."""

import json

import pytest
import torch

from cmt.formats.atomic import PART_SUFFIX, atomic_write_json
from cmt.formats.checkpoints import load_denoiser, save_denoiser
from cmt.nets import PRESETS, add_second_time, build_network
from cmt.numerics.precond import Denoiser


def test_round_trip_reproduces_outputs_and_meta(tmp_path):
    den = Denoiser(add_second_time(build_network(PRESETS["digits-tiny"])), sigma_min=0.003, mode="boundary")
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_denoiser(tmp_path, den, {"stage": "test"})
    back, meta = load_denoiser(tmp_path)
    x, sigma, h = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0]), torch.rand(3)
    assert torch.equal(back.eval()(x, sigma, h), den.eval()(x, sigma, h))
    assert meta["stage"] == "test" and meta["architecture"]["second_time"] is True
    assert back.mode == "boundary" and back.sigma_min == 0.003
    assert not list(tmp_path.glob(f".*{PART_SUFFIX}"))


def test_truncated_weights_name_the_file(tmp_path):
    save_denoiser(tmp_path, Denoiser(build_network(PRESETS["digits-tiny"])), {})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_denoiser(tmp_path)


def test_meta_without_architecture_is_refused(tmp_path):
    atomic_write_json(tmp_path / "meta.json", {"precond": {}})
    with pytest.raises(ValueError, match="meta.json.*architecture"):
        load_denoiser(tmp_path)
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(ValueError, match="meta.json: not valid JSON"):
        load_denoiser(tmp_path)


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "scores.json"
    atomic_write_json(target, {"fd": 1.0})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"fd": object()})
    assert json.loads(target.read_text()) == {"fd": 1.0}


@pytest.mark.parametrize("preset", ["digits-tiny", "edm2-img64-s"])
def test_checkpoints_name_their_family_and_unnamed_ones_load_as_ddpmpp(tmp_path, preset):
    """Every architecture records its family now; a DDPM++ checkpoint written before families were named (no
    ``family`` key, in meta.json and in the safetensors header) still loads, to the same weights."""
    torch.manual_seed(0)
    net = build_network(PRESETS[preset])
    save_denoiser(tmp_path, Denoiser(net), {"stage": "test"})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["architecture"]["family"] == PRESETS[preset].family
    if preset != "digits-tiny":
        return
    from safetensors.torch import load_file, save_file

    old = {**meta, "architecture": {k: v for k, v in meta["architecture"].items() if k != "family"}}
    atomic_write_json(tmp_path / "meta.json", old)
    state = load_file(tmp_path / "model.safetensors")
    save_file(state, tmp_path / "model.safetensors", metadata={"cmt_meta": json.dumps(old, sort_keys=True)})
    loaded, _ = load_denoiser(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), Denoiser(net).state_dict().values()))
    atomic_write_json(tmp_path / "meta.json", {**old, "architecture": {**old["architecture"], "family": "vit"}})
    with pytest.raises(ValueError, match="unknown network family 'vit'; known: ddpmpp, edm2, dit"):
        load_denoiser(tmp_path)
    atomic_write_json(tmp_path / "meta.json", {**old, "architecture": {**old["architecture"], "family": "dit"}})
    with pytest.raises(ValueError, match="a DiT architecture has no field 'attn_resolutions'"):
        load_denoiser(tmp_path)  # a U-Net's fields under another family's name


def test_a_safetensors_checkpoint_whose_header_length_starts_like_a_pickle_is_ours(tmp_path):
    """A safetensors file opens with its header length; when that length's low byte is 0x80 (a pickle's first
    byte), the file is still read as ours, not as a network pickle."""
    from cmt.formats.checkpoint_import import is_network_pickle, load_any

    torch.manual_seed(0)
    denoiser = Denoiser(build_network(PRESETS["digits-tiny"]))
    for pad in range(256):
        save_denoiser(tmp_path, denoiser, {"stage": "test", "pad": "x" * pad})
        with open(tmp_path / "model.safetensors", "rb") as fh:
            if fh.read(1) == b"\x80":
                break
    else:
        pytest.fail("no header length with a 0x80 low byte in 256 tries")
    assert not is_network_pickle(tmp_path / "model.safetensors")
    loaded, meta = load_any(tmp_path / "model.safetensors")
    assert meta["pad"] == "x" * pad and meta["converted_from"]["format"] == "cmt"
