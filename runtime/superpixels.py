"""SLIC superpixels (Achanta et al., TPAMI 2012) over a regular grid of cells.

Each pixel compares itself only with the centres of its own grid cell and the 8 cells around it (the
2S x 2S search window of SLIC, as in gSLICr and fast-slic). The numpy version batches an iteration into
(cells, pixels, 9) distance arrays, an argmin and five ``np.bincount`` centre updates; it is the reference
of the compiled loops in ``wsvs.runtime.compiled``, which the video segmentation runs.
"""

from __future__ import annotations

import cv2
import numpy as np

from .compiled import adjacency_counts, link_counts, slic_assign

# Distance to a centre outside the image: never the nearest.
_FAR = 1e6


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> float32 CIE Lab (L in [0, 100], a and b in about [-128, 127])."""
    image = np.asarray(image)
    # as rows of the image's own width: OpenCV converts a (N, 1, 3) column of pixels about 4x slower
    width = image.shape[-2] if image.ndim >= 2 else 1
    rgb = image.reshape(-1, width, 3).astype(np.float32) * (1.0 / 255.0)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).reshape(image.shape)


def slic_superpixels(
    image: np.ndarray,
    num_segments: int = 800,
    compactness: float = 10.0,
    iterations: int = 4,
    *,
    compiled: bool = False,
) -> np.ndarray:
    """Partition an (H, W, 3) uint8 RGB image into about ``num_segments`` compact, colour-coherent regions.

    ``compactness`` is SLIC's m: the weight of the spatial distance (in units of the grid step) against
    the Lab colour distance. Returns (H, W) int32 ids covering every pixel, numbered 0..S-1 with no gaps.
    ``compiled`` runs the iterations as compiled loops (``wsvs.runtime.compiled.slic_assign``): the same
    arithmetic in the same order, so the same ids bit for bit, about 7x faster (benchmarks/RESULTS.md).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return lab_superpixels(rgb_to_lab(image), num_segments, compactness, iterations, compiled=compiled)


def lab_superpixels(
    lab: np.ndarray, num_segments: int, compactness: float, iterations: int, *, compiled: bool = False
) -> np.ndarray:
    """``slic_superpixels`` of an image already in Lab, (H, W, 3) float32 as ``rgb_to_lab`` gives it."""
    height, width = lab.shape[:2]
    step = max(2, round(float(np.sqrt(height * width / max(num_segments, 1)))))
    rows, cols = -(-height // step), -(-width // step)
    # Features (L, a, b, y * m / S, x * m / S): squared distances are SLIC's D^2.
    scale = np.float32(compactness / step)
    lab = cv2.copyMakeBorder(lab, 0, rows * step - height, 0, cols * step - width, cv2.BORDER_REPLICATE)
    if compiled:
        assigned = slic_assign(lab, step, rows, cols, height, width, scale, iterations)
    else:
        assigned = _slic_assign(lab, step, rows, cols, height, width, scale, iterations)
    labels = assigned[:height, :width]
    # Renumber without gaps (cells whose centre won no pixel disappear).
    used = np.zeros(rows * cols, dtype=bool)
    used[labels.reshape(-1)] = True
    compact = np.cumsum(used, dtype=np.int32) - 1
    return compact[labels]


def _slic_assign(
    lab: np.ndarray, step: int, rows: int, cols: int, height: int, width: int, scale: np.float32, iterations: int
) -> np.ndarray:
    """The SLIC iterations on the padded Lab image (rows * step, cols * step, 3): the grid cell id of each
    pixel's centre, (rows * step, cols * step) int32. The reference ``compiled.slic_assign`` reproduces."""
    pad_h, pad_w = rows * step, cols * step
    ys, xs = np.mgrid[0:pad_h, 0:pad_w].astype(np.float32)
    features = np.concatenate([lab, (ys * scale)[..., None], (xs * scale)[..., None]], axis=2)
    # (cells, pixels per cell, 5): cell-major blocks, so each cell's pixels are contiguous.
    blocks = features.reshape(rows, step, cols, step, 5).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1, 5)
    inside = np.zeros((pad_h, pad_w), dtype=np.float64)
    inside[:height, :width] = 1.0  # padding pixels get ids but never move centres
    inside = inside.reshape(rows, step, cols, step).transpose(0, 2, 1, 3).reshape(-1)
    # Ids of the 3x3 cells around each cell (-1 outside the grid) -> (cells, 9).
    grid = np.pad(np.arange(rows * cols).reshape(rows, cols), 1, constant_values=-1)
    neighbours = np.stack(
        [grid[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
        axis=-1,
    ).reshape(rows * cols, 9)

    def centres_of(assigned: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """Mean feature of each centre's pixels inside the image (float64 sums in pixel order, as
        np.bincount adds them); a centre that lost all its pixels stays where it was."""
        counts = np.bincount(assigned, weights=inside, minlength=rows * cols)
        moved = counts > 0
        for k in range(5):
            sums = np.bincount(assigned, weights=blocks[..., k].reshape(-1) * inside, minlength=rows * cols)
            centres[moved, k] = sums[moved] / counts[moved]
        return centres

    # Start at each cell's mean: its centre, with the cell's mean colour.
    centres = centres_of(np.repeat(np.arange(rows * cols), step * step), np.zeros((rows * cols, 5), np.float32))
    for iteration in range(iterations + 1):
        padded = np.concatenate([centres, np.full((1, 5), _FAR, dtype=np.float32)])
        candidates = padded[neighbours]  # (cells, 9, 5); id -1 picks the far row
        # D^2 = (((dL^2 + da^2) + db^2) + dy^2) + dx^2 in float32, added in this order (the compiled loop's)
        score = np.zeros((*blocks.shape[:2], 9), dtype=np.float32)
        for k in range(5):
            gap = blocks[:, :, None, k] - candidates[:, None, :, k]
            score += gap * gap
        assigned = np.take_along_axis(neighbours, score.argmin(axis=2), axis=1).reshape(-1)
        if iteration < iterations:
            centres = centres_of(assigned, centres)
    return assigned.reshape(rows, cols, step, step).transpose(0, 2, 1, 3).reshape(pad_h, pad_w).astype(np.int32)


def _count_pairs(first: np.ndarray, second: np.ndarray, num_second: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (first, second) id pairs (E, 2) int64 and how often each occurs (E,) int64."""
    keys, counts = np.unique(first.astype(np.int64) * num_second + second, return_counts=True)
    return np.stack([keys // num_second, keys % num_second], axis=1), counts


def superpixel_adjacency(labels: np.ndarray, *, compiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Spatially adjacent superpixels of an (H, W) id map and the length of their shared boundary.

    Returns pairs (E, 2) int64 with ``pairs[:, 0] < pairs[:, 1]`` in sorted order and, per pair, the number
    of 4-connected pixel pairs straddling the two superpixels (E,) int64. ``compiled``: the same counted in
    one compiled pass (``wsvs.runtime.compiled.adjacency_counts``).
    """
    if compiled:
        return adjacency_counts(np.ascontiguousarray(labels, dtype=np.int32), int(labels.max()) + 1)
    firsts, seconds = [], []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        firsts.append(np.minimum(a, b)[differ])
        seconds.append(np.maximum(a, b)[differ])
    return _count_pairs(np.concatenate(firsts), np.concatenate(seconds), int(labels.max()) + 1)


def flow_links(
    labels: np.ndarray, next_labels: np.ndarray, flow: np.ndarray, *, compiled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Superpixels of one frame linked to those of the next by the forward flow (H, W, 2) (dx, dy).

    Superpixel i of ``labels`` links to j of ``next_labels`` when at least one pixel of i lands (rounded)
    in j. Returns pairs (E, 2) int64 (i, j) in sorted order and the fraction of i's pixels that land in j
    (E,) float64; pixels that leave the frame link to nothing. ``compiled``: the same counted in one compiled
    pass (``wsvs.runtime.compiled.link_counts``).
    """
    if compiled:
        pairs, counts, sizes = link_counts(
            np.ascontiguousarray(labels, dtype=np.int32), np.ascontiguousarray(next_labels, dtype=np.int32),
            np.ascontiguousarray(flow, dtype=np.float32), int(labels.max()) + 1, int(next_labels.max()) + 1,
        )
        return pairs, counts / sizes[pairs[:, 0]]
    height, width = labels.shape
    ys, xs = np.mgrid[0:height, 0:width]
    to_x = np.rint(xs + flow[..., 0]).astype(np.int64)
    to_y = np.rint(ys + flow[..., 1]).astype(np.int64)
    landed = (to_x >= 0) & (to_x < width) & (to_y >= 0) & (to_y < height)
    pairs, counts = _count_pairs(labels[landed], next_labels[to_y[landed], to_x[landed]], int(next_labels.max()) + 1)
    sizes = np.bincount(labels.reshape(-1), minlength=int(labels.max()) + 1)
    return pairs, counts / sizes[pairs[:, 0]]
