"""Encoder training (Eq. 1), resume after a kill, and the CAM baseline it gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from wsvs.runtime.cli import main
from wsvs.training.augment import augment
from wsvs.training.cam import EvalCamConfig, evaluate_cam
from wsvs.training.train_encoder import TrainEncoderConfig, train_encoder


def _subset(world_dir: Path, tmp_path: Path, n: int) -> Path:
    ids = (world_dir / "images" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:n]
    path = tmp_path / "small_train.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(world_dir: Path, tmp_path: Path) -> None:
    split = _subset(world_dir, tmp_path, 28)
    config = TrainEncoderConfig(width=0.125, batch_norm=True, input_size=64, epochs=2, train_split=str(split))
    straight = train_encoder(world_dir / "images", tmp_path / "straight", config)

    # "killed" after the first epoch: train 1 epoch, then resume the same config to 2
    first = TrainEncoderConfig(**{**config.__dict__, "epochs": 1})
    train_encoder(world_dir / "images", tmp_path / "resumed", first)
    resumed = train_encoder(world_dir / "images", tmp_path / "resumed", config, resume=True)

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    history = json.loads((resumed / "model.json").read_text())["extra"]["encoder_training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_resume_refuses_a_different_config(world_dir: Path, tmp_path: Path) -> None:
    from wsvs.runtime.errors import InputError

    split = _subset(world_dir, tmp_path, 14)
    config = TrainEncoderConfig(width=0.125, batch_norm=True, input_size=64, epochs=1, train_split=str(split))
    train_encoder(world_dir / "images", tmp_path / "run", config)
    with pytest.raises(InputError, match="different config"):
        train_encoder(world_dir / "images", tmp_path / "run", TrainEncoderConfig(**{**config.__dict__, "lr": 0.1}),
                      resume=True)


def test_augment_keeps_size_and_content() -> None:
    rng = np.random.default_rng(0)
    image = np.full((50, 80, 3), 200, np.uint8)
    out, _ = augment(image, 64, (0.7, 1.3), rng)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out == 200).mean() > 0.3  # the image is in the crop, padding is black


def test_augment_moves_a_label_map_with_its_image() -> None:
    image = np.zeros((60, 90, 3), np.uint8)
    labels = np.zeros((60, 90), np.uint8)
    image[10:30, 50:80], labels[10:30, 50:80] = 255, 3
    for seed in range(8):
        out, out_labels = augment(image, 64, (0.7, 1.3), np.random.default_rng(seed), labels)
        assert out_labels.shape == (64, 64) and set(np.unique(out_labels)) <= {0, 3, 255}
        # the labelled box is where the bright box is, padding is void exactly where the image is padding
        bright, boxed = out[..., 0] > 127, out_labels == 3
        assert (bright ^ boxed).mean() < 0.02
        assert ((out_labels == 255) <= (out.max(axis=2) == 0)).all()


def test_trained_encoder_classifies_and_gives_a_cam_baseline(world_dir: Path, encoder_dir: Path) -> None:
    history = json.loads((encoder_dir / "model.json").read_text())["extra"]["encoder_training"]["history"]
    assert history[-1]["map"] >= 0.8, history[-1]
    result = evaluate_cam(encoder_dir, world_dir / "images", EvalCamConfig(split="val"))
    assert 0.1 < result["miou"] < 0.6
    assert result["table"]["classes"][0] == "background" and "CAM baseline" in result["table_text"]


def test_eval_cam_scales_override_the_checkpoints(world_dir: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """--scales 1 scores Eq. 2's CAM alone; the multi-scale attention is a max over scales that include 1, so it
    covers at least as much of every object."""
    out = tmp_path / "single.json"
    assert main(["eval-cam", "--model", str(encoder_dir), "--data", str(world_dir / "images"), "--scales", "1",
                 "--json", str(out)]) == 0
    single = json.loads(out.read_text())
    multi = evaluate_cam(encoder_dir, world_dir / "images", EvalCamConfig(split="val"))
    assert single["scales"] == [1.0] and len(multi["scales"]) > 1 and 1.0 in multi["scales"]
    assert single["cam_recall"] < multi["cam_recall"]


def test_cam_cli_writes_overlays_per_predicted_class(world_dir: Path, encoder_dir: Path, tmp_path: Path) -> None:
    images = sorted((world_dir / "images" / "JPEGImages").glob("*.jpg"))[:2]
    result = subprocess.run([sys.executable, "-m", "wsvs.runtime.cli", "cam", *map(str, images), "--model",
                             str(encoder_dir), "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    for image in images:
        assert f"{image.stem}_cam_labels.png" in written
        assert any(name.startswith(image.stem + "_") and not name.endswith("_cam_labels.png") for name in written)
