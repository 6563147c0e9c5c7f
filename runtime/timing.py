"""Timing a backend without torch: the timer of `wsvs bench` and ``benchmarks/*.py``, and the photograph-like
images they time it on (which `wsvs export` also checks its graphs on when it is given no image folder)."""

from __future__ import annotations

import time
from collections.abc import Callable

import cv2
import numpy as np


def time_calls(run: Callable[[], object], iterations: int, warmup: int) -> np.ndarray:
    """Seconds of each of ``iterations`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def synthetic_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB images (N, H, W, 3) uint8: colour blobs like a photograph's, not pixel noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(count, max(2, height // 24), max(2, width // 24), 3)).astype(np.uint8)
    return np.stack([cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC) for image in low])
