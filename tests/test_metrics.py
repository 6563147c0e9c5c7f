"""Segmentation metrics against hand-computed answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsvs.runtime.metrics import ConfusionMatrix, binary_iou, format_iou_table, iou_table_json
from wsvs.training.voc import VOC_CLASSES


def test_confusion_matrix_hand_computed() -> None:
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    # Rows are ground truth, columns prediction; the void pixel is not counted.
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert cm.matrix.dtype == np.int64
    # class 0: 1 / (2 + 1 - 1); class 1: 1 / (2 + 2 - 1); class 2: 1 / (1 + 2 - 1)
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(4 / 9)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_void_pixels_are_skipped_whatever_the_prediction() -> None:
    gt = np.array([255, 255, 1, 0])
    cm = ConfusionMatrix(2)
    cm.update(np.array([7, 200, 1, 0]), gt)  # out-of-range predictions on void pixels are fine
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 1]])
    custom = ConfusionMatrix(2, ignore_index=9)
    custom.update(np.array([1, 0, 1]), np.array([9, 9, 1]))
    np.testing.assert_array_equal(custom.matrix, [[0, 0], [0, 1]])


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])  # class 2 only predicted -> IoU 0; class 3 nowhere -> NaN
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [1 / 2, 1.0, 0.0])
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx(0.5)
    empty = ConfusionMatrix(3)
    assert np.isnan(empty.iou()).all() and np.isnan(empty.miou()) and np.isnan(empty.pixel_accuracy())


def test_merge_equals_one_big_update_and_a_brute_force_count() -> None:
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, size=(17, 23)) for _ in range(4)]
    preds = [rng.integers(0, 5, size=(17, 23)) for _ in range(4)]
    for gt in gts:
        gt[rng.random(gt.shape) < 0.1] = 255
    first, second = ConfusionMatrix(5), ConfusionMatrix(5)
    for pred, gt in zip(preds[:2], gts[:2]):
        first.update(pred, gt)
    for pred, gt in zip(preds[2:], gts[2:]):
        second.update(pred, gt)
    whole = ConfusionMatrix(5)
    whole.update(np.stack(preds), np.stack(gts))
    assert first.merge(second) is first
    np.testing.assert_array_equal(first.matrix, whole.matrix)
    expected = np.zeros((5, 5), dtype=np.int64)
    for pred, gt in zip(preds, gts):
        for p, g in zip(pred.ravel(), gt.ravel()):
            if g != 255:
                expected[g, p] += 1
    np.testing.assert_array_equal(whole.matrix, expected)


def test_bad_arguments_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"prediction has labels outside 0\.\.2"):
        cm.update(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="ground truth has labels outside"):
        cm.update(np.array([0]), np.array([-1]))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(4))
    assert cm.matrix.sum() == 0  # failed updates leave the counts alone


def test_binary_iou() -> None:
    pred = np.zeros((4, 6), dtype=np.uint8)
    gt = np.zeros((4, 6), dtype=np.uint8)
    pred[0:2, 0:3] = 255  # 6 pixels
    gt[1:3, 1:4] = 255  # 6 pixels, 2 shared
    assert binary_iou(pred, gt) == pytest.approx(2 / 10)
    assert binary_iou(pred, pred) == 1.0
    assert binary_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # DAVIS: both empty is a perfect score
    assert binary_iou(np.zeros((3, 3)), np.ones((3, 3))) == 0.0


def test_iou_table_text_has_the_paper_layout() -> None:
    values = np.linspace(0.5, 0.9, 21)
    values[3] = np.nan
    table = format_iou_table({"Ours": values, "A much longer name": np.full(21, 1 / 3)}, VOC_CLASSES)
    lines = table.splitlines()
    # The header of the paper's Table 2.
    assert (
        lines[0].split()
        == (
            "Method bkg aero bike bird boat bottle bus car cat chair cow table dog horse mbk person plant sheep "
            "sofa train tv mean"
        ).split()
    )
    ours = lines[1].split()
    assert ours[0] == "Ours" and ours[1] == "50.0" and ours[4] == "-" and ours[21] == "90.0"
    assert ours[22] == f"{100 * np.nanmean(values):.1f}"
    assert lines[2].startswith("A much longer name") and lines[2].split()[-1] == "33.3"
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_iou_table_other_classes_and_json() -> None:
    rows = {"m": [1.0, 0.25, np.nan]}
    names = ["elephant", "cat"]
    assert format_iou_table(rows, names).splitlines()[0].split() == ["Method", "bkg", "elepha", "cat", "mean"]
    report = iou_table_json(rows, names)
    assert report == {
        "classes": ["background", "elephant", "cat"],
        "rows": {"m": {"per_class": {"background": 1.0, "elephant": 0.25, "cat": None}, "mean": 0.625}},
    }
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match="expected 3"):
        iou_table_json({"m": [1.0, 0.5]}, names)
