"""The VOC loader on real PASCAL VOC samples and split lists, and its refusals of bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsvs.runtime.errors import InputError
from wsvs.runtime.io import write_palette_png
from wsvs.runtime.metrics import ConfusionMatrix
from wsvs.training.voc import VOC_CLASSES, VOCDataset, read_cls_labels

AEROPLANE, BOTTLE, CHAIR, DININGTABLE, DOG, PERSON = 0, 4, 8, 10, 11, 14


@pytest.fixture
def samples(shared_data: Path) -> Path:
    return shared_data / "voc2012_samples"


@pytest.fixture
def lists(shared_data: Path) -> Path:
    return shared_data / "voc12_lists"


@pytest.fixture
def aug_tree(samples: Path, tmp_path: Path) -> Path:
    """A VOC tree holding 2011_003066 with only an SBD SegmentationClassAug mask and a psa-style list."""
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    shutil.copy(samples / "extra" / "rgb.jpg", root / "JPEGImages" / "2011_003066.jpg")
    shutil.copy(
        samples / "extra" / "2011_003066_SegmentationClassAug.png",
        root / "SegmentationClassAug" / "2011_003066.png",
    )
    (root / "ImageSets/Segmentation/val.txt").write_text(
        "/JPEGImages/2011_003066.jpg /SegmentationClassAug/2011_003066.png\n"
    )
    return root


def one_hot(*classes: int) -> np.ndarray:
    vector = np.zeros(20, dtype=np.float32)
    vector[list(classes)] = 1.0
    return vector


def test_voc_samples_images_masks_and_labels(samples: Path) -> None:
    data = VOCDataset(samples, samples / "train.txt")
    assert data.ids == [line.strip() for line in (samples / "train.txt").read_text().splitlines()]
    assert data.class_names == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert data.has_masks()
    i = data.ids.index("2007_000032")
    image, mask = data.image(i), data.mask(i)
    assert image.shape == (281, 500, 3) and image.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    classes, counts = np.unique(mask, return_counts=True)
    assert classes.tolist() == [0, 1, 15, 255]  # background, aeroplane, person, void
    assert counts.tolist() == [129545, 4734, 866, 5355]
    np.testing.assert_array_equal(data.labels(i), one_hot(AEROPLANE, PERSON))  # from the mask: no XML here
    by_name = VOCDataset(samples, "val")  # <root>/val.txt
    assert by_name.ids == ["2007_000033"]
    np.testing.assert_array_equal(by_name.label_matrix(), [one_hot(AEROPLANE)])


def test_segmentation_class_aug_fallback_and_psa_list(aug_tree: Path, samples: Path) -> None:
    data = VOCDataset(aug_tree, "val")
    assert data.ids == ["2011_003066"] and data.has_masks()
    mask = data.mask(0)
    assert data.image(0).shape[:2] == mask.shape == (375, 500)
    assert np.unique(mask).tolist() == [0, 5, 9, 11, 15, 255]
    np.testing.assert_array_equal(data.labels(0), one_hot(BOTTLE, CHAIR, DININGTABLE, PERSON))
    # The same image's instance masks, as published separately, give exactly this class map.
    instances = np.load(samples / "extra" / "data.npz")
    composed = np.zeros(mask.shape, dtype=np.int64)
    for label, region in zip(instances["labels"], instances["masks"]):
        composed[region] = label
    scores = ConfusionMatrix(21)
    scores.update(composed, mask)
    assert scores.miou() == 1.0 and scores.pixel_accuracy() == 1.0


def test_xml_annotation_takes_precedence_over_the_mask(aug_tree: Path) -> None:
    (aug_tree / "Annotations").mkdir()
    (aug_tree / "Annotations" / "2011_003066.xml").write_text(
        "<annotation><filename>2011_003066.jpg</filename>"
        "<object><name>person</name><part><name>head</name></part></object>"
        "<object><name>dog</name></object><object><name>person</name></object></annotation>"
    )
    np.testing.assert_array_equal(VOCDataset(aug_tree, "val").labels(0), one_hot(PERSON, DOG))


def test_class_names_from_classes_txt(aug_tree: Path, samples: Path) -> None:
    shutil.copy(samples / "extra" / "class_names.txt", aug_tree / "classes.txt")  # starts with background
    assert VOCDataset(aug_tree, "val").class_names == VOC_CLASSES
    (aug_tree / "classes.txt").write_text("ant\nbee\n")
    small = VOCDataset(aug_tree, "val")
    assert small.class_names == ["ant", "bee"]
    with pytest.raises(InputError, match="class index 5 but only 2 classes"):
        small.mask(0)
    assert VOCDataset(aug_tree, "val", class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]


def test_voc12_lists_and_cls_labels(samples: Path, lists: Path) -> None:
    splits = {name: VOCDataset(samples, lists / f"{name}.txt") for name in ("train", "train_aug", "val")}
    assert {name: len(data) for name, data in splits.items()} == {"train": 1464, "train_aug": 10582, "val": 1449}
    assert splits["train"].ids[0] == "2007_000032" and splits["val"].ids[0] == "2007_000033"
    assert set(splits["train"].ids) <= set(splits["train_aug"].ids)
    assert not set(splits["val"].ids) & set(splits["train_aug"].ids)

    vectors = read_cls_labels(lists / "cls_labels.npy")
    assert len(vectors) == 12031 and all(v.shape == (20,) and v.dtype == np.float32 for v in vectors.values())
    train = VOCDataset(samples, lists / "train.txt", labels_file=lists / "cls_labels.npy")
    np.testing.assert_array_equal(train.labels(0), one_hot(AEROPLANE, PERSON))
    matrix = train.label_matrix()
    assert matrix.shape == (1464, 20) and (matrix.sum(axis=1) >= 1).all()
    # The published labels agree with the classes in the sample masks.
    from_masks = VOCDataset(samples, samples / "train.txt")
    with_file = VOCDataset(samples, samples / "train.txt", labels_file=lists / "cls_labels.npy")
    np.testing.assert_array_equal(with_file.label_matrix(), from_masks.label_matrix())


def test_cls_labels_written_by_current_numpy_with_irn_integer_ids(tmp_path: Path) -> None:
    path = tmp_path / "cls_labels.npy"
    np.save(path, {"2008_000002": one_hot(19), np.int32(2007000032): one_hot(0, 14)}, allow_pickle=True)
    vectors = read_cls_labels(path)
    assert set(vectors) == {"2008_000002", "2007_000032"}
    np.testing.assert_array_equal(vectors["2007_000032"], one_hot(AEROPLANE, PERSON))


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cls_labels.npy"
    np.save(path, {"2007_000032": _RunsShell(marker)}, allow_pickle=True)
    with pytest.raises(InputError, match=r"refusing to unpickle (posix|nt)\.system") as error:
        read_cls_labels(path)
    assert str(path) in str(error.value)
    assert not marker.exists()
    np.save(path, {"2007_000032": eval}, allow_pickle=True)
    with pytest.raises(InputError, match=r"refusing to unpickle builtins\.eval"):
        read_cls_labels(path)


def test_bad_label_files(tmp_path: Path, samples: Path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, np.zeros((3, 20), dtype=np.float32))
    with pytest.raises(InputError, match="expected a pickled dict"):
        read_cls_labels(path)
    np.save(path, {"2007_000032": np.full(20, 0.5)}, allow_pickle=True)
    with pytest.raises(InputError, match="not a 1-D array of 0s and 1s"):
        read_cls_labels(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="not a readable cls_labels file"):
        read_cls_labels(path)
    with pytest.raises(InputError, match="file not found"):
        read_cls_labels(tmp_path / "missing.npy")
    np.save(path, {"2007_000033": one_hot(0)}, allow_pickle=True)
    data = VOCDataset(samples, samples / "train.txt", labels_file=path)
    with pytest.raises(InputError, match="no labels for image 2007_000032"):
        data.labels(data.ids.index("2007_000032"))


def test_bad_trees_name_the_file(aug_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown split"):
        VOCDataset(aug_tree, "trainval")
    with pytest.raises(InputError, match="VOC root folder not found"):
        VOCDataset(tmp_path / "nowhere", "val")
    (aug_tree / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="split list is empty"):
        VOCDataset(aug_tree, "empty")

    data = VOCDataset(aug_tree, "val")
    (aug_tree / "JPEGImages" / "2011_003066.jpg").unlink()
    with pytest.raises(InputError, match=r"2011_003066\.jpg: file not found"):
        data.image(0)

    (aug_tree / "SegmentationClass").mkdir()
    corrupt = aug_tree / "SegmentationClass" / "2011_003066.png"  # preferred over SegmentationClassAug
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="not a readable PNG") as error:
        data.mask(0)
    assert str(corrupt) in str(error.value)
    corrupt.unlink()
    (aug_tree / "SegmentationClassAug" / "2011_003066.png").unlink()
    assert not data.has_masks()
    with pytest.raises(InputError, match="mask not found"):
        data.mask(0)
    with pytest.raises(InputError, match=r"2011_003066\.xml: no labels"):
        data.labels(0)

    (aug_tree / "Annotations").mkdir()
    annotation = aug_tree / "Annotations" / "2011_003066.xml"
    annotation.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(InputError, match="unknown class 'unicorn'"):
        data.labels(0)
    annotation.write_text("<annotation><object>")
    with pytest.raises(InputError, match="not valid XML"):
        data.labels(0)


def test_miou_of_a_mask_against_itself_and_a_shifted_copy(samples: Path, tmp_path: Path) -> None:
    data = VOCDataset(samples, samples / "train.txt")
    gt = data.mask(data.ids.index("2007_000032"))
    itself = ConfusionMatrix(21)
    itself.update(np.where(gt == 255, 0, gt), gt)
    assert itself.miou() == 1.0
    assert np.isnan(itself.iou()[2:15]).all() and np.isnan(itself.iou()[16:]).all()

    shifted = np.zeros_like(gt)
    shifted[:, 40:] = gt[:, :-40]  # 40 px to the right, background comes in from the left
    shifted[shifted == 255] = 0  # a prediction has no void
    scores = ConfusionMatrix(21)
    scores.update(shifted, gt)
    scored = gt != 255
    expected = []
    for c in (0, 1, 15):
        inter = np.count_nonzero((gt == c) & (shifted == c) & scored)
        union = np.count_nonzero(((gt == c) | (shifted == c)) & scored)
        expected.append(inter / union)
    np.testing.assert_allclose(scores.iou()[[0, 1, 15]], expected)
    assert scores.miou() == pytest.approx(np.mean(expected))
    assert 0.2 < scores.miou() < 0.9  # the shift really costs something

    # Round trip through a palette PNG keeps the score.
    write_palette_png(tmp_path / "SegmentationClass" / "2007_000032.png", shifted)
    (tmp_path / "list.txt").write_text("2007_000032\n")
    reread = VOCDataset(tmp_path, tmp_path / "list.txt").mask(0)
    np.testing.assert_array_equal(reread, shifted)
