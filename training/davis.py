"""DAVIS-layout folders and the classes table that names each sequence's VOC classes (issue 26, item 1).

A DAVIS folder holds sequences as frames ``JPEGImages/480p/<seq>/*.jpg`` or videos ``videos/<seq>.mp4``, and
their masks ``Annotations/480p/<seq>/*.png`` (0/255). The table is tab-separated with the columns sequence,
split, voc_classes (comma-separated, ``-`` for none), other_objects and single_class (yes/no).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from wsvs.runtime.errors import InputError

TABLE_COLUMNS = ("sequence", "split", "voc_classes", "other_objects", "single_class")


@dataclass(frozen=True)
class SequenceClasses:
    """One row of the classes table."""

    sequence: str
    split: str
    voc_classes: tuple[str, ...]
    single_class: bool


@dataclass(frozen=True)
class DavisSequence:
    """One sequence of a DAVIS folder: its frames (a folder of JPEGs, or a video), its masks and its classes."""

    name: str
    frames: Path
    masks: Path
    classes: SequenceClasses


def read_classes_table(path: Path) -> dict[str, SequenceClasses]:
    """The classes table by sequence name; a missing file, a wrong header or a bad row is an InputError."""
    if not path.is_file():
        raise InputError(path, "classes table not found")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or tuple(rows[0]) != TABLE_COLUMNS:
        raise InputError(path, f"header must be {' '.join(TABLE_COLUMNS)} (tab-separated)")
    table: dict[str, SequenceClasses] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(TABLE_COLUMNS) or row[4] not in ("yes", "no"):
            raise InputError(path, f"line {line}: expected 5 columns with single_class yes or no")
        voc = tuple(name for name in row[2].split(",") if name and name != "-")
        table[row[0]] = SequenceClasses(row[0], row[1], voc, row[4] == "yes")
    return table


def read_davis_folder(root: Path, table: dict[str, SequenceClasses], table_path: Path) -> list[DavisSequence]:
    """The sequences of a DAVIS folder, sorted by name. Refused: a folder without annotations, a sequence without
    frames, and a sequence missing from the classes table (named by table_path)."""
    annotations = root / "Annotations" / "480p"
    if not annotations.is_dir() or not any(annotations.iterdir()):
        raise InputError(root, "no Annotations/480p/<sequence>/ folders: a DAVIS folder needs its masks")
    sequences = []
    for masks in sorted(p for p in annotations.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = masks.name
        frames = root / "JPEGImages" / "480p" / name
        if not frames.is_dir():
            frames = root / "videos" / f"{name}.mp4"
        if not frames.exists():
            raise InputError(root, f"sequence {name} has masks but no JPEGImages/480p/{name}/ or videos/{name}.mp4")
        if name not in table:
            raise InputError(table_path, f"sequence {name} (from {root}) is missing from the classes table")
        sequences.append(DavisSequence(name, frames, masks, table[name]))
    return sequences


def model_classes(train: list[DavisSequence]) -> list[str]:
    """The model's classes: the VOC classes of the training sequences, sorted."""
    return sorted({name for seq in train for name in seq.classes.voc_classes})


def per_class_target(seq: DavisSequence, classes: list[str]) -> str | None:
    """The class a sequence's frames are scored under per class (its mask's foreground = that class, the rest
    background), or None when it only counts towards foreground IoU: a sequence with several objects or none of
    VOC's, or one whose class no training sequence has (said in one printed line, as it is left out)."""
    voc = seq.classes.voc_classes
    if not seq.classes.single_class or len(voc) != 1:
        return None
    if voc[0] not in classes:
        print(f"{seq.name}: class {voc[0]} is in no training sequence; left out of per-class scores")
        return None
    return voc[0]
