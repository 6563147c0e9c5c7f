"""`wsvs eval-video`: per-video mean J, missing frames as empty masks, class averaging, resizing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsvs.runtime.cli import main
from wsvs.runtime.io import write_binary_png
from wsvs.training.eval_video import evaluate_videos


def mask(shape: tuple[int, int], rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out


@pytest.fixture
def hand_made(tmp_path: Path) -> tuple[Path, Path]:
    """Ground truth in DAVIS layout and predictions whose IoUs are known by hand."""
    gt = tmp_path / "gt" / "Annotations" / "480p"
    pred = tmp_path / "pred"
    left = mask((4, 4), cols=slice(0, 2))
    # cat_1: a perfect frame (1.0) and a quarter against a half (4/8 = 0.5) -> 0.75
    write_binary_png(gt / "cat_1" / "00000.png", left)
    write_binary_png(gt / "cat_1" / "00001.png", left)
    write_binary_png(pred / "cat_1" / "00000.png", left)
    write_binary_png(pred / "cat_1" / "00001.png", mask((4, 4), slice(0, 2), slice(0, 2)))
    # cat_2: both empty (1.0) and a missing prediction of a non-empty mask (0.0) -> 0.5
    write_binary_png(gt / "cat_2" / "00000.png", mask((4, 4), rows=slice(0, 0)))
    write_binary_png(gt / "cat_2" / "00001.png", mask((4, 4), rows=slice(0, 1)))
    write_binary_png(pred / "cat_2" / "00000.png", mask((4, 4), rows=slice(0, 0)))
    # dog_1: ground truth 8x8, left half; prediction 4x4 with column 0 -> columns 0-1 at 8x8: 16/32 = 0.5
    write_binary_png(gt / "dog_1" / "00000.png", mask((8, 8), cols=slice(0, 4)))
    write_binary_png(pred / "dog_1" / "00000.png", mask((4, 4), cols=slice(0, 1)))
    # a predicted sequence without ground truth is ignored
    write_binary_png(pred / "extra_1" / "00000.png", left)
    return pred, tmp_path / "gt"


def test_known_ious_missing_frames_and_class_average(hand_made: tuple[Path, Path]) -> None:
    pred, gt = hand_made
    report = evaluate_videos(pred, gt)
    assert set(report["per_video"]) == {"cat_1", "cat_2", "dog_1"}
    assert report["per_video"]["cat_1"] == {"class": "cat", "iou": 0.75, "frames": 2, "missing_frames": 0}
    assert report["per_video"]["cat_2"] == {"class": "cat", "iou": 0.5, "frames": 2, "missing_frames": 1}
    assert report["per_video"]["dog_1"]["iou"] == pytest.approx(0.5)
    assert report["mean_iou"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert report["per_class"] == pytest.approx({"cat": 0.625, "dog": 0.5})
    assert report["class_avg"] == pytest.approx(0.5625)  # class average differs from the video average


def test_class_from_record_and_mapping(hand_made: tuple[Path, Path]) -> None:
    pred, gt = hand_made
    (pred / "dog_1.json").write_text(json.dumps({"class": "cat"}))  # segment-videos' per-video record
    report = evaluate_videos(pred, gt)
    assert report["per_class"] == pytest.approx({"cat": (0.75 + 0.5 + 0.5) / 3})
    # an explicit mapping wins over the record and the name
    report = evaluate_videos(pred, gt, classes={"dog_1": "wolf", "cat_2": "lynx"})
    assert report["per_class"] == pytest.approx({"cat": 0.75, "lynx": 0.5, "wolf": 0.5})
    assert report["class_avg"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)


def test_cli_writes_json_and_flat_gt_layout(hand_made: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    pred, gt = hand_made
    flat_gt = gt / "Annotations" / "480p"  # <gt>/<seq>/*.png works as well
    out = tmp_path / "report.json"
    assert main(["eval-video", "--pred", str(pred), "--gt", str(flat_gt), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["class_avg"] == pytest.approx(0.5625)
    assert set(report) == {"per_video", "mean_iou", "class_avg", "per_class"}
    printed = capsys.readouterr().out
    assert "class avg." in printed and "56.2" in printed and "58.3" in printed


def test_missing_prediction_folder_is_input_error(hand_made: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, gt = hand_made
    assert main(["eval-video", "--pred", str(tmp_path / "nope"), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_predictions_named_unlike_every_sequence_are_input_error(hand_made: tuple[Path, Path], capsys) -> None:
    # e.g. segment-videos' per-clip folders (cat_1_0/) against whole-video ground truth (cat_1/): scoring them
    # as empty predictions would print IoUs of 100 for the sequences with empty ground truth
    pred, gt = hand_made
    for folder in ("cat_1", "cat_2", "dog_1"):
        (pred / folder).rename(pred / f"{folder}_0")
    assert main(["eval-video", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(pred) in err[0] and "cat_1/" in err[0]
