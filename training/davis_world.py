"""The real-data world of `wsvs train --preset davis`: DAVIS-layout sequences laid out as the pipeline's inputs.

From a training folder, an evaluation folder and the classes table it writes, at ``long_side`` pixels:

- ``images/``: a VOC-layout image set. ``train``: every ``image_step``-th frame of each training sequence with
  its image-level labels (the sequence's VOC classes; none where its mask is empty or it has no VOC class).
  ``val``: every ``eval_step``-th frame of each evaluation sequence scored per class (davis.per_class_target),
  its mask's foreground as that class and the rest background.
- ``web/``: each training sequence as a web video (H.264, ``fps``, an I-frame every ``gop`` frames) with a
  thumbnail, listed under each of its VOC classes (``listing.json``, what the loopback crawl serves).
- ``davis/Annotations/480p/<seq>/``: the training sequences' masks at the served size, the ground truth of the
  video masks (J) and of the decoder's upper bound.
- ``foreground/``: the evaluation sequences scored by foreground IoU only, in DAVIS layout.

``world.json`` is written last and marks the world complete.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from wsvs.runtime.config import dump_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import (
    atomic_path,
    is_hidden,
    read_json,
    write_binary_png,
    write_image_rgb,
    write_json,
    write_palette_png,
)
from wsvs.runtime.preprocess import resize_rgb
from wsvs.runtime.video_reader import VideoReader

from .davis import DavisSequence, model_classes, per_class_target, read_classes_table, read_davis_folder
from .demo_world.layouts import encode_h264, write_text

WORLD_FILE = "world.json"


@dataclass
class DavisWorldConfig:
    """Where the DAVIS-layout folders are and how much of them the world keeps."""

    train: Path | None = None  # DAVIS-layout folder of the training sequences
    eval: Path | None = None  # DAVIS-layout folder of the evaluation sequences
    classes_table: Path | None = None  # davis2016_classes.tsv's format
    long_side: int = 320  # frames, masks and web videos are downscaled to this longer side
    image_step: int = 5  # every n-th frame of a training sequence joins the image set
    eval_step: int = 2  # every n-th frame of an evaluation sequence is scored
    fps: int = 24  # DAVIS's frame rate: the web videos play at it
    gop: int = 12  # frames between the web videos' I-frames (the crawl's key-frames)


def sequence_frames(seq: DavisSequence, long_side: int) -> list[np.ndarray]:
    """Every frame of a sequence (JPEG folder or video), RGB, downscaled to ``long_side``."""
    return [resize_rgb(f, _size(f.shape, long_side)) for f in VideoReader(seq.frames)]


def sequence_masks(seq: DavisSequence, shape: tuple[int, int]) -> list[np.ndarray]:
    """Every mask of a sequence as bool (H, W) at ``shape`` (DAVIS masks are 0/255, some stored as L + alpha)."""
    masks = []
    for path in sorted(p for p in seq.masks.glob("*.png") if not is_hidden(p)):
        with Image.open(path) as image:
            mask = np.array(image.convert("L")) > 127
        masks.append(cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0)
    return masks


def _size(shape: tuple[int, ...], long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(shape[:2]))
    return max(2, round(shape[0] * scale / 2) * 2), max(2, round(shape[1] * scale / 2) * 2)  # even, for yuv420p


def _frames_and_masks(seq: DavisSequence, long_side: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    frames = sequence_frames(seq, long_side)
    masks = sequence_masks(seq, frames[0].shape[:2]) if frames else []
    if not frames or len(masks) != len(frames):
        raise InputError(seq.frames, f"has {len(frames)} frames but {seq.masks} holds {len(masks)} masks")
    return frames, masks


def _labels_xml(image_id: str, classes: tuple[str, ...]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    for name in classes:
        ET.SubElement(ET.SubElement(root, "object"), "name").text = name
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def build_davis_world(config: DavisWorldConfig, out: Path) -> Path:
    """Write the world into ``out`` (see the module docstring) and return it; a complete world is reused."""
    if config.train is None or config.eval is None or config.classes_table is None:
        raise InputError(None, "the davis preset needs --data TRAIN_DIR, --eval-data EVAL_DIR and --classes-table TSV")
    settings = dump_config(config)
    if (out / WORLD_FILE).is_file() and read_json(out / WORLD_FILE).get("config") == settings:
        return out
    table = read_classes_table(config.classes_table)
    train = read_davis_folder(config.train, table, config.classes_table)
    evaluation = read_davis_folder(config.eval, table, config.classes_table)
    classes = model_classes(train)
    if not classes:
        raise InputError(config.classes_table, f"no sequence of {config.train} has a VOC class to learn")
    images = out / "images"
    write_text(images / "classes.txt", "\n".join(classes) + "\n")
    listing: dict[str, list[dict]] = {name: [] for name in classes}
    train_ids, val_ids = [], []
    for seq in train:
        frames, masks = _frames_and_masks(seq, config.long_side)
        for t in range(0, len(frames), config.image_step):
            image_id = f"{seq.name}_{t:05d}"
            write_image_rgb(images / "JPEGImages" / f"{image_id}.jpg", frames[t])
            labels = seq.classes.voc_classes if masks[t].any() else ()
            write_text(images / "Annotations" / f"{image_id}.xml", _labels_xml(image_id, labels))
            train_ids.append(image_id)
        for t, mask in enumerate(masks):
            write_binary_png(out / "davis" / "Annotations" / "480p" / seq.name / f"{t:05d}.png", mask)
        if seq.classes.voc_classes:
            video = out / "web" / "videos" / f"{seq.name}.mp4"
            write_image_rgb(video.with_suffix(".jpg"), frames[len(frames) // 2])
            with atomic_path(video) as tmp:
                encode_h264(tmp, np.stack(frames), config.fps, config.gop)
        for name in seq.classes.voc_classes:  # one page per class: clip ids must differ between classes
            listing[name].append({"id": f"{seq.name}-{name}", "sequence": seq.name, "title": f"{seq.name} ({name})",
                                  "video": f"videos/{seq.name}.mp4", "thumbnail": f"videos/{seq.name}.jpg",
                                  "relevant": True, "duration": len(frames) / config.fps})
    foreground = []
    for seq in evaluation:
        target = per_class_target(seq, classes)
        frames, masks = _frames_and_masks(seq, config.long_side)
        for t in range(0, len(frames), config.eval_step):
            image_id = f"{seq.name}_{t:05d}"
            if target is None:
                root = out / "foreground"
                write_image_rgb(root / "JPEGImages" / "480p" / seq.name / f"{t:05d}.jpg", frames[t])
                write_binary_png(root / "Annotations" / "480p" / seq.name / f"{t:05d}.png", masks[t])
                continue
            write_image_rgb(images / "JPEGImages" / f"{image_id}.jpg", frames[t])
            write_palette_png(images / "SegmentationClass" / f"{image_id}.png",
                              masks[t].astype(np.uint8) * (1 + classes.index(target)))
            val_ids.append(image_id)
        if target is None:
            foreground.append(seq.name)
    if not val_ids:
        raise InputError(config.eval, "no evaluation sequence is single-class with a class of the training sequences")
    for split, ids in (("train", train_ids), ("val", val_ids)):
        write_text(images / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    write_json(out / "web" / "listing.json", listing)
    write_json(out / WORLD_FILE, {"config": settings, "classes": classes, "train_images": len(train_ids),
                                  "val_images": len(val_ids), "foreground_sequences": foreground})
    return out


def davis_subset(source: Path, names: tuple[str, ...], out: Path) -> Path:
    """A DAVIS-layout folder at ``out`` holding the sequences ``names`` of ``source`` as symbolic links: a split
    of one folder's sequences (a tuning split of the training sequences, say) without copying them."""
    for name in names:
        masks = out / "Annotations" / "480p" / name
        masks.parent.mkdir(parents=True, exist_ok=True)
        masks.symlink_to((source / "Annotations" / "480p" / name).resolve())
        for frames in (source / "videos" / f"{name}.mp4", source / "JPEGImages" / "480p" / name):
            if frames.exists():
                target = out / frames.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(frames.resolve())
    return out


def clip_start_frame(start_s: float, fps: float) -> int:
    """The source frame a crawled clip starts at: the first frame at or after ``start_s`` seconds."""
    return max(0, math.ceil(start_s * fps - 1e-6))


def write_clip_truth(world: Path, crawl_dir: Path, masks_dir: Path, out: Path) -> int:
    """The DAVIS masks of every frame of every clip segment-videos segmented, in its layout
    (``<out>/<clip>/<frame>.png`` and ``<out>/<clip>.json``, one interval over the whole clip): the ground truth
    of the video masks' J and the masks of the decoder's upper bound. Returns the frame count."""
    from .crawl import Manifest
    from .train_decoder import video_records

    fps = read_json(world / WORLD_FILE)["config"]["fps"]
    sequences = {entry["id"]: entry["sequence"] for entries in read_json(world / "web" / "listing.json").values()
                 for entry in entries}
    crawled = Manifest(crawl_dir / "manifest.jsonl").records.values()
    starts = {clip["path"]: (record["id"], clip["start"]) for record in crawled if record.get("state") == "done"
              for clip in record["clips"]}
    frames = 0
    for record in video_records(masks_dir):
        page, start_s = starts[f"clips/{record['video']}"]
        truth = world / "davis" / "Annotations" / "480p" / sequences[page]
        first = clip_start_frame(start_s, fps)
        for j in range(record["frames"]):
            source = truth / f"{first + j:05d}.png"
            if not source.is_file():
                raise InputError(source, f"clip {record['video']} frame {j} has no source mask")
            target = out / record["id"] / f"{j:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
        frames += record["frames"]
        write_json(out / f"{record['id']}.json", {**record, "sequence": sequences[page], "first_frame": first,
                                                  "intervals": [[0, record["frames"]]],
                                                  "masked_frames": record["frames"]})
    return frames
