"""Trajectory shards: contents, identical regeneration, damaged shards named, stored vs online sources."""

import json
import subprocess
import sys

import pytest
import torch
from helpers.models import conditional_denoiser
from helpers.project import EDM_RANGE

from cmt.data.datasets import ImageDataset
from cmt.data.labels import conditioned
from cmt.formats.atomic import atomic_save_tensors
from cmt.formats.fetch import file_sha256
from cmt.nets import PRESETS, build_network
from cmt.numerics.precond import Denoiser
from cmt.numerics.solvers import logsnr_sigmas, sample_trajectory
from cmt.sampling.trajectory_sets import (
    INDEX,
    OnlineTrajectories,
    SetSize,
    StoredTrajectories,
    TrajectorySpec,
    generate,
    shard_seed,
    write_set,
)
from cmt.stages.midtrain import online_precision_error

SPEC = TrajectorySpec("dpmpp3m_legacy", logsnr_sigmas(4, *EDM_RANGE), "prior", (1, 8, 8))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    den = Denoiser(build_network(PRESETS["digits-tiny"]))
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return den.eval()


@pytest.fixture
def stored(tmp_path, teacher):
    index = write_set(tmp_path, teacher, SPEC, SetSize(10, 4, 3), data=None, provenance={"teacher": "t"})
    return tmp_path, index


def test_index_and_shards(stored, teacher):
    folder, index = stored
    assert [s["count"] for s in index["shards"]] == [4, 4, 2] and index["nfe"] == 4
    assert json.loads((folder / INDEX).read_text()) == index
    traj = StoredTrajectories(folder)
    states = traj.read(torch.arange(10)).states
    assert states.shape == (10, 5, 1, 8, 8) and len(traj) == 10
    # shard 1 is the solver run from its own seeded start points
    gen = torch.Generator().manual_seed(shard_seed(3, 1))
    x_T = 80.0 * torch.randn((4, 1, 8, 8), generator=gen)
    expected = sample_trajectory(teacher, x_T, SPEC.grid.float(), SPEC.solver).transpose(0, 1)
    torch.testing.assert_close(states[4:8], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(traj.read(torch.tensor([9, 4, 0, 4])).states, states[[9, 4, 0, 4]])  # any order, repeats


def test_any_shard_regenerates_identically(stored, teacher, tmp_path_factory):
    folder, index = stored
    again = tmp_path_factory.mktemp("again")
    write_set(again, teacher, SPEC, SetSize(10, 4, 3), data=None, provenance={})
    for entry in index["shards"]:
        assert file_sha256(again / entry["file"]) == entry["sha256"]


def test_truncated_shard_is_named(stored):
    folder, index = stored
    shard = folder / index["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"trajectory shard {shard}.*truncated"):
        StoredTrajectories(folder)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=str(shard)):
        StoredTrajectories(folder)


def test_stored_sampling_counts_distinct(stored):
    traj = StoredTrajectories(stored[0])
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([traj.sample(3, gen).states for _ in range(50)])
    assert seen.shape == (150, 5, 1, 8, 8) and traj.distinct_seen == 10
    assert traj.sample(3, gen).labels is None  # an unconditional teacher's set has no labels


def test_limit_takes_the_first_trajectories_from_the_needed_shards(stored):
    folder, index = stored
    full = StoredTrajectories(folder)
    (folder / index["shards"][2]["file"]).unlink()  # not needed for the first 6
    part = StoredTrajectories(folder, limit=6)
    assert len(part) == 6 and torch.equal(part.read(torch.arange(6)).states, full.read(torch.arange(6)).states)
    with pytest.raises(ValueError, match="cannot take 11"):
        StoredTrajectories(folder, limit=11)


def test_online_source_and_data_plus_noise_start(teacher):
    data = ImageDataset(torch.full((5, 1, 8, 8), 0.5), None, "halves")
    spec = TrajectorySpec("euler", logsnr_sigmas(2, *EDM_RANGE), "data_plus_noise", (1, 8, 8))
    online = OnlineTrajectories(teacher, spec, data)
    gen = torch.Generator().manual_seed(1)
    batch = online.sample(6, gen).states
    assert batch.shape == (6, 3, 1, 8, 8) and online.distinct_seen == 6
    noise = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(batch[:, 0], 80 * noise + 0.5)
    with pytest.raises(ValueError, match="training images"):
        generate(teacher, spec, 2, gen, None)


def test_a_conditional_teacher_stores_the_label_each_trajectory_was_solved_for(tmp_path):
    teacher = conditional_denoiser()
    index = write_set(tmp_path, teacher, SPEC, SetSize(6, 4, 3), data=None, provenance={})
    assert index["label_dim"] == 10
    stored = StoredTrajectories(tmp_path)
    every = stored.read(torch.arange(6))
    assert every.labels.shape == (6,) and every.labels.dtype == torch.int64
    x_T, label = every.states[4:5, 0], every.labels[4:5]
    with torch.no_grad():
        alone = sample_trajectory(conditioned(teacher, label), x_T, SPEC.grid, SPEC.solver)[:, 0]
        other = sample_trajectory(conditioned(teacher, (label + 1) % 10), x_T, SPEC.grid, SPEC.solver)[:, 0]
    torch.testing.assert_close(alone, every.states[4], rtol=1e-5, atol=1e-5)
    assert (other[-1] - alone[-1]).abs().max() > 1e-3  # the label steers the solve
    batch = stored.sample(5, torch.Generator().manual_seed(0))
    for states, lab in zip(batch.states, batch.labels):
        row = int(torch.nonzero((every.states == states).flatten(1).all(1))[0])
        assert every.labels[row] == lab


def test_a_data_plus_noise_start_carries_the_label_of_its_image():
    labels = torch.tensor([0, 3, 5, 7, 9])
    data = ImageDataset(labels.float().reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8) / 10, labels, "coded")
    spec = TrajectorySpec("euler", logsnr_sigmas(2, *EDM_RANGE), "data_plus_noise", (1, 8, 8))
    batch = generate(conditional_denoiser(), spec, 6, torch.Generator().manual_seed(1), data)
    noise = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    image_values = (batch.states[:, 0] - 80 * noise).mean((1, 2, 3))
    torch.testing.assert_close(image_values, batch.labels.float() / 10, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="class-conditional .* no labels"):
        generate(conditional_denoiser(), spec, 2, torch.Generator(), ImageDataset(data.images, None, "bare"))


def test_a_stored_set_is_read_row_by_row_never_whole(tmp_path):
    """A 168 MB set: opening it and drawing a few batches grows the process's peak memory by a few MB only."""
    count, states_shape = 2048, (5, 1, 64, 64)
    states = torch.arange(count, dtype=torch.float32).reshape(-1, 1, 1, 1, 1).expand(count, *states_shape)
    atomic_save_tensors({"states": states.contiguous()}, tmp_path / "shard-00000.safetensors")
    del states
    entry = {"file": "shard-00000.safetensors", "count": count, "seed": 0}
    entry["sha256"] = file_sha256(tmp_path / entry["file"])
    index = {"solver": "euler", "nfe": 4, "start": "prior", "shape": [1, 64, 64], "label_dim": 0, "count": count}
    index |= {"sigmas": [80.0, 10.0, 1.0, 0.1, 0.002], "shard_size": count, "seed": 0, "shards": [entry]}
    (tmp_path / INDEX).write_text(json.dumps(index))
    probe = f"""
import resource, torch
from cmt.sampling.trajectory_sets import StoredTrajectories
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stored = StoredTrajectories({str(tmp_path)!r})
gen = torch.Generator().manual_seed(0)
for _ in range(10):
    batch = stored.sample(16, gen)
    assert all(bool((s == s.flatten()[0]).all()) for s in batch.states)  # each row is one trajectory's own
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, stored.distinct_seen)
"""
    grown_kb, seen = map(
        int, subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    )
    assert seen > 100 and grown_kb < 32 * 1024


def test_an_online_teacher_in_bf16_reports_its_endpoint_error_against_fp32(teacher):
    """Midtrain's metric for ``compute.teacher_precision: bf16``: nonzero (bf16 did run), small, and the teacher's
    own precision is left as it was; an fp32 teacher reports nothing."""
    online = OnlineTrajectories(teacher, SPEC, None)
    assert online_precision_error(online, "fp32") == {}
    error = online_precision_error(online, "bf16")["teacher_precision_error"]
    assert 1e-5 < error < 5e-2 and teacher.amp_dtype is None
