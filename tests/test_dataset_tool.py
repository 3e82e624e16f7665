"""Building EDM-format zips (rule ``dataset``): round trips from the CIFAR-10 tarball and an image folder,
byte-identical rebuilds, and damaged or mislabelled archives refused with the file named and nothing left."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.image_standins import cifar_batches, write_cifar_tarball, write_image_folder
from PIL import Image

from cmt.data.dataset_tool import DatasetError, build, center_crop_adm
from cmt.data.datasets import load_edm_zip
from cmt.formats.fetch import file_sha256


def test_cifar_tarball_round_trip_in_batch_order(tmp_path):
    batches = cifar_batches()
    tarball = write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
    record = build({"from": "cifar10_tarball", "archive": str(tarball)}, tmp_path / "out.zip")
    data = load_edm_zip(tmp_path / "out.zip")
    expected = np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32)  # CIFAR rows: R, G, B planes
    assert torch.equal(data.uint8(torch.arange(len(data))), torch.from_numpy(expected))
    assert data.labels.tolist() == [y for _, labels in batches for y in labels]
    assert (
        record["count"] == 30 and record["shape"] == [3, 32, 32] and record["classes"] == len(set(data.labels.tolist()))
    )
    assert record["sha256"] == file_sha256(tmp_path / "out.zip")
    assert record["archive_sha256"] == file_sha256(tarball)


def test_rebuild_is_byte_identical(tmp_path):
    tarball = write_cifar_tarball(tmp_path / "c.tar.gz", cifar_batches())
    first = build({"from": "cifar10_tarball", "archive": str(tarball)}, tmp_path / "a.zip")
    second = build({"from": "cifar10_tarball", "archive": str(tarball)}, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert first["sha256"] == second["sha256"]


class Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('ran')",))


def _bad_member(data) -> dict:
    return {"cifar-10-batches-py/data_batch_3": pickle.dumps(data, protocol=2)}


@pytest.mark.parametrize(
    "extra, match",
    [
        (
            _bad_member({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}),
            "data_batch_3: class 10 outside 0..9",
        ),
        (_bad_member({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "data_batch_3: expected uint8 data"),
        (_bad_member({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}), "data_batch_3: expected uint8 data"),
        (_bad_member({"labels": [0]}), "data_batch_3: not a CIFAR-10 batch"),
        (_bad_member(Payload()), "__builtin__.exec is not allowed"),
    ],
)
def test_mislabelled_or_foreign_batches_are_refused_naming_the_member(tmp_path, extra, match):
    tarball = write_cifar_tarball(tmp_path / "c.tar.gz", cifar_batches(), extra)
    with pytest.raises(DatasetError, match=match) as err:
        build({"from": "cifar10_tarball", "archive": str(tarball)}, tmp_path / "out.zip")
    assert str(tarball) in str(err.value)
    assert list(tmp_path.iterdir()) == [tarball]  # no zip, no temporary


def test_damaged_tarball_and_wrong_checksum_name_the_file(tmp_path):
    tarball = write_cifar_tarball(tmp_path / "c.tar.gz", cifar_batches())
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(DatasetError, match=f"{truncated}: not a readable .tar.gz"):
        build({"from": "cifar10_tarball", "archive": str(truncated)}, tmp_path / "out.zip")
    with pytest.raises(DatasetError, match=f"{tarball}: sha256 .* expected data.build.sha256 {'0' * 64}"):
        build({"from": "cifar10_tarball", "archive": str(tarball), "sha256": "0" * 64}, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_image_folder_resized_with_lanczos_as_edm_and_labelled_by_subfolder(tmp_path):
    images = write_image_folder(tmp_path / "src", 6, 20, classes=2)
    record = build(
        {"from": "image_folder", "archive": str(tmp_path / "src"), "resolution": 8, "labels": "subfolders"},
        tmp_path / "out.zip",
    )
    data = load_edm_zip(tmp_path / "out.zip")
    expected = [np.asarray(Image.fromarray(a).resize((8, 8), Image.Resampling.LANCZOS)) for a in images]
    assert torch.equal(data.uint8(torch.arange(6)), torch.from_numpy(np.stack(expected).transpose(0, 3, 1, 2)))
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and record["shape"] == [3, 8, 8]
    build({"from": "image_folder", "archive": str(tmp_path / "src"), "resolution": 8}, tmp_path / "plain.zip")
    assert load_edm_zip(tmp_path / "plain.zip").labels is None  # EDM's FFHQ/AFHQv2 zips: {"labels": null}


def test_damaged_image_is_named_and_nothing_is_left(tmp_path):
    write_image_folder(tmp_path / "src", 3, 8)
    (tmp_path / "src" / "0001.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="0001.png: not a readable image"):
        build({"from": "image_folder", "archive": str(tmp_path / "src")}, tmp_path / "out" / "images.zip")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_exits_with_the_message_naming_the_archive(tmp_path):
    params = '{"data": {"build": {"from": "cifar10_tarball", "archive": "%s"}}}' % (tmp_path / "missing.tar.gz")
    cmd = [sys.executable, "-m", "cmt", "dataset", "--params", params]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "o.zip"), "--record", str(tmp_path / "r.json")], capture_output=True, text=True
    )
    assert done.returncode == 1 and "missing.tar.gz" in done.stderr and "Traceback" not in done.stderr


def test_adms_centre_crop_keeps_the_centre_square_of_a_wide_or_tall_image(tmp_path):
    # 600 x 400 grey with 80-column green bands at both ends: the crop to 64 (box-halved twice to 150 x 100,
    # bicubic to 96 x 64, centre 64 columns) covers source columns 100..500, so no green survives
    wide = np.full((400, 600, 3), 128, dtype=np.uint8)
    wide[:, :80] = wide[:, -80:] = (0, 255, 0)
    for image in (wide, wide.transpose(1, 0, 2).copy()):
        out = center_crop_adm(Image.fromarray(image), 64)
        assert out.shape == (64, 64, 3) and np.abs(out.astype(int) - 128).max() <= 1
    banded = np.full((400, 600, 3), 128, dtype=np.uint8)
    banded[:, 200:400] = (0, 255, 0)  # the centre third: the crop's middle columns are green
    out = center_crop_adm(Image.fromarray(banded), 64)
    assert out[:, 32, 1].min() > 250 and out[:, 0, 1].max() < 140
    (tmp_path / "src").mkdir()
    Image.fromarray(wide).save(tmp_path / "src" / "a.png")
    record = build(
        {"from": "image_folder", "archive": str(tmp_path / "src"), "resolution": 64, "transform": "center_crop_adm"},
        tmp_path / "d.zip",
    )
    assert record["shape"] == [3, 64, 64]
