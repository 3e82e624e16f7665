"""Training batches streamed from disk through a DataLoader: each step's rows fixed by (seed, step), so a resumed
run reads the batches an uninterrupted one would with any worker count; x-flips, labels, lazy reads, errors."""

import zipfile

import pytest
import torch
from helpers.image_standins import write_image_folder

from cmt.data.batches import StreamedBatches, make_batches
from cmt.data.dataset_tool import build
from cmt.data.datasets import ImageDataset, load_dataset, load_edm_zip

LOADER = {"workers": 0, "prefetch": 2, "pin_memory": True, "xflip": False}
CPU = torch.device("cpu")


@pytest.fixture
def edm_zip(tmp_path):
    write_image_folder(tmp_path / "src", 24, 8, classes=3)
    build({"from": "image_folder", "archive": str(tmp_path / "src"), "labels": "subfolders"}, tmp_path / "d.zip")
    return tmp_path / "d.zip"


def steps(batches, first, count):
    gen = torch.Generator().manual_seed(0)
    return [batches(step, gen) for step in range(first, first + count)]


def test_batches_do_not_depend_on_workers_or_on_resuming(edm_zip):
    data = load_edm_zip(edm_zip)
    single = steps(StreamedBatches(data, data.labels, 5, 7, CPU, LOADER), 0, 6)
    workers = steps(StreamedBatches(data, data.labels, 5, 7, CPU, {**LOADER, "workers": 2}), 0, 6)
    resumed = steps(StreamedBatches(data, data.labels, 5, 7, CPU, LOADER), 4, 2)
    for (a, la), (b, lb) in zip(single, workers):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, la), (b, lb) in zip(single[4:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(single[0][0], single[1][0])  # steps differ
    other_seed = steps(StreamedBatches(data, data.labels, 5, 8, CPU, LOADER), 0, 1)
    assert not torch.equal(other_seed[0][0], single[0][0])


def test_each_image_arrives_with_its_own_label_in_minus_one_one(edm_zip):
    data = load_edm_zip(edm_zip)
    everything = data.images
    for images, labels in steps(StreamedBatches(data, data.labels, 8, 0, CPU, LOADER), 0, 3):
        assert images.dtype == torch.float32 and images.shape == (8, 3, 8, 8)
        for image, label in zip(images, labels):
            rows = [r for r in range(len(data)) if torch.equal(everything[r], image)]
            assert rows and all(int(data.labels[r]) == int(label) for r in rows)


def test_xflip_mirrors_about_half_of_the_images(edm_zip):
    data = load_edm_zip(edm_zip)
    everything = data.images
    plain = flipped = 0
    for images, _ in steps(StreamedBatches(data, None, 16, 0, CPU, {**LOADER, "xflip": True}), 0, 4):
        for image in images:
            plain += any(torch.equal(image, e) for e in everything)
            flipped += any(torch.equal(image, e.flip(-1)) for e in everything)
    assert plain + flipped == 64 and 16 < flipped < 48


def test_only_the_batches_read_are_decoded(edm_zip):
    data = load_edm_zip(edm_zip)
    reads = []
    original = data.reader.get
    data.reader.get = lambda row: reads.append(row) or original(row)
    steps(StreamedBatches(data, None, 5, 0, CPU, LOADER), 0, 2)
    assert len(reads) == 10


def test_file_sources_stream_and_digits_stay_in_memory(edm_zip):
    assert isinstance(make_batches(load_dataset({"source": "digits"}), None, 4, 0, CPU, LOADER).images, torch.Tensor)
    streamed = make_batches(load_dataset({"source": "edm_zip", "path": str(edm_zip)}), None, 4, 0, CPU, LOADER)
    assert isinstance(streamed, StreamedBatches)
    assert isinstance(load_dataset({"source": "digits"}), ImageDataset)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_image_in_the_zip_is_named(tmp_path, workers):
    write_image_folder(tmp_path / "src", 3, 8)
    build({"from": "image_folder", "archive": str(tmp_path / "src")}, tmp_path / "d.zip")
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, b"garbage" if name == "00000/img00000001.png" else payload)
    data = load_edm_zip(tmp_path / "bad.zip")
    with pytest.raises(ValueError, match="bad.zip: 00000/img00000001.png: not a readable image"):
        steps(StreamedBatches(data, None, 12, 0, CPU, {**LOADER, "workers": workers}), 0, 1)


def test_labels_that_do_not_match_the_images_are_named(tmp_path):
    write_image_folder(tmp_path / "src", 2, 8)
    build({"from": "image_folder", "archive": str(tmp_path / "src")}, tmp_path / "d.zip")
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        entries = {n: zf.read(n) for n in zf.namelist() if n != "dataset.json"}
    with zipfile.ZipFile(tmp_path / "mislabelled.zip", "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
        zf.writestr("dataset.json", '{"labels": [["00000/img00000000.png", 1]]}')
    with pytest.raises(ValueError, match="mislabelled.zip: dataset.json has no label for 00000/img00000001.png"):
        load_edm_zip(tmp_path / "mislabelled.zip")
