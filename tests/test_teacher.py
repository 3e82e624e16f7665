"""The EDM teacher: the loss falls with training, and the main job writes its artifacts."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cmt.cli import main
from cmt.data import load_digits
from cmt.stages.teacher import build_denoiser, edm_loss, train_teacher

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_training_lowers_the_edm_loss(cfg, tmp_path):
    data = load_digits()
    den = build_denoiser(cfg["network"], cfg["precond"])
    fixed = data.images[:256]

    def eval_loss(model):
        with torch.no_grad():
            return float(edm_loss(model.eval(), fixed, -1.2, 1.2, torch.Generator().manual_seed(5)))

    before = eval_loss(den)
    train_cfg = {**cfg["teacher"]["train"], "iterations": 60, "warmup_iterations": 10, "ema_halflife_images": 500}
    result = train_teacher(den, data, train_cfg, seed=0, device=torch.device("cpu"), work_dir=tmp_path)
    assert [h["step"] for h in result.history] == list(range(1, 61))
    assert eval_loss(result.ema) < 0.8 * before


def test_demo_writes_checkpoint_grid_and_curve(tmp_path, cfg):
    small = {**cfg, "teacher": {"source": "train", "train": {**cfg["teacher"]["train"], "iterations": 15}},
             "sampling": {**cfg["sampling"], "num_samples": 16}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    out = tmp_path / "out"
    assert main(["demo", "--config", str(path), "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["iterations"] == 15 and meta["architecture"]["img_resolution"] == 8
    assert len(meta["config_hash"]) == 12
    with Image.open(out / "samples.png") as grid:
        assert grid.size == ((4 * 9 + 1) * 4, (4 * 9 + 1) * 4)
    assert (out / "loss.png").stat().st_size > 1000 and (out / "model.safetensors").is_file()
