"""The inside-outside map of Papazoglou & Ferrari (ICCV 2013): which pixels lie inside a motion boundary.

Motion boundaries are where the optical flow changes abruptly, in magnitude (flow gradient) or in
direction (angle to the neighbours' flow). A pixel is inside an object when most of the 8 rays leaving it
(horizontal, vertical, both diagonals, both ways) cross the boundary an odd number of times. Crossings
are counted as boundary runs entered along each ray, with cumulative sums along rows, columns and the
two diagonal families, so the whole map costs O(pixels).
"""

from __future__ import annotations

import cv2
import numpy as np


def motion_boundaries(
    flow: np.ndarray, threshold: float = 0.2, angle_scale: float = 1.0, gradient_floor: float = 0.05
) -> np.ndarray:
    """Boundary pixels (H, W) bool of a flow field (H, W, 2).

    The flow-gradient magnitude |grad f| is normalised by the frame's own scale (its 99th percentile, at
    least ``gradient_floor`` pixels per pixel, so a static scene's noise stays weak) into b_m in [0, 1]:
    a fixed scale would miss slow objects or flood fast ones. Strong edges (b_m > 0.5) count as they are,
    weaker ones only where the flow also turns: b = b_m (1 - exp(-angle_scale * max dtheta^2)), dtheta
    the angle to a 4-neighbour's flow. The boundary is b > threshold.
    """
    flow = np.ascontiguousarray(flow, dtype=np.float32)
    grad_sq = np.zeros(flow.shape[:2], dtype=np.float32)
    for c in range(2):
        grad_sq += cv2.Sobel(flow[..., c], cv2.CV_32F, 1, 0, ksize=3, scale=0.125) ** 2
        grad_sq += cv2.Sobel(flow[..., c], cv2.CV_32F, 0, 1, ksize=3, scale=0.125) ** 2
    gradient = np.sqrt(grad_sq)
    strength = np.minimum(gradient / max(float(np.percentile(gradient, 99)), gradient_floor), 1.0)

    angle = np.arctan2(flow[..., 1], flow[..., 0])
    largest_turn = np.zeros_like(angle)
    for axis in (0, 1):
        turn = np.abs(np.diff(angle, axis=axis))
        turn = np.minimum(turn, 2 * np.pi - turn)  # wrapped to [0, pi]
        lead = (slice(None), slice(1, None)) if axis else (slice(1, None),)
        trail = (slice(None), slice(None, -1)) if axis else (slice(None, -1),)
        largest_turn[lead] = np.maximum(largest_turn[lead], turn)
        largest_turn[trail] = np.maximum(largest_turn[trail], turn)
    direction = 1.0 - np.exp(-angle_scale * largest_turn**2)
    return np.where(strength > 0.5, strength, strength * direction) > threshold


def _odd_votes_down_columns(boundary: np.ndarray) -> np.ndarray:
    """Per pixel, how many of the 2 vertical rays (up, down) cross an odd number of boundary runs (0..2)."""
    before = np.zeros_like(boundary)
    before[1:] = boundary[:-1]
    after = np.zeros_like(boundary)
    after[:-1] = boundary[1:]
    starts = np.cumsum(boundary & ~before, axis=0, dtype=np.int32)  # runs entered going down
    ends = boundary & ~after
    ends_cum = np.cumsum(ends, axis=0, dtype=np.int32)  # runs entered going up, counted from the top
    down = starts[-1:] - starts  # runs that start strictly below the pixel
    up = ends_cum - ends  # runs that end strictly above it
    return (down & 1) + (up & 1)


def _shear_index(height: int, width: int, slope: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices mapping (H, W) into an (H, W + H - 1) array where each diagonal becomes a column."""
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :] + (height - 1 - rows if slope > 0 else rows)
    return np.broadcast_to(rows, (height, width)), cols


def inside_outside(boundary: np.ndarray) -> np.ndarray:
    """Pixels (H, W) bool inside the closed curves of a boundary map: more than 4 of the 8 rays are odd."""
    boundary = np.asarray(boundary, dtype=bool)
    height, width = boundary.shape
    votes = _odd_votes_down_columns(boundary) + _odd_votes_down_columns(boundary.T).T
    for slope in (1, -1):  # down-right and down-left diagonals
        rows, cols = _shear_index(height, width, slope)
        sheared = np.zeros((height, width + height - 1), dtype=bool)
        sheared[rows, cols] = boundary
        votes += _odd_votes_down_columns(sheared)[rows, cols]
    inside = votes > 4
    # On the curve itself parity is ill-defined (only inward rays see a crossing): a boundary pixel joins
    # the side most of its decided 8-neighbours lie on; two passes settle bands up to 4 pixels thick.
    undecided = boundary.copy()
    for _ in range(2):
        near_inside = cv2.boxFilter(inside.astype(np.float32), -1, (3, 3), normalize=False)
        near_outside = cv2.boxFilter((~inside & ~undecided).astype(np.float32), -1, (3, 3), normalize=False)
        settled = undecided & (near_inside + near_outside > 0)
        inside |= settled & (near_inside > near_outside)
        undecided &= ~settled
    return inside


def inside_outside_map(
    flow: np.ndarray, downscale: int = 4, threshold: float = 0.2, angle_scale: float = 1.0
) -> np.ndarray:
    """Inside-outside map (H, W) bool of a flow field (H, W, 2): pixels enclosed by motion boundaries.

    Computed on the flow shrunk ``downscale`` times: the blurred boundaries of a fast flow become thin,
    closed curves there, free of pixel-level speckle, and the map costs downscale^2 times less.
    """
    height, width = flow.shape[:2]
    small = (max(1, width // downscale), max(1, height // downscale))
    flow = cv2.resize(np.ascontiguousarray(flow, dtype=np.float32), small, interpolation=cv2.INTER_AREA)
    inside = inside_outside(motion_boundaries(flow, threshold, angle_scale))
    return cv2.resize(inside.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
