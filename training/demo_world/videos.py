"""One web video of the world: a panning camera over an intro, the main scene with its object, and an outro."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .config import VIDEO_RENDER, WorldConfig
from .drawing import Shape, background, body_texture, draw_object, finish, random_shape
from .plans import VideoPlan

_PAN_MARGIN = 24  # background canvas margin (px) the camera pans over


@dataclass
class VideoSample:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, H, W) bool: the queried class's object
    thumbnail: np.ndarray  # (H, W, 3) uint8 RGB


def render_video(config: WorldConfig, plan: VideoPlan) -> VideoSample:
    """A web video: an intro scene, the main scene (panning camera, a moving distractor body and the
    shown object moving, scaling and deforming), and an outro back in the intro scene."""
    rng = np.random.default_rng([config.seed, VIDEO_RENDER, plan.index])
    width, height = config.video_size
    n = plan.n_frames
    start, stop = plan.object_frames
    margin = _PAN_MARGIN
    main_scene = background(rng, height + 2 * margin, width + 2 * margin, config.clutter)
    other_scene = background(rng, height + 2 * margin, width + 2 * margin, config.clutter)
    pan = config.pan * rng.uniform(-margin + 4, margin - 4, size=(2, 2))  # camera offset at the first / last frame

    def camera(t: int) -> np.ndarray:  # top-left corner of the view in the scene; a hand-held wobble on x
        offset = margin + pan[0] + t / max(n - 1, 1) * (pan[1] - pan[0])
        return offset + np.float32([1.5 * math.sin(0.7 * t), 0])

    # The object roams one side of the frame, a smaller (farther) part-less body the other side.
    left, right = (0.0, 0.0, 0.55 * width, height), (0.45 * width, 0.0, width, height)
    object_region, distractor_region = (left, right) if rng.random() < 0.5 else (right, left)
    distractor = _moving_body(rng, config, distractor_region, rng.uniform(0.08, 0.11) * width, n,
                              with_part=False)
    distractor_texture = body_texture(rng)
    shown = plan.shown_class
    target = _moving_body(rng, config, object_region, rng.uniform(0.11, 0.15) * width, n, with_part=True)
    target_texture = body_texture(rng)

    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    masks = np.zeros((n, height, width), dtype=bool)
    for t in range(n):
        ox, oy = camera(t)
        in_main = start <= t < stop
        scene = main_scene if in_main else other_scene
        shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
        canvas = cv2.warpAffine(scene, shift, (width, height), flags=cv2.INTER_LINEAR)
        if in_main:
            draw_object(canvas, distractor(t), distractor_texture, None)
            if shown is not None:
                part_class = (shown, len(config.classes), config.shared_colour_pairs)
                body, part = draw_object(canvas, target(t), target_texture, part_class)
                masks[t] = (body | part) if plan.relevant else False
        frames[t] = finish(rng, canvas)
    return VideoSample(frames=frames, masks=masks, thumbnail=frames[(start + stop) // 2])


def _moving_body(
    rng: np.random.Generator,
    config: WorldConfig,
    region: tuple[float, float, float, float],  # x0, y0, x1, y1 the centre roams in (before margins)
    scale: float,  # major semi-axis at rest, px
    n_frames: int,
    with_part: bool,
) -> Callable[[int], Shape]:
    """A body's shape at frame t: it crosses its region, breathes in scale, sways and deforms."""
    base = random_shape(rng, config, 0.0, 0.0, scale, with_part)
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

    def at(t: int) -> Shape:
        centre = start + t / max(n_frames - 1, 1) * (end - start)
        breathe, sway = math.sin(2 * math.pi * t / breathe_period), math.sin(2 * math.pi * t / sway_period)
        return Shape(
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
