"""Training-time augmentation shared by the stages that train: a random rescale, flip and square crop, of an
image with its label map (train-encoder, adapt) or of an attention map with its mask (train-decoder)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def augment(image: np.ndarray, size: int, jitter: Sequence[float], rng: np.random.Generator,
            labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Random rescale, flip and a size x size crop (zero padding where the image is smaller). ``labels``, an
    (H, W) uint8 label map, when given, goes through the same steps (nearest neighbour, padding 255 = void)."""
    import cv2

    from wsvs.runtime.preprocess import resize_rgb

    scale = rng.uniform(jitter[0], jitter[1]) * size / max(image.shape[:2])
    height, width = (max(1, round(d * scale)) for d in image.shape[:2])
    image = resize_rgb(image, (height, width))
    if labels is not None:
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        image = image[:, ::-1]
        labels = None if labels is None else labels[:, ::-1]
    top, left = rng.integers(0, max(height - size, 0) + 1), rng.integers(0, max(width - size, 0) + 1)
    crop = image[top:top + size, left:left + size]
    oy, ox = rng.integers(0, size - crop.shape[0] + 1), rng.integers(0, size - crop.shape[1] + 1)
    window = slice(oy, oy + crop.shape[0]), slice(ox, ox + crop.shape[1])
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[window] = crop
    if labels is None:
        return canvas, None
    label_canvas = np.full((size, size), 255, np.uint8)
    label_canvas[window] = labels[top:top + size, left:left + size]
    return canvas, label_canvas


def augment_pair(attention: np.ndarray, mask: np.ndarray, size: int, jitter: Sequence[float],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale, flip and a size x size crop of one pair. Returns float32 attention and a float32
    target where padding (outside the rescaled map) is -1, i.e. not scored."""
    import cv2

    scale = rng.uniform(jitter[0], jitter[1])
    height, width = (max(1, round(d * scale)) for d in attention.shape)
    attention = cv2.resize(attention.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    target = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    if rng.random() < 0.5:
        attention, target = attention[:, ::-1], target[:, ::-1]
    top, left = rng.integers(0, max(height - size, 0) + 1), rng.integers(0, max(width - size, 0) + 1)
    attention, target = attention[top:top + size, left:left + size], target[top:top + size, left:left + size]
    oy, ox = rng.integers(0, size - attention.shape[0] + 1), rng.integers(0, size - attention.shape[1] + 1)
    canvas = np.zeros((size, size), np.float32)
    scored = np.full((size, size), -1.0, np.float32)
    canvas[oy:oy + attention.shape[0], ox:ox + attention.shape[1]] = attention
    scored[oy:oy + target.shape[0], ox:ox + target.shape[1]] = target
    return canvas, scored
