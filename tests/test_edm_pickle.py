"""EDM network pickles read without running them: files written in EDM's format by a stand-in reducer
(tests/helpers/edm_standin.py), hostile files that would run code if unpickled the stock way, and the conversion
to our denoisers (outputs equal to the pickled network's)."""

import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.edm_standin import edm_snapshot, write_pickle
from helpers.models import denoised, random_denoiser

from cmt.formats.checkpoint_import import describe, load_any
from cmt.formats.checkpoints import load_denoiser
from cmt.formats.edm_pickle import UnsafePickleError, read_network_pickle
from cmt.nets import count_parameters

ONE_HOT = torch.eye(10)[[0, 3, 7, 9]]


@pytest.mark.parametrize("label_dim", [0, 10])
def test_a_converted_edm_pickle_computes_what_the_pickled_network_computed(tmp_path, label_dim):
    original = random_denoiser(label_dim)
    path = write_pickle(edm_snapshot(original, augment_dim=9), tmp_path / "network-snapshot-000000.pkl")
    converted, meta = load_any(path, url="https://example.invalid/edm.pkl")
    labels = ONE_HOT if label_dim else None
    assert torch.equal(denoised(converted, labels), denoised(original, labels))
    assert meta["extras"] == ["model.map_augment.weight"]
    assert meta["converted_from"]["format"] == "edm-pickle" and meta["converted_from"]["url"].endswith("edm.pkl")
    assert converted.model.cfg == original.model.cfg


def test_labels_must_match_the_network(tmp_path):
    with pytest.raises(ValueError, match="needs class labels"):
        denoised(random_denoiser(10))
    with pytest.raises(ValueError, match="unconditional network"):
        denoised(random_denoiser(0), ONE_HOT)


def test_inspect_and_convert_commands_on_an_edm_pickle_and_on_our_format(tmp_path):
    original = random_denoiser(10)
    snapshot = edm_snapshot(original, augment_dim=9)
    snapshot["ema"].state["_init_kwargs"]["sigma_data"] = np.float64(0.5)  # numpy numbers, as in EDM's own files
    snapshot["ema"].state["_modules"]["model"].state["_init_kwargs"]["dropout"] = np.float32(0.0)
    path = write_pickle(snapshot, tmp_path / "edm-digits.pkl")
    cli = [sys.executable, "-m", "cmt"]
    shown = json.loads(subprocess.run([*cli, "inspect-checkpoint", str(path)], check=True, capture_output=True).stdout)
    assert shown["format"] == "edm-pickle" and shown["class"] == "EDMPrecond/SongUNet"
    assert shown["label_dim"] == 10 and shown["extras"] == ["model.map_augment.weight"]
    assert shown["parameters"] == count_parameters(original) + 9 * original.model.cfg.model_channels
    assert shown["architecture"]["network"]["channel_mult"] == [1, 2]

    out = tmp_path / "converted"
    subprocess.run([*cli, "convert-checkpoint", str(path), str(out)], check=True, capture_output=True)
    back, meta = load_denoiser(out)
    assert torch.equal(denoised(back, ONE_HOT), denoised(original, ONE_HOT))
    assert meta["converted_from"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ours = json.loads(subprocess.run([*cli, "inspect-checkpoint", str(out)], check=True, capture_output=True).stdout)
    assert ours["format"] == "cmt" and ours["parameters"] == count_parameters(original)
    assert ours["extras"] == ["model.map_augment.weight"] and ours["label_dim"] == 10


def test_embedded_module_source_is_never_executed(tmp_path):
    sentinel = tmp_path / "executed"
    source = f"open({str(sentinel)!r}, 'w').write('the module source ran')\n"
    path = write_pickle(edm_snapshot(random_denoiser(), module_src=source), tmp_path / "edm.pkl")
    load_any(path)
    describe(path)
    assert not sentinel.exists()


class ShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_an_object_that_would_run_a_shell_command_is_refused_by_name(tmp_path):
    sentinel = tmp_path / "pwned"
    snapshot = edm_snapshot(random_denoiser(), extra={"evil": ShellCommand(f"touch {sentinel}")})
    path = write_pickle(snapshot, tmp_path / "edm.pkl")
    with pytest.raises(UnsafePickleError, match=rf"{path}: refused global (posix|os)\.system"):
        read_network_pickle(path)
    assert not sentinel.exists()


class StorageWithPayload:
    """A 'tensor storage' whose bytes are a pickle that calls os.system: torch's stock _load_from_bytes runs it."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        payload = pickle.dumps(ShellCommand(self.command), protocol=2)  # the protocol torch.save writes
        return (torch.storage._load_from_bytes, (payload,))


def test_a_storage_payload_is_parsed_weights_only_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    snapshot = edm_snapshot(random_denoiser())
    snapshot["ema"].state["_buffers"]["evil"] = StorageWithPayload(f"touch {sentinel}")
    path = write_pickle(snapshot, tmp_path / "edm.pkl")
    with pytest.raises(UnsafePickleError, match=rf"{path}: a tensor storage .* refused: .*(posix|os)\.system"):
        read_network_pickle(path)
    assert not sentinel.exists()


class BoundMethod:
    """What a loss_fn holding a bound method pickles as: builtins.getattr(obj, name)."""

    def __reduce__(self):
        return (getattr, ({"a": 1}, "keys"))


def test_a_bound_method_outside_ema_is_named_not_built_and_inside_ema_is_an_error(tmp_path):
    snapshot = edm_snapshot(random_denoiser())
    snapshot["loss_fn"].state["hook"] = BoundMethod()
    path = write_pickle(snapshot, tmp_path / "edm.pkl")
    assert describe(path)["refused"] == ["builtins.getattr"]
    load_any(path)

    snapshot = edm_snapshot(random_denoiser())
    snapshot["ema"].state["_modules"]["hook"] = BoundMethod()
    path = write_pickle(snapshot, tmp_path / "edm-bad.pkl")
    with pytest.raises(UnsafePickleError, match=rf"{path}: ema holds refused objects \(builtins.getattr\)"):
        read_network_pickle(path)


def test_damaged_and_unsupported_files_are_named(tmp_path):
    path = write_pickle(edm_snapshot(random_denoiser()), tmp_path / "edm.pkl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=rf"{truncated}: not a readable network pickle"):
        load_any(truncated)

    snapshot = edm_snapshot(random_denoiser())
    snapshot["ema"].class_name = "VPPrecond"
    vp = write_pickle(snapshot, tmp_path / "baseline-vp.pkl")
    with pytest.raises(ValueError, match=rf"{vp}: ema is VPPrecond; only EDMPrecond"):
        load_any(vp)

    snapshot = edm_snapshot(random_denoiser())
    snapshot["ema"].state["_modules"]["model"].state["_init_kwargs"]["embedding_type"] = "fourier"
    ncsn = write_pickle(snapshot, tmp_path / "ncsnpp.pkl")
    with pytest.raises(ValueError, match=rf"{ncsn}: SongUNet embedding_type='fourier' is not supported"):
        load_any(ncsn)

    snapshot = edm_snapshot(random_denoiser())
    del snapshot["ema"].state["_modules"]["model"].state["_modules"]["map_layer1"]
    missing = write_pickle(snapshot, tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match=rf"{missing}: weights do not fit .*missing \['model.map_layer1.bias'"):
        load_any(missing)
