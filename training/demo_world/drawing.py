"""Drawing: backgrounds, textured bodies with their class parts, and the lens and sensor finish."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .config import WorldConfig

_PATTERNS = ("hstripes", "vstripes", "checker", "dots", "diagonal", "rings")


@dataclass(frozen=True)
class Shape:
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


def background(rng: np.random.Generator, height: int, width: int, clutter: tuple[int, int]) -> np.ndarray:
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


def body_texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A body's blotchy texture over normalised body coordinates [-1.6, 1.6]^2; the same family for
    every class: earthy colour, darker (or lighter) blotches and fine grain."""
    base = _hsv(rng.uniform(0.04, 0.13), rng.uniform(0.25, 0.55), rng.uniform(0.4, 0.75))
    spots = base * rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.2, 1.35)])
    weight = np.clip((_smooth_noise(rng, size, size, 6) - 0.5) * 5 + 0.5, 0, 1)[..., None]
    grain = _smooth_noise(rng, size, size, size // 2)[..., None] - 0.5
    return np.clip(base * (1 - weight) + spots * weight + 30 * grain, 0, 255).astype(np.float32)


def part_radius(shape: Shape) -> float:
    """Disc radius giving the target part fraction; the disc centre sits 0.45 r outside the boundary,
    so about 22 % of the disc overlaps the body."""
    f = shape.part_fraction
    return math.sqrt(f * shape.a * shape.a * shape.aspect / (1 - 0.777 * f))


def shape_masks(shape: Shape, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray, ...]:
    """The window of the image the shape can cover, and within it: the body and part masks and the local
    coordinates used for texturing (body-normalised u, v and rho; part-centred pu, pv in pixels)."""
    a, b = shape.a, shape.a * shape.aspect
    reach = a * (1 + sum(amp for amp, _ in shape.harmonics)) + 2
    if shape.part_angle is not None:
        reach += 1.5 * part_radius(shape)
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
        r = part_radius(shape)
        edge = radius(shape.part_angle)
        px, py = a * edge * math.cos(shape.part_angle), b * edge * math.sin(shape.part_angle)
        norm = math.hypot(px, py)
        px, py = px + 0.45 * r * px / norm, py + 0.45 * r * py / norm
        pu, pv = u - np.float32(px), v - np.float32(py)
        part = pu * pu + pv * pv < r * r
        body &= ~part
    return window, body, part, u / a, v / a, rho, pu, pv


def full_size(window: tuple[slice, slice], mask: np.ndarray, height: int, width: int) -> np.ndarray:
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


def draw_object(
    canvas: np.ndarray,
    shape: Shape,
    texture: np.ndarray,
    part_class: tuple[int, int, int] | None,  # (class index, number of classes, shared colour pairs) of the part
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a textured, shaded body (and its part) onto ``canvas`` in place; return body and part masks."""
    height, width = canvas.shape[:2]
    window, body, part, un, vn, rho, pu, pv = shape_masks(shape, height, width)
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
        radius = part_radius(shape)
        bright = _part_pattern(class_pattern(class_index), pu, pv, radius)[..., None]
        colour = class_colour(class_index, n_classes, shared_colour_pairs)
        part_shading = np.clip(1.1 - 0.3 * (pu * pu + pv * pv) / (radius * radius), 0.75, 1.1)[..., None]
        view[part] = (np.where(bright, colour, colour * 0.45) * part_shading)[part]
    return full_size(window, body, height, width), full_size(window, part, height, width)


def random_shape(rng: np.random.Generator, config: WorldConfig, cx: float, cy: float, a: float,
                  with_part: bool) -> Shape:
    return Shape(
        cx=cx,
        cy=cy,
        a=a,
        aspect=rng.uniform(*config.aspect),
        angle=-math.pi / 2 + rng.uniform(-config.tilt, config.tilt),
        harmonics=tuple((rng.uniform(0, amp), rng.uniform(-math.pi, math.pi)) for amp in (0.1, 0.07, 0.05)),
        part_angle=rng.uniform(-0.5, 0.5) if with_part else None,  # near the body's upper end
        part_fraction=rng.uniform(*config.part_fraction),
    )


def finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Soften edges like a lens, add sensor noise, quantise to uint8."""
    blurred = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    noise = rng.standard_normal(size=canvas.shape, dtype=np.float32)
    return np.clip(blurred + 3 * noise + 0.5, 0, 255).astype(np.uint8)
