"""What a demo world contains (``WorldConfig``) and the random streams its items draw from."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Random streams: np.random.default_rng([seed, stream, index]). Every image and video draws from its own stream,
# so the files do not depend on the number of worker processes or on the order items are written in.
IMAGE_PLAN, IMAGE_RENDER, VIDEO_PLAN, VIDEO_RENDER = range(4)


@dataclass
class WorldConfig:
    """What the world contains; the defaults are the demo world (its generation time: benchmarks/RESULTS.md)."""

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
