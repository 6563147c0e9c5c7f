"""One image of the world and its label map: objects placed apart, distractor bodies, an occluder, a void band."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from wsvs.runtime.io import VOID

from .config import IMAGE_RENDER, WorldConfig
from .drawing import (
    Shape,
    background,
    body_texture,
    draw_object,
    finish,
    full_size,
    part_radius,
    random_shape,
    shape_masks,
)
from .plans import ImagePlan

_VOID_BAND_PX = 3  # VOC marks a band about this wide along object boundaries as void


@dataclass
class ImageSample:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    labels: np.ndarray  # (S, S) uint8: 0 background, 1 + class, 255 void band
    parts: np.ndarray  # (S, S) bool: visible part pixels
    objects: list[tuple[int, tuple[int, int, int, int]]]  # (class index, visible box x0, y0, x1, y1)


def render_image(config: WorldConfig, plan: ImagePlan) -> ImageSample:
    """One image with its label map: background, distractor bodies, the objects, then an occluder."""
    rng = np.random.default_rng([config.seed, IMAGE_RENDER, plan.index])
    size = config.image_size
    n_classes = len(config.classes)
    canvas = background(rng, size, size, config.clutter)
    single = len(plan.classes) == 1
    scale_range = (0.16, 0.28) if single else (0.12, 0.2)

    shapes: list[Shape] = []
    taken = np.zeros((size, size), dtype=bool)
    for _ in plan.classes:
        shape, body, part = _place(rng, config, size, size, scale_range, taken, with_part=True)
        shapes.append(shape)
        taken |= body | part
    for _ in range(plan.distractors):
        distractor, _, _ = _place(rng, config, size, size, scale_range, taken, with_part=False)
        body, _ = draw_object(canvas, distractor, body_texture(rng), None)
        taken |= body

    labels = np.zeros((size, size), dtype=np.uint8)
    parts = np.zeros((size, size), dtype=bool)
    for class_index, shape in zip(plan.classes, shapes):
        part_class = (class_index, n_classes, config.shared_colour_pairs)
        body, part = draw_object(canvas, shape, body_texture(rng), part_class)
        labels[body | part] = 1 + class_index
        parts[body | part] = False  # a later object hides an earlier one's part
        parts |= part
    if plan.occluded:
        hidden = _occluder_mask(rng, shapes[int(rng.integers(len(shapes)))], size, size)
        occluder = background(rng, size, size, config.clutter)
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
    return ImageSample(image=finish(rng, canvas), labels=labels, parts=parts, objects=objects)


def _place(
    rng: np.random.Generator,
    config: WorldConfig,
    height: int,
    width: int,
    scale_range: tuple[float, float],
    taken: np.ndarray,
    with_part: bool,
) -> tuple[Shape, np.ndarray, np.ndarray]:
    """A random shape that barely overlaps ``taken`` and keeps most of its part inside the image.

    Shapes shrink every 25 failed tries, so crowded images always find a place.
    """
    shrink = 1.0
    for attempt in range(1000):
        if attempt and attempt % 25 == 0:
            shrink *= 0.9
        a = rng.uniform(*scale_range) * min(height, width) * shrink
        cx, cy = rng.uniform(0.5 * a, width - 0.5 * a), rng.uniform(0.5 * a, height - 0.5 * a)
        shape = random_shape(rng, config, cx, cy, a, with_part)
        window, body, part, *_ = shape_masks(shape, height, width)
        body, part = full_size(window, body, height, width), full_size(window, part, height, width)
        area = int(body.sum() + part.sum())
        overlap = int(((body | part) & taken).sum())
        part_inside = not with_part or part.sum() >= 0.8 * math.pi * part_radius(shape) ** 2
        if area > 0 and overlap <= 0.05 * area and part_inside:
            return shape, body, part
    raise RuntimeError("could not place an object")  # unreachable: shapes shrink to a few pixels


def _occluder_mask(rng: np.random.Generator, shape: Shape, height: int, width: int) -> np.ndarray:
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


def _boundary_band(labels: np.ndarray) -> np.ndarray:
    """Pixels within about 1.5 px of a label change: a band _VOID_BAND_PX wide along every boundary."""
    edge = np.zeros(labels.shape, dtype=np.uint8)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    kernel = np.ones((_VOID_BAND_PX, _VOID_BAND_PX), dtype=np.uint8)
    return cv2.dilate(edge, kernel).astype(bool)
