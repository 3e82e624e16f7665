"""Datasets: shapes, value ranges, labels, deterministic splits, clear errors."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from cmt.data.datasets import load_cifar10, load_dataset, load_digits, load_edm_zip, load_image_folder, load_npz, split
from cmt.errors import BadInput


def test_digits_shape_range_labels():
    ds = load_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) == -1.0 and float(ds.images.max()) == 1.0
    assert sorted(ds.labels.unique().tolist()) == list(range(10))
    assert 174 <= int(torch.bincount(ds.labels).min()) and int(torch.bincount(ds.labels).max()) <= 183


def test_split_deterministic_disjoint_complete():
    ds = load_digits()
    train, hold = split(ds, 0.2, seed=7)
    train2, hold2 = split(ds, 0.2, seed=7)
    _, hold3 = split(ds, 0.2, seed=8)
    assert torch.equal(hold.images, hold2.images) and torch.equal(train.labels, train2.labels)
    assert not torch.equal(hold.images, hold3.images)
    assert len(hold) == 359 and len(train) + len(hold) == len(ds)
    rows = {tuple(r) for r in ds.images.flatten(1).tolist()}
    assert {tuple(r) for r in torch.cat([train.images, hold.images]).flatten(1).tolist()} == rows
    with pytest.raises(ValueError, match="holdout_fraction"):
        split(ds, 1.5, seed=0)


def _rgb(seed, size=4):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_npz_uint8_nhwc_and_float_range_check(tmp_path):
    arr = np.stack([_rgb(i) for i in range(5)])
    np.savez(tmp_path / "set.npz", images=arr, labels=np.arange(5))
    ds = load_npz(tmp_path / "set.npz")
    assert ds.images.shape == (5, 3, 4, 4) and ds.labels.tolist() == list(range(5))
    torch.testing.assert_close(ds.images[2, :, 1, 3], torch.from_numpy(arr[2, 1, 3]).float() / 127.5 - 1)
    np.savez(tmp_path / "bad.npz", images=np.full((2, 1, 4, 4), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match="bad.npz"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(BadInput, match="pixels"):
        load_npz(tmp_path / "set.npz", images_key="pixels")


def test_image_folder_with_class_subfolders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(_rgb(i + (10 if cls == "dog" else 0))).save(tmp_path / cls / f"{i}.png")
    ds = load_image_folder(tmp_path)
    assert ds.images.shape == (6, 3, 4, 4) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(ds.images.min()) >= -1 and float(ds.images.max()) <= 1


def test_edm_zip_with_labels(tmp_path):
    path = tmp_path / "tiny-4x4.zip"
    with zipfile.ZipFile(path, "w") as zf:
        labels = []
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(_rgb(i)).save(buf, format="PNG")
            name = f"00000/img{i:08d}.png"
            zf.writestr(name, buf.getvalue())
            labels.append([name, i % 2])
        zf.writestr("dataset.json", json.dumps({"labels": labels}))
    ds = load_edm_zip(path)
    assert ds.images.shape == (4, 3, 4, 4) and ds.labels.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(ds.images[3], torch.from_numpy(_rgb(3)).permute(2, 0, 1).float() / 127.5 - 1)


def test_missing_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="data.path"):
        load_dataset({"source": "npz"})
    assert len(load_dataset({"source": "digits"})) == 1797
