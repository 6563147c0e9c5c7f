"""The synthetic benchmark world: a small, seeded stand-in for PASCAL VOC plus web-crawled videos.

Every object is a large BODY whose shape family, texture and colours are shared by all classes, with a
small PART (about 8-11 % of the object) whose colour and pattern identify the class. A classifier
trained on image-level labels therefore looks at the part and misses much of the body, which is the
failure the paper fixes with videos. Bodies stand roughly upright with the part near their top, as most
VOC objects stand: that pose is the class-agnostic shape prior the decoder learns from video masks.
Part-less bodies appear as unlabelled distractors, so the body alone does not mean "object".

Written under ``out``:

- ``images/``: VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette indices,
  0 background, 1 + class position, 255 void along object boundaries), ``Annotations/<id>.xml``,
  ``ImageSets/Segmentation/{train,val}.txt`` and ``classes.txt`` (no background line).
- ``web/<class>/<video_id>.mp4`` (H.264, fixed GOP) with ``<video_id>.jpg`` thumbnails, and
  ``web/listing.json``: the search results per class, ``{class: [{id, title, video, thumbnail,
  relevant, duration}]}`` with paths relative to ``web/``.
- ``davis/``: DAVIS layout of the same videos, ``JPEGImages/480p/<video_id>/%05d.jpg`` and
  ``Annotations/480p/<video_id>/%05d.png`` (0/255 mask of the queried class's object; all zero in
  misleading videos and in the irrelevant stretches). The folder is named 480p by DAVIS convention;
  the frames are ``video_size``.
- ``world.json``: config, class names and counts; ``"complete": true`` is written last.

Every image and video draws from its own random stream (seed, kind, index), so the files do not depend
on the number of worker processes, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import multiprocessing
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import (
    VOID,
    add_h264_stream,
    atomic_path,
    read_json,
    write_binary_png,
    write_image_rgb,
    write_json,
    write_palette_png,
)

# Random streams: np.random.default_rng([seed, stream, index]).
_IMAGE_PLAN, _IMAGE_RENDER, _VIDEO_PLAN, _VIDEO_RENDER = range(4)
_PATTERNS = ("hstripes", "vstripes", "checker", "dots", "diagonal", "rings")
_TITLES = ("{} close-up", "funny {} clip", "{} in the wild", "my {} at home", "{} compilation", "{} live")
_VOID_BAND_PX = 3  # VOC marks a band about this wide along object boundaries as void
_PAN_MARGIN = 24  # background canvas margin (px) the camera pans over


@dataclass
class WorldConfig:
    """What the world contains; the defaults are the demo world (well under a minute on 2 cores)."""

    seed: int = 0
    classes: tuple[str, ...] = ("ant", "bee", "cat", "dog", "eel", "fox")
    image_size: int = 128
    train_images: int = 600
    val_images: int = 150
    multi_class_fraction: float = 0.25  # images with 2 or 3 classes
    distractor_fraction: float = 0.4  # images with part-less bodies (unlabelled)
    occlusion_fraction: float = 0.3  # images with an occluder in front of an object
    videos_per_class: int = 6
    misleading_per_class: int = 2  # videos whose thumbnail shows another class or nothing
    video_frames: tuple[int, int] = (48, 64)  # frame count range, inclusive
    video_size: tuple[int, int] = (160, 120)  # width, height
    fps: int = 10
    gop: int = 12  # frames between I-frames
    # The look of the world; other values make other worlds for checking that results do not hang on one design.
    part_fraction: tuple[float, float] = (0.08, 0.11)  # part area / object area, the range drawn from
    tilt: float = 0.5  # rad either side of upright: bodies stand up, as most VOC objects do (the decoder's prior)
    aspect: tuple[float, float] = (0.55, 0.8)  # body minor / major axis, the range drawn from
    clutter: tuple[int, int] = (4, 10)  # clutter shapes per background, inclusive range
    pan: float = 1.0  # camera pan over the video scene, as a share of the widest pan the scene margin allows
    shared_colour_pairs: int = 0  # pairs of classes (0 and 1, 2 and 3, ...) whose parts differ only in pattern

    def __post_init__(self) -> None:
        names = self.classes
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"classes: need 2 or more distinct names, got {list(names)}")
        for name in names:
            if not name or not all(c.islower() or c.isdigit() for c in name) or not name[0].isalpha():
                raise ValueError(f"classes: {name!r} is not a lowercase filesystem-safe name")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.image_size < 64:
            raise ValueError(f"image_size must be >= 64, got {self.image_size}")
        if self.train_images < 1 or self.val_images < 1:
            raise ValueError("train_images and val_images must be >= 1")
        if not 0 <= self.misleading_per_class <= self.videos_per_class:
            raise ValueError("misleading_per_class must be between 0 and videos_per_class")
        low, high = self.video_frames
        if not 12 <= low <= high:
            raise ValueError(f"video_frames must be (min, max), 12 <= min <= max, not {self.video_frames}")
        width, height = self.video_size
        if width < 64 or height < 64 or width % 2 or height % 2:
            raise ValueError(f"video_size must be even and >= 64, got {self.video_size}")
        if self.fps < 1 or self.gop < 1:
            raise ValueError("fps and gop must be >= 1")
        if not 0.02 <= self.part_fraction[0] <= self.part_fraction[1] <= 0.3:
            raise ValueError(f"part_fraction must be (min, max) within 0.02 .. 0.3, not {self.part_fraction}")
        if not 0 <= self.tilt <= math.pi:
            raise ValueError(f"tilt must be within 0 .. pi, not {self.tilt}")
        if not 0.2 <= self.aspect[0] <= self.aspect[1] <= 1:
            raise ValueError(f"aspect must be (min, max) within 0.2 .. 1, not {self.aspect}")
        if not 0 <= self.clutter[0] <= self.clutter[1]:
            raise ValueError(f"clutter must be (min, max) with 0 <= min <= max, not {self.clutter}")
        if not 0 <= self.pan <= 1:
            raise ValueError(f"pan must be within 0 .. 1, not {self.pan}")
        if not 0 <= 2 * self.shared_colour_pairs <= len(names):
            raise ValueError(f"shared_colour_pairs: {self.shared_colour_pairs} pairs need "
                             f"{2 * self.shared_colour_pairs} classes, the world has {len(names)}")


@dataclass(frozen=True)
class ImagePlan:
    """What one image shows: class indices (0-based, distinct, drawing order) and its extras."""

    index: int
    image_id: str
    split: str
    classes: tuple[int, ...]
    distractors: int
    occluded: bool


@dataclass(frozen=True)
class VideoPlan:
    """One search result: the queried class, and which object (if any) the video really shows."""

    index: int
    video_id: str
    query_class: int
    shown_class: int | None  # the object in the video: the query class, another class, or none
    n_frames: int
    object_frames: tuple[int, int]  # [start, stop): the frames of the main scene (object present)
    title: str

    @property
    def relevant(self) -> bool:
        return self.shown_class == self.query_class


@dataclass
class ImageSample:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    labels: np.ndarray  # (S, S) uint8: 0 background, 1 + class, 255 void band
    parts: np.ndarray  # (S, S) bool: visible part pixels
    objects: list[tuple[int, tuple[int, int, int, int]]]  # (class index, visible box x0, y0, x1, y1)


@dataclass
class VideoSample:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, H, W) bool: the queried class's object
    thumbnail: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass(frozen=True)
class _Shape:
    """A body (perturbed ellipse) with an optional round part sitting on its boundary, in pixels."""

    cx: float
    cy: float
    a: float  # major semi-axis
    aspect: float  # minor / major
    angle: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of the radius for k = 2, 3, ...
    part_angle: float | None  # where on the boundary the part sits (None: a part-less body)
    part_fraction: float  # part area / object area


def class_colour(index: int, n_classes: int, shared_colour_pairs: int = 0) -> np.ndarray:
    """The saturated RGB colour of a class's part, (3,) float32 in 0..255; hues evenly spaced. The second
    class of each of the first ``shared_colour_pairs`` pairs takes the first one's colour."""
    if index < 2 * shared_colour_pairs:
        index -= index % 2
    return _hsv(index / n_classes, 0.9, 0.95)


def class_pattern(index: int) -> str:
    """The name of a class's part pattern."""
    return _PATTERNS[index % len(_PATTERNS)]


def plan_images(config: WorldConfig) -> list[ImagePlan]:
    """Image ids, splits and contents; each class is the primary class of an equal share of each split."""
    rng = np.random.default_rng([config.seed, _IMAGE_PLAN])
    k = len(config.classes)
    plans = []
    for split, count in (("train", config.train_images), ("val", config.val_images)):
        primaries = rng.permutation(np.resize(np.arange(k), count))
        for primary in primaries:
            classes = [int(primary)]
            if rng.random() < config.multi_class_fraction:
                extra = 1 if k == 2 or rng.random() < 0.8 else 2
                others = [c for c in range(k) if c != primary]
                classes += [int(c) for c in rng.choice(others, size=extra, replace=False)]
            distractors = (1 + int(rng.random() < 0.3)) if rng.random() < config.distractor_fraction else 0
            index = len(plans)
            plans.append(
                ImagePlan(
                    index=index,
                    image_id=f"img_{index:05d}",
                    split=split,
                    classes=tuple(int(c) for c in rng.permutation(classes)),
                    distractors=distractors,
                    occluded=bool(rng.random() < config.occlusion_fraction),
                )
            )
    return plans


def plan_videos(config: WorldConfig) -> list[VideoPlan]:
    """The search results of every class; misleading ones show another class (or nothing) throughout."""
    rng = np.random.default_rng([config.seed, _VIDEO_PLAN])
    k = len(config.classes)
    plans = []
    for query, name in enumerate(config.classes):
        misleading = set(rng.choice(config.videos_per_class, size=config.misleading_per_class, replace=False))
        for number in range(config.videos_per_class):
            shown: int | None = query
            if number in misleading:
                shown = int(rng.choice([c for c in range(k) if c != query])) if rng.random() < 0.5 else None
            n_frames = int(rng.integers(config.video_frames[0], config.video_frames[1] + 1))
            start = round(n_frames * rng.uniform(0.12, 0.18))
            stop = n_frames - round(n_frames * rng.uniform(0.12, 0.18))
            plans.append(
                VideoPlan(
                    index=len(plans),
                    video_id=f"{name}_{number:03d}",
                    query_class=query,
                    shown_class=shown,
                    n_frames=n_frames,
                    object_frames=(start, stop),
                    title=str(rng.choice(_TITLES)).format(name) + f" #{number + 1}",
                )
            )
    return plans


def render_image(config: WorldConfig, plan: ImagePlan) -> ImageSample:
    """One image with its label map: background, distractor bodies, the objects, then an occluder."""
    rng = np.random.default_rng([config.seed, _IMAGE_RENDER, plan.index])
    size = config.image_size
    n_classes = len(config.classes)
    canvas = _background(rng, size, size, config.clutter)
    single = len(plan.classes) == 1
    scale_range = (0.16, 0.28) if single else (0.12, 0.2)

    shapes: list[_Shape] = []
    taken = np.zeros((size, size), dtype=bool)
    for _ in plan.classes:
        shape, body, part = _place(rng, config, size, size, scale_range, taken, with_part=True)
        shapes.append(shape)
        taken |= body | part
    for _ in range(plan.distractors):
        distractor, _, _ = _place(rng, config, size, size, scale_range, taken, with_part=False)
        body, _ = _draw_object(canvas, distractor, _body_texture(rng), None)
        taken |= body

    labels = np.zeros((size, size), dtype=np.uint8)
    parts = np.zeros((size, size), dtype=bool)
    for class_index, shape in zip(plan.classes, shapes):
        part_class = (class_index, n_classes, config.shared_colour_pairs)
        body, part = _draw_object(canvas, shape, _body_texture(rng), part_class)
        labels[body | part] = 1 + class_index
        parts[body | part] = False  # a later object hides an earlier one's part
        parts |= part
    if plan.occluded:
        hidden = _occluder_mask(rng, shapes[int(rng.integers(len(shapes)))], size, size)
        occluder = _background(rng, size, size, config.clutter)
        # Occlusion hides at most half of any object and of any part, so every label stays learnable.
        if all(_hidden_fraction(labels == 1 + c, hidden) <= 0.5 for c in plan.classes) and all(
            _hidden_fraction(parts & (labels == 1 + c), hidden) <= 0.5 for c in plan.classes
        ):
            canvas[hidden] = occluder[hidden]
            labels[hidden] = 0
            parts &= ~hidden

    objects = []
    for class_index in plan.classes:
        ys, xs = np.nonzero(labels == 1 + class_index)
        objects.append((class_index, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    labels[_boundary_band(labels)] = VOID
    return ImageSample(image=_finish(rng, canvas), labels=labels, parts=parts, objects=objects)


def render_video(config: WorldConfig, plan: VideoPlan) -> VideoSample:
    """A web video: an intro scene, the main scene (panning camera, a moving distractor body and the
    shown object moving, scaling and deforming), and an outro back in the intro scene."""
    rng = np.random.default_rng([config.seed, _VIDEO_RENDER, plan.index])
    width, height = config.video_size
    n = plan.n_frames
    start, stop = plan.object_frames
    margin = _PAN_MARGIN
    main_scene = _background(rng, height + 2 * margin, width + 2 * margin, config.clutter)
    other_scene = _background(rng, height + 2 * margin, width + 2 * margin, config.clutter)
    pan = config.pan * rng.uniform(-margin + 4, margin - 4, size=(2, 2))  # camera offset at the first / last frame

    def camera(t: int) -> np.ndarray:  # top-left corner of the view in the scene; a hand-held wobble on x
        offset = margin + pan[0] + t / max(n - 1, 1) * (pan[1] - pan[0])
        return offset + np.float32([1.5 * math.sin(0.7 * t), 0])

    # The object roams one side of the frame, a smaller (farther) part-less body the other side.
    left, right = (0.0, 0.0, 0.55 * width, height), (0.45 * width, 0.0, width, height)
    object_region, distractor_region = (left, right) if rng.random() < 0.5 else (right, left)
    distractor = _moving_body(rng, config, distractor_region, rng.uniform(0.08, 0.11) * width, n,
                              with_part=False)
    distractor_texture = _body_texture(rng)
    shown = plan.shown_class
    target = _moving_body(rng, config, object_region, rng.uniform(0.11, 0.15) * width, n, with_part=True)
    target_texture = _body_texture(rng)

    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    masks = np.zeros((n, height, width), dtype=bool)
    for t in range(n):
        ox, oy = camera(t)
        in_main = start <= t < stop
        scene = main_scene if in_main else other_scene
        shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
        canvas = cv2.warpAffine(scene, shift, (width, height), flags=cv2.INTER_LINEAR)
        if in_main:
            _draw_object(canvas, distractor(t), distractor_texture, None)
            if shown is not None:
                part_class = (shown, len(config.classes), config.shared_colour_pairs)
                body, part = _draw_object(canvas, target(t), target_texture, part_class)
                masks[t] = (body | part) if plan.relevant else False
        frames[t] = _finish(rng, canvas)
    return VideoSample(frames=frames, masks=masks, thumbnail=frames[(start + stop) // 2])


def generate_world(config: WorldConfig, out: Path, workers: int | None = None) -> Path:
    """Write the world under ``out`` and return ``out``; a complete world of the same config is kept as is.

    ``workers`` processes render images and videos (default: all cores); the output does not depend on it.
    An interrupted run resumes: finished images and videos are skipped. A folder holding a world of a
    different config is an InputError (nothing is overwritten).
    """
    out = Path(out)
    manifest = out / "world.json"
    config_dict = dump_config(config)
    if manifest.is_file():
        previous = read_json(manifest)
        if previous.get("config") != config_dict:
            raise InputError(manifest, "holds a world of another config; choose another --out or delete it")
        if previous.get("complete"):
            return out
    write_json(manifest, {"config": config_dict, "complete": False})

    image_plans = plan_images(config)
    video_plans = plan_videos(config)
    # Videos first: they are the long tasks, so the pool ends with short ones and finishes together.
    pending = [p for p in video_plans if not _video_path(out, config, p).is_file()]
    pending += [p for p in image_plans if not _annotation_path(out, p).is_file()]
    write_item = partial(_write_item, config=config, out=out)
    workers = min(workers or os.cpu_count() or 1, max(len(pending), 1))
    total = len(image_plans) + len(video_plans)
    with tqdm(total=total, initial=total - len(pending), desc="world", unit="item") as progress:
        if workers == 1:
            for plan in pending:
                write_item(plan)
                progress.update()
        else:
            # spawn: no inherited threads or locks (tqdm's monitor, OpenCV's pool) in the workers.
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
                for _ in pool.imap_unordered(write_item, pending):
                    progress.update()

    images = out / "images"
    _write_text(images / "classes.txt", "".join(f"{name}\n" for name in config.classes))
    for split in ("train", "val"):
        ids = "".join(f"{p.image_id}\n" for p in image_plans if p.split == split)
        _write_text(images / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    write_json(out / "web" / "listing.json", _listing(config, video_plans))
    counts = {
        "train_images": config.train_images,
        "val_images": config.val_images,
        "multi_class_images": sum(len(p.classes) > 1 for p in image_plans),
        "images_per_class": {
            name: sum(c in p.classes for p in image_plans) for c, name in enumerate(config.classes)
        },
        "videos": len(video_plans),
        "relevant_videos": sum(p.relevant for p in video_plans),
        "video_frames": sum(p.n_frames for p in video_plans),
    }
    summary = {"config": config_dict, "classes": list(config.classes), "counts": counts, "complete": True}
    write_json(manifest, summary)
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "world",
        help="generate the synthetic benchmark world (images, web videos, ground truth)",
        description="Generate the seeded synthetic world: VOC-layout images whose classes differ only by a "
        "small part on a shared body, web videos with thumbnails and a search listing, and DAVIS-layout "
        "ground truth. A complete world of the same config in --out is kept; an interrupted one resumes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="YAML of WorldConfig keys (default: the demo world)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument("--workers", type=int, help="worker processes (default: all cores); same output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(WorldConfig, args.config, seed=args.seed)
    except ValueError as exc:  # a bad override: the file itself was checked by load_config
        raise InputError(args.config, str(exc)) from None
    out = generate_world(config, args.out, workers=args.workers)
    print(f"world: {out} ({len(config.classes)} classes)")
    return 0


# ---------------------------------------------------------------------------------------------------
# Writing


def _write_item(plan: ImagePlan | VideoPlan, config: WorldConfig, out: Path) -> None:
    if isinstance(plan, ImagePlan):
        _write_image(config, plan, out)
    else:
        _write_video(config, plan, out)


def _write_image(config: WorldConfig, plan: ImagePlan, out: Path) -> None:
    """The JPEG, the palette mask, then the XML: the XML's presence marks the image done."""
    sample = render_image(config, plan)
    images = out / "images"
    write_image_rgb(images / "JPEGImages" / f"{plan.image_id}.jpg", sample.image)
    write_palette_png(images / "SegmentationClass" / f"{plan.image_id}.png", sample.labels)
    _write_text(_annotation_path(out, plan), _voc_xml(config, plan.image_id, sample.objects))


def _annotation_path(out: Path, plan: ImagePlan) -> Path:
    return out / "images" / "Annotations" / f"{plan.image_id}.xml"


def _voc_xml(config: WorldConfig, image_id: str, objects: list[tuple[int, tuple[int, int, int, int]]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "wsvs-world"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", config.image_size), ("height", config.image_size), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for class_index, (x0, y0, x1, y1) in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = config.classes[class_index]
        ET.SubElement(node, "pose").text = "Unspecified"
        truncated = min(x0, y0) == 0 or max(x1, y1) == config.image_size - 1
        ET.SubElement(node, "truncated").text = str(int(truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value + 1)  # VOC boxes are 1-based
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _video_path(out: Path, config: WorldConfig, plan: VideoPlan) -> Path:
    return out / "web" / config.classes[plan.query_class] / f"{plan.video_id}.mp4"


def _write_video(config: WorldConfig, plan: VideoPlan, out: Path) -> None:
    """DAVIS frames and masks, the thumbnail, then the mp4: the mp4's presence marks the video done."""
    sample = render_video(config, plan)
    davis = out / "davis"
    for t in range(plan.n_frames):
        write_image_rgb(davis / "JPEGImages" / "480p" / plan.video_id / f"{t:05d}.jpg", sample.frames[t])
        write_binary_png(davis / "Annotations" / "480p" / plan.video_id / f"{t:05d}.png", sample.masks[t])
    mp4 = _video_path(out, config, plan)
    write_image_rgb(mp4.with_suffix(".jpg"), sample.thumbnail)
    with atomic_path(mp4) as tmp:
        _encode_h264(tmp, sample.frames, config.fps, config.gop)


def _encode_h264(path: Path, frames: np.ndarray, fps: int, gop: int) -> None:
    """Reproducible H.264 yuv420p with an I-frame exactly every ``gop`` frames (no scene-cut I-frames)."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = add_h264_stream(container, fps, frames.shape[2], frames.shape[1], crf=18, preset="fast",
                                 x264_params=f"keyint={gop}:min-keyint={gop}:scenecut=0")
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def _listing(config: WorldConfig, plans: list[VideoPlan]) -> dict[str, list[dict]]:
    listing: dict[str, list[dict]] = {name: [] for name in config.classes}
    for plan in plans:
        name = config.classes[plan.query_class]
        listing[name].append(
            {
                "id": plan.video_id,
                "title": plan.title,
                "video": f"{name}/{plan.video_id}.mp4",
                "thumbnail": f"{name}/{plan.video_id}.jpg",
                "relevant": plan.relevant,
                "duration": plan.n_frames / config.fps,
            }
        )
    return listing


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------------------------------------
# Drawing


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.float32(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth random field in 0..1 with about ``cells`` blobs across the larger side."""
    step = max(height, width) / cells
    low = rng.random((int(height / step) + 2, int(width / step) + 2)).astype(np.float32)
    field = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field - field.min()) / max(float(np.ptp(field)), 1e-6)


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly greens, blues and greys; one in five in the body's earthy hues: colour alone is not enough."""
    hue = rng.uniform(0.04, 0.13) if rng.random() < 0.2 else rng.uniform(0.2, 0.65)
    return _hsv(hue, rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.85))


def _background(rng: np.random.Generator, height: int, width: int, clutter: tuple[int, int]) -> np.ndarray:
    """Cluttered textured background, (H, W, 3) float32 in 0..255, with a number of clutter shapes drawn
    from the inclusive range ``clutter``."""
    colours = [_background_colour(rng) for _ in range(3)]
    mix = _smooth_noise(rng, height, width, 4)[..., None]
    canvas = colours[0] * mix + colours[1] * (1 - mix)
    blotches = _smooth_noise(rng, height, width, 7) > 0.6
    canvas[blotches] = canvas[blotches] * 0.4 + colours[2] * 0.6
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):  # clutter: rectangles, ellipses and thick lines
        colour = tuple(float(c) for c in np.clip(_background_colour(rng) * rng.uniform(0.7, 1.3), 0, 255))
        x, y = int(rng.integers(width)), int(rng.integers(height))
        extent = int(rng.integers(4, max(height, width) // 6))
        kind = rng.integers(3)
        if kind == 0:
            box = ((x, y), (extent * 2.0, extent * rng.uniform(0.3, 1.0)), rng.uniform(0, 180))
            cv2.fillPoly(canvas, [cv2.boxPoints(box).astype(np.int32)], colour)
        elif kind == 1:
            axes = (extent, int(extent * rng.uniform(0.3, 1.0)))
            cv2.ellipse(canvas, (x, y), axes, rng.uniform(0, 180), 0, 360, colour, -1)
        else:
            end = (x + int(rng.integers(-3, 4) * extent), y + int(rng.integers(-3, 4) * extent))
            cv2.line(canvas, (x, y), end, colour, int(rng.integers(2, 5)))
    grain = _smooth_noise(rng, height, width, max(height, width) // 3) - 0.5
    return np.clip(canvas + 24 * grain[..., None], 0, 255).astype(np.float32)


def _body_texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A body's blotchy texture over normalised body coordinates [-1.6, 1.6]^2; the same family for
    every class: earthy colour, darker (or lighter) blotches and fine grain."""
    base = _hsv(rng.uniform(0.04, 0.13), rng.uniform(0.25, 0.55), rng.uniform(0.4, 0.75))
    spots = base * rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.2, 1.35)])
    weight = np.clip((_smooth_noise(rng, size, size, 6) - 0.5) * 5 + 0.5, 0, 1)[..., None]
    grain = _smooth_noise(rng, size, size, size // 2)[..., None] - 0.5
    return np.clip(base * (1 - weight) + spots * weight + 30 * grain, 0, 255).astype(np.float32)


def _part_radius(shape: _Shape) -> float:
    """Disc radius giving the target part fraction; the disc centre sits 0.45 r outside the boundary,
    so about 22 % of the disc overlaps the body."""
    f = shape.part_fraction
    return math.sqrt(f * shape.a * shape.a * shape.aspect / (1 - 0.777 * f))


def _shape_masks(shape: _Shape, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray, ...]:
    """The window of the image the shape can cover, and within it: the body and part masks and the local
    coordinates used for texturing (body-normalised u, v and rho; part-centred pu, pv in pixels)."""
    a, b = shape.a, shape.a * shape.aspect
    reach = a * (1 + sum(amp for amp, _ in shape.harmonics)) + 2
    if shape.part_angle is not None:
        reach += 1.5 * _part_radius(shape)
    x0, x1 = max(int(shape.cx - reach), 0), min(int(shape.cx + reach) + 2, width)
    y0, y1 = max(int(shape.cy - reach), 0), min(int(shape.cy + reach) + 2, height)
    window = (slice(y0, max(y1, y0)), slice(x0, max(x1, x0)))
    dx = np.arange(x0, max(x1, x0), dtype=np.float32)[None, :] - np.float32(shape.cx)
    dy = np.arange(y0, max(y1, y0), dtype=np.float32)[:, None] - np.float32(shape.cy)
    cos, sin = np.float32(math.cos(shape.angle)), np.float32(math.sin(shape.angle))
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    theta = np.arctan2(v / b, u / a)
    rho = np.hypot(u / a, v / b)

    def radius(angle: np.ndarray | float) -> np.ndarray | float:
        return 1 + sum(amp * np.cos(k * angle + phase) for k, (amp, phase) in enumerate(shape.harmonics, 2))

    body = rho < radius(theta)
    if shape.part_angle is None:
        part = np.zeros_like(body)
        pu = pv = u
    else:
        r = _part_radius(shape)
        edge = radius(shape.part_angle)
        px, py = a * edge * math.cos(shape.part_angle), b * edge * math.sin(shape.part_angle)
        norm = math.hypot(px, py)
        px, py = px + 0.45 * r * px / norm, py + 0.45 * r * py / norm
        pu, pv = u - np.float32(px), v - np.float32(py)
        part = pu * pu + pv * pv < r * r
        body &= ~part
    return window, body, part, u / a, v / a, rho, pu, pv


def _full_size(window: tuple[slice, slice], mask: np.ndarray, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=bool)
    full[window] = mask
    return full


def _part_pattern(pattern: str, pu: np.ndarray, pv: np.ndarray, radius: float) -> np.ndarray:
    """Where the class's pattern shows the bright class colour (elsewhere a dark shade of it)."""
    half = max(1.5, radius / 2.5)  # half a period: about three stripes across the part
    iu, iv = np.floor(pu / half).astype(np.int32), np.floor(pv / half).astype(np.int32)
    if pattern == "hstripes":
        return iv % 2 == 0
    if pattern == "vstripes":
        return iu % 2 == 0
    if pattern == "checker":
        return (iu + iv) % 2 == 0
    if pattern == "dots":
        period = 2 * half
        du = pu - period * np.round(pu / period)
        dv = pv - period * np.round(pv / period)
        return np.hypot(du, dv) > 0.55 * half
    if pattern == "diagonal":
        return np.floor((pu + pv) / (1.4 * half)).astype(np.int32) % 2 == 0
    return np.floor(np.hypot(pu, pv) / half).astype(np.int32) % 2 == 0  # rings


def _draw_object(
    canvas: np.ndarray,
    shape: _Shape,
    texture: np.ndarray,
    part_class: tuple[int, int, int] | None,  # (class index, number of classes, shared colour pairs) of the part
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a textured, shaded body (and its part) onto ``canvas`` in place; return body and part masks."""
    height, width = canvas.shape[:2]
    window, body, part, un, vn, rho, pu, pv = _shape_masks(shape, height, width)
    view = canvas[window]
    size = texture.shape[0]
    scale = (size - 1) / 3.2
    body_colour = cv2.remap(
        texture, (un + 1.6) * scale, (vn + 1.6) * scale, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    shading = np.clip(1.15 - 0.35 * rho * rho, 0.6, 1.15)[..., None]
    view[body] = (body_colour * shading)[body]
    if part_class is not None:
        class_index, n_classes, shared_colour_pairs = part_class
        radius = _part_radius(shape)
        bright = _part_pattern(class_pattern(class_index), pu, pv, radius)[..., None]
        colour = class_colour(class_index, n_classes, shared_colour_pairs)
        part_shading = np.clip(1.1 - 0.3 * (pu * pu + pv * pv) / (radius * radius), 0.75, 1.1)[..., None]
        view[part] = (np.where(bright, colour, colour * 0.45) * part_shading)[part]
    return _full_size(window, body, height, width), _full_size(window, part, height, width)


def _random_shape(rng: np.random.Generator, config: WorldConfig, cx: float, cy: float, a: float,
                  with_part: bool) -> _Shape:
    return _Shape(
        cx=cx,
        cy=cy,
        a=a,
        aspect=rng.uniform(*config.aspect),
        angle=-math.pi / 2 + rng.uniform(-config.tilt, config.tilt),
        harmonics=tuple((rng.uniform(0, amp), rng.uniform(-math.pi, math.pi)) for amp in (0.1, 0.07, 0.05)),
        part_angle=rng.uniform(-0.5, 0.5) if with_part else None,  # near the body's upper end
        part_fraction=rng.uniform(*config.part_fraction),
    )


def _place(
    rng: np.random.Generator,
    config: WorldConfig,
    height: int,
    width: int,
    scale_range: tuple[float, float],
    taken: np.ndarray,
    with_part: bool,
) -> tuple[_Shape, np.ndarray, np.ndarray]:
    """A random shape that barely overlaps ``taken`` and keeps most of its part inside the image.

    Shapes shrink every 25 failed tries, so crowded images always find a place.
    """
    shrink = 1.0
    for attempt in range(1000):
        if attempt and attempt % 25 == 0:
            shrink *= 0.9
        a = rng.uniform(*scale_range) * min(height, width) * shrink
        cx, cy = rng.uniform(0.5 * a, width - 0.5 * a), rng.uniform(0.5 * a, height - 0.5 * a)
        shape = _random_shape(rng, config, cx, cy, a, with_part)
        window, body, part, *_ = _shape_masks(shape, height, width)
        body, part = _full_size(window, body, height, width), _full_size(window, part, height, width)
        area = int(body.sum() + part.sum())
        overlap = int(((body | part) & taken).sum())
        part_inside = not with_part or part.sum() >= 0.8 * math.pi * _part_radius(shape) ** 2
        if area > 0 and overlap <= 0.05 * area and part_inside:
            return shape, body, part
    raise RuntimeError("could not place an object")  # unreachable: shapes shrink to a few pixels


def _occluder_mask(rng: np.random.Generator, shape: _Shape, height: int, width: int) -> np.ndarray:
    """A box over the side of the body away from the part."""
    side = (shape.part_angle or 0.0) + math.pi + rng.uniform(-1.0, 1.0)  # body-frame angle
    distance = shape.a * rng.uniform(0.9, 1.3)
    u, v = distance * math.cos(side), distance * shape.aspect * math.sin(side)
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    centre = (shape.cx + u * cos - v * sin, shape.cy + u * sin + v * cos)
    extent = (shape.a * rng.uniform(0.6, 1.0), shape.a * rng.uniform(0.6, 1.0))
    corners = cv2.boxPoints((centre, extent, rng.uniform(0, 180))).astype(np.int32)
    hidden = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(hidden, [corners], 1)
    return hidden.astype(bool)


def _hidden_fraction(mask: np.ndarray, hidden: np.ndarray) -> float:
    return float((mask & hidden).sum()) / max(int(mask.sum()), 1)


def _moving_body(
    rng: np.random.Generator,
    config: WorldConfig,
    region: tuple[float, float, float, float],  # x0, y0, x1, y1 the centre roams in (before margins)
    scale: float,  # major semi-axis at rest, px
    n_frames: int,
    with_part: bool,
) -> Callable[[int], _Shape]:
    """A body's shape at frame t: it crosses its region, breathes in scale, sways and deforms."""
    base = _random_shape(rng, config, 0.0, 0.0, scale, with_part)
    margin = 1.5 * scale
    low = np.float32([region[0] + margin, region[1] + margin])
    high = np.maximum(np.float32([region[2] - margin, region[3] - margin]), low)
    # Start near one end of the region and finish near the other, so the body really travels.
    share = rng.uniform(0, 0.3, size=2)
    flip = rng.random(2) < 0.5
    start = low + np.where(flip, 1 - share, share) * (high - low)
    end = low + np.where(flip, share, 1 - share) * (high - low)
    breathe_period, sway_period = rng.uniform(16, 30), rng.uniform(20, 40)
    spin = rng.uniform(-0.15, 0.15, size=len(base.harmonics))  # radians per frame: the outline deforms

    def at(t: int) -> _Shape:
        centre = start + t / max(n_frames - 1, 1) * (end - start)
        breathe, sway = math.sin(2 * math.pi * t / breathe_period), math.sin(2 * math.pi * t / sway_period)
        return _Shape(
            cx=float(centre[0]) + 3 * sway,
            cy=float(centre[1]) + 2 * breathe,
            a=scale * (1 + 0.18 * breathe),
            aspect=base.aspect * (1 + 0.08 * sway),
            angle=base.angle + 0.25 * sway,
            harmonics=tuple((amp, phase + w * t) for (amp, phase), w in zip(base.harmonics, spin)),
            part_angle=base.part_angle,
            part_fraction=base.part_fraction,
        )

    return at


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Soften edges like a lens, add sensor noise, quantise to uint8."""
    blurred = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    noise = rng.standard_normal(size=canvas.shape, dtype=np.float32)
    return np.clip(blurred + 3 * noise + 0.5, 0, 255).astype(np.uint8)


def _boundary_band(labels: np.ndarray) -> np.ndarray:
    """Pixels within about 1.5 px of a label change: a band _VOID_BAND_PX wide along every boundary."""
    edge = np.zeros(labels.shape, dtype=np.uint8)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    kernel = np.ones((_VOID_BAND_PX, _VOID_BAND_PX), dtype=np.uint8)
    return cv2.dilate(edge, kernel).astype(bool)
