"""DAVIS folders and the classes table on the real DAVIS 2016 data, and their refusals of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wsvs.runtime.errors import InputError
from wsvs.training.davis import model_classes, per_class_target, read_classes_table, read_davis_folder


def test_classes_table_parses_the_real_table(shared_data: Path) -> None:
    table = read_classes_table(shared_data / "davis2016_classes.tsv")
    assert table["bear"].voc_classes == () and table["bear"].single_class
    assert table["bmx-bumps"].voc_classes == ("bicycle", "person") and not table["bmx-bumps"].single_class
    assert table["boat"].voc_classes == ("boat",) and table["boat"].split == "train"


def test_real_train_folder_reads_with_videos_and_masks(shared_data: Path) -> None:
    table_path = shared_data / "davis2016_classes.tsv"
    table = read_classes_table(table_path)
    train = read_davis_folder(shared_data / "davis2016_train", table, table_path)
    names = [seq.name for seq in train]
    assert names == sorted(names) and "bear" in names
    assert all(seq.frames.exists() and any(seq.masks.glob("*.png")) for seq in train)
    classes = model_classes(train)
    assert "person" in classes and "boat" in classes and "-" not in classes


def test_folder_without_annotations_is_refused(shared_data: Path, tmp_path: Path) -> None:
    table_path = shared_data / "davis2016_classes.tsv"
    (tmp_path / "videos").mkdir()
    with pytest.raises(InputError) as caught:
        read_davis_folder(tmp_path, read_classes_table(table_path), table_path)
    assert caught.value.path == tmp_path and "\n" not in str(caught.value)


def test_sequence_missing_from_the_table_is_refused(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "davis"
    shutil.copytree(shared_data / "davis2016_train" / "Annotations" / "480p" / "bear", root / "Annotations/480p/zebra")
    (root / "videos").mkdir()
    shutil.copy(shared_data / "davis2016_train" / "videos" / "bear.mp4", root / "videos" / "zebra.mp4")
    table_path = shared_data / "davis2016_classes.tsv"
    with pytest.raises(InputError, match="zebra") as caught:
        read_davis_folder(root, read_classes_table(table_path), table_path)
    assert caught.value.path == table_path


def test_table_with_a_bad_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classes.tsv"
    path.write_text("sequence\tclasses\nbear\tbear\n")
    with pytest.raises(InputError) as caught:
        read_classes_table(path)
    assert caught.value.path == path


def test_evaluation_rule_on_the_dev_split(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table_path = shared_data / "davis2016_classes.tsv"
    table = read_classes_table(table_path)
    classes = model_classes(read_davis_folder(shared_data / "davis2016_train", table, table_path))
    dev = {seq.name: seq for seq in read_davis_folder(shared_data / "davis2016_dev", table, table_path)}
    assert per_class_target(dev["blackswan"], classes) == "bird"
    assert per_class_target(dev["cows"], classes) is None  # no training sequence has cows
    assert capsys.readouterr().out.strip().splitlines() == [
        "cows: class cow is in no training sequence; left out of per-class scores"]
    train = {seq.name: seq for seq in read_davis_folder(shared_data / "davis2016_train", table, table_path)}
    assert per_class_target(train["bmx-bumps"], classes) is None  # two objects: foreground IoU only
    assert per_class_target(train["bear"], classes) is None  # not a VOC class: foreground IoU only
