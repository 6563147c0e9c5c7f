"""The real-data world (`wsvs train --preset davis`) on real DAVIS sequences: its layout, the clips' ground truth,
the refusals of the command line, and the whole pipeline on a few sequences, judged on unseen ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsvs.runtime.cli import main
from wsvs.runtime.io import read_json, read_label_png
from wsvs.runtime.keyframes import cut_clip
from wsvs.runtime.video_reader import VideoReader
from wsvs.training.davis_world import DavisWorldConfig, build_davis_world, davis_subset, write_clip_truth
from wsvs.training.voc import VOCDataset

TRAIN = ("bear", "bmx-bumps", "dog-agility", "flamingo", "mallard-fly")  # bear: no VOC class; bmx-bumps: two


@pytest.fixture(scope="module")
def small_world(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("davis")
    config = DavisWorldConfig(train=davis_subset(shared_data / "davis2016_train", TRAIN, root / "train"),
                              eval=davis_subset(shared_data / "davis2016_dev", ("blackswan", "cows"), root / "eval"),
                              classes_table=shared_data / "davis2016_classes.tsv", long_side=128, image_step=10,
                              eval_step=10)
    return build_davis_world(config, root / "world")


def test_world_lays_out_images_labels_masks_and_web_videos(small_world: Path) -> None:
    classes = (small_world / "images" / "classes.txt").read_text().split()
    assert classes == ["bicycle", "bird", "dog", "person"]
    train = VOCDataset(small_world / "images", "train")
    labels = {image_id: [c for c, on in zip(classes, train.labels(i)) if on] for i, image_id in enumerate(train.ids)}
    assert labels["bmx-bumps_00000"] == ["bicycle", "person"] and labels["bear_00000"] == []
    assert train.image(0).shape[:2] == (72, 128)
    val = VOCDataset(small_world / "images", "val")
    assert {i.split("_")[0] for i in val.ids} == {"blackswan"}  # cows: a class no training sequence has
    mask = val.mask(0)
    assert set(np.unique(mask)) == {0, 1 + classes.index("bird")}
    assert read_json(small_world / "world.json")["foreground_sequences"] == ["cows"]
    assert any((small_world / "foreground" / "Annotations" / "480p" / "cows").glob("*.png"))
    listing = read_json(small_world / "web" / "listing.json")
    ids = [entry["id"] for entries in listing.values() for entry in entries]
    assert len(ids) == len(set(ids)) and {e["sequence"] for e in listing["person"]} == {"bmx-bumps"}
    frames = list(VideoReader(small_world / "web" / "videos" / "flamingo.mp4"))
    truth = sorted((small_world / "davis" / "Annotations" / "480p" / "flamingo").glob("*.png"))
    assert len(frames) == len(truth) == 80 and frames[0].shape == (72, 128, 3)


def test_clip_truth_is_the_mask_of_each_clip_frames_source_frame(small_world: Path, tmp_path: Path) -> None:
    """A clip cut from 1.0 s on: its frame j is source frame 24 + j, and so is its ground-truth mask."""
    video = small_world / "web" / "videos" / "flamingo.mp4"
    crawl = tmp_path / "crawl"
    frames = cut_clip(video, 1.0, 2.0, crawl / "clips" / "bird" / "flamingo-bird_0.mp4")
    record = {"class": "bird", "id": "flamingo-bird", "state": "done",
              "clips": [{"path": "clips/bird/flamingo-bird_0.mp4", "start": 1.0, "end": 2.0, "frames": frames}]}
    (crawl / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "flamingo-bird_0.json").write_text(json.dumps(
        {"video": "bird/flamingo-bird_0.mp4", "class": "bird", "frames": frames, "intervals": [[0, frames]]}))
    assert write_clip_truth(small_world, crawl, masks, tmp_path / "truth") == frames == 25
    source = list(VideoReader(video))
    clip = list(VideoReader(crawl / "clips" / "bird" / "flamingo-bird_0.mp4"))
    errors = [[np.abs(c.astype(int) - s.astype(int)).mean() for s in source[22:27]] for c in clip[:3]]
    assert [int(np.argmin(row)) + 22 for row in errors] == [24, 25, 26]  # the clip's frame j is source 24 + j
    gt = small_world / "davis" / "Annotations" / "480p" / "flamingo"
    for j in (0, 10, 24):
        assert np.array_equal(read_label_png(tmp_path / "truth" / "flamingo-bird_0" / f"{j:05d}.png"),
                              read_label_png(gt / f"{24 + j:05d}.png"))


def test_train_refuses_davis_flags_without_the_preset_and_a_folder_without_masks(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "demo", "--eval-data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--eval-data and --classes-table belong to a DAVIS world" in capsys.readouterr().err
    (tmp_path / "empty" / "videos").mkdir(parents=True)
    assert main(["train", "--preset", "davis", "--data", str(tmp_path / "empty"), "--eval-data",
                 str(shared_data / "davis2016_dev"), "--classes-table", str(shared_data / "davis2016_classes.tsv"),
                 "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(tmp_path / "empty") in error[0] and "Annotations" in error[0]


def test_evaluate_counts_only_classes_in_the_ground_truth_or_the_prediction(small_world: Path, tmp_path: Path) -> None:
    """The val frames hold birds only: a model that predicts background everywhere scores background and bird
    (IoU 0); its other classes, absent from both, are left out of the mean rather than counted as 0 or 1."""
    import torch

    from wsvs.runtime.contract import ArchConfig, ModelMetadata
    from wsvs.training.checkpoint import save_checkpoint
    from wsvs.training.models import WSVSModel

    torch.manual_seed(0)
    classes = (small_world / "images" / "classes.txt").read_text().split()
    arch = ArchConfig(num_classes=len(classes), width=0.125, batch_norm=True)
    meta = ModelMetadata(class_names=classes, arch=arch, class_threshold=1.0, decoder_trained=True)  # none present
    save_checkpoint(tmp_path / "model", WSVSModel(arch).eval(), meta)
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(small_world / "images"),
                 "--json", str(tmp_path / "scores.json")]) == 0
    scores = read_json(tmp_path / "scores.json")
    per_class = scores["table"]["rows"]["decoder (videos)"]["per_class"]
    val = VOCDataset(small_world / "images", "val")
    background = np.mean([(val.mask(i) == 0).mean() for i in range(len(val))])  # frames of one size: pixel share
    assert per_class["bird"] == 0.0 and per_class["background"] == pytest.approx(background)
    assert all(per_class[name] is None for name in ("bicycle", "dog", "person"))
    assert scores["miou"] == pytest.approx(background / 2)


@pytest.mark.model
def test_pipeline_on_real_frames_beats_the_cam_baseline_on_unseen_sequences(
        shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The davis preset's recipe, smaller: four training sequences (one with no VOC class), their videos crawled
    from 127.0.0.1, and the decoder on their video masks scored on the frames of two sequences it never saw
    (blackswan, car-shadow); cows, a class no training sequence has, is left out in one line. Adaptation is not
    asserted to gain here: its images are frames of the training videos' own sequences, and it lost 4.9 points on
    the unseen ones (34.8 -> 29.9) while its check, on a held-out training sequence, saw its agreement fall by less
    than the check's tolerance (0.663 -> 0.661; benchmarks/RESULTS.md, Table 1 on real frames)."""
    from dataclasses import replace

    from wsvs.runtime.config import load_config
    from wsvs.training.pipeline import PipelineConfig, preset_path, run_pipeline

    preset = load_config(PipelineConfig, preset_path("davis"))
    davis = DavisWorldConfig(
        train=davis_subset(shared_data / "davis2016_train", ("bear", "car-turn", "flamingo", "mallard-water"),
                           tmp_path / "train"),
        eval=davis_subset(shared_data / "davis2016_dev", ("blackswan", "car-shadow", "cows"), tmp_path / "eval"),
        classes_table=shared_data / "davis2016_classes.tsv", long_side=160, image_step=4, eval_step=4)
    config = replace(preset, davis=davis, encoder=replace(preset.encoder, input_size=160, epochs=4),
                     segment_videos=replace(preset.segment_videos, max_side=160),
                     decoder=replace(preset.decoder, input_size=128, max_side=160),
                     adapt=replace(preset.adapt, epochs=1))
    report = run_pipeline(config, tmp_path / "run")
    assert "cows: class cow is in no training sequence; left out of per-class scores" in capsys.readouterr().out
    miou = report["miou"]
    assert miou["decoder"] > miou["cam_baseline"] + 0.03, miou
    assert set(report["tables"]["decoder"]["classes"]) == {"background", "bird", "car"}
    assert 0 < miou["zero_shot"] < 1 and 0 < miou["upper_bound"] < 1
    assert set(report["video_j"]["per_video"]) == {"car-turn-car_0", "flamingo-bird_0", "mallard-water-bird_0"}
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "zero-shot ImageNet CAM" in markdown and "decoder on DAVIS masks (upper bound)" in markdown
