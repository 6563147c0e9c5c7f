"""Compiled (numba) versions of the video segmentation's hot loops.

Each function here computes what its numpy reference computes, with the same arithmetic in the same order
where the tests require equal results bit for bit: ``slic_assign`` (the iterations of
``superpixels.slic_superpixels``), ``pool_runs`` (``pooling.superpixel_pool``, equal up to the order of
float64 additions), ``adjacency_counts`` and ``link_counts`` (``superpixels.superpixel_adjacency`` and
``flow_links``). numba caches the machine code beside this file, or in the user's cache folder when that is
read-only; with neither writable the functions are compiled at first use in every process.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np


def _compile(function: Callable) -> Callable:
    try:
        return numba.njit(cache=True)(function)
    except RuntimeError:  # numba finds no writable cache folder (read-only install, no user cache dir)
        return numba.njit(function)


@_compile
def _update_centres(lab, assigned, step, rows, cols, height, width, scale, centres):
    """Centre of each cell's pixels (inside the image): float64 sums in pixel order, as np.bincount adds."""
    sums = np.zeros((rows * cols, 5))
    counts = np.zeros(rows * cols)
    for cell in range(rows * cols):
        top, left = (cell // cols) * step, (cell % cols) * step
        for y in range(top, min(top + step, height)):
            for x in range(left, min(left + step, width)):
                centre = assigned[y, x]
                counts[centre] += 1.0
                for k in range(3):
                    sums[centre, k] += lab[y, x, k]
                sums[centre, 3] += np.float32(y) * scale
                sums[centre, 4] += np.float32(x) * scale
    for centre in range(rows * cols):
        if counts[centre] > 0:
            for k in range(5):
                centres[centre, k] = np.float32(sums[centre, k] / counts[centre])


@_compile
def slic_assign(lab, step, rows, cols, height, width, scale, iterations):
    """Grid SLIC on a padded (rows * step, cols * step, 3) float32 Lab image: the cell id (row-major over the
    grid) of the centre each pixel is assigned to, (rows * step, cols * step) int32.

    ``scale`` is float32 m / S. Distances are ((((dL^2 + da^2) + db^2) + dy^2) + dx^2) in float32, first
    minimum over the 3x3 cells around the pixel's own in row-major order, as in the numpy reference. A cell's
    candidates are compared with a row of its pixels at a time, without branches.
    """
    pad_h, pad_w = rows * step, cols * step
    planes = np.empty((3, pad_h, pad_w), dtype=np.float32)
    for k in range(3):
        planes[k] = lab[:, :, k]
    fx = np.empty(pad_w, dtype=np.float32)
    for x in range(pad_w):
        fx[x] = np.float32(x) * scale
    assigned = np.empty((pad_h, pad_w), dtype=np.int32)
    for y in range(pad_h):
        for x in range(pad_w):
            assigned[y, x] = (y // step) * cols + x // step
    centres = np.zeros((rows * cols, 5), dtype=np.float32)
    _update_centres(lab, assigned, step, rows, cols, height, width, scale, centres)
    candidates = np.empty((9, 5), dtype=np.float32)
    candidate_ids = np.empty(9, dtype=np.int32)
    best = np.empty(step, dtype=np.float32)
    best_id = np.empty(step, dtype=np.int32)
    for iteration in range(iterations + 1):
        for row in range(rows):
            for col in range(cols):
                found = 0
                for r in range(row - 1, row + 2):
                    for c in range(col - 1, col + 2):
                        if 0 <= r < rows and 0 <= c < cols:
                            candidate_ids[found] = r * cols + c
                            candidates[found] = centres[r * cols + c]
                            found += 1
                left = col * step
                for y in range(row * step, (row + 1) * step):
                    fy = np.float32(y) * scale
                    lightness = planes[0, y, left : left + step]
                    green_red = planes[1, y, left : left + step]
                    blue_yellow = planes[2, y, left : left + step]
                    xs = fx[left : left + step]
                    best[:] = np.inf
                    for j in range(found):
                        # the candidate in locals: the stores below could alias the array for all numba knows
                        centre_id, lc, ac = candidate_ids[j], candidates[j, 0], candidates[j, 1]
                        bc, xc = candidates[j, 2], candidates[j, 4]
                        dy = fy - candidates[j, 3]
                        dy = dy * dy
                        for i in range(step):
                            d0 = lightness[i] - lc
                            d1 = green_red[i] - ac
                            d2 = blue_yellow[i] - bc
                            dx = xs[i] - xc
                            score = d0 * d0 + d1 * d1 + d2 * d2 + dy + dx * dx
                            closer = score < best[i]
                            best[i] = score if closer else best[i]
                            best_id[i] = centre_id if closer else best_id[i]
                    assigned[y, left : left + step] = best_id
        if iteration < iterations:
            _update_centres(lab, assigned, step, rows, cols, height, width, scale, centres)
    return assigned


@_compile
def pool_runs(labels, values, num_superpixels):
    """Per-superpixel float64 sums (B * S, C) and pixel counts (B * S,) of labels (B, P) int32 and values
    (B, C, P) float32, P pixels per image: each run of equal ids along the pixels is summed in registers,
    then added to its bin. Channels go eight at a time (eight independent additions per pixel)."""
    batch, channels, pixels = values.shape
    sums = np.zeros((batch * num_superpixels, channels))
    counts = np.zeros(batch * num_superpixels, dtype=np.int64)
    for b in range(batch):
        ids = labels[b]
        for first in range(0, channels, 8):
            # 1-D views of the eight channels; past the last channel they repeat it and their sums are dropped
            last = channels - 1
            v0, v1, v2, v3 = values[b, first], values[b, min(first + 1, last)], values[b, min(first + 2, last)], \
                values[b, min(first + 3, last)]
            v4, v5, v6, v7 = values[b, min(first + 4, last)], values[b, min(first + 5, last)], \
                values[b, min(first + 6, last)], values[b, min(first + 7, last)]
            start = 0
            while start < pixels:
                current = ids[start]
                end = start
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
                while end < pixels and ids[end] == current:
                    s0 += v0[end]
                    s1 += v1[end]
                    s2 += v2[end]
                    s3 += v3[end]
                    s4 += v4[end]
                    s5 += v5[end]
                    s6 += v6[end]
                    s7 += v7[end]
                    end += 1
                bin_ = b * num_superpixels + current
                if first == 0:
                    counts[bin_] += end - start
                for k, total in enumerate((s0, s1, s2, s3, s4, s5, s6, s7)):
                    if first + k < channels:
                        sums[bin_, first + k] += total
                start = end
    return sums, counts


@_compile
def _nonzero_pairs(counts):
    """Nonzero entries of a dense (A, B) pair-count matrix in row-major order, np.unique's order of the keys
    a * B + b: pairs (E, 2) int64 and counts (E,) int64."""
    rows, cols = counts.shape
    distinct = 0
    for a in range(rows):
        for b in range(cols):
            distinct += counts[a, b] != 0
    pairs = np.empty((distinct, 2), dtype=np.int64)
    found = np.empty(distinct, dtype=np.int64)
    e = 0
    for a in range(rows):
        for b in range(cols):
            if counts[a, b] != 0:
                pairs[e, 0], pairs[e, 1], found[e] = a, b, counts[a, b]
                e += 1
    return pairs, found


@_compile
def adjacency_counts(labels, num_superpixels):
    """``superpixels.superpixel_adjacency`` of an (H, W) id map: pairs (E, 2) int64 with first < second in
    sorted order, and the number of 4-connected pixel pairs between them (E,) int64."""
    height, width = labels.shape
    counts = np.zeros((num_superpixels, num_superpixels), dtype=np.int32)
    for y in range(height):
        for x in range(width):
            here = labels[y, x]
            if x + 1 < width and labels[y, x + 1] != here:
                counts[min(here, labels[y, x + 1]), max(here, labels[y, x + 1])] += 1
            if y + 1 < height and labels[y + 1, x] != here:
                counts[min(here, labels[y + 1, x]), max(here, labels[y + 1, x])] += 1
    return _nonzero_pairs(counts)


@_compile
def link_counts(labels, next_labels, flow, num_superpixels, num_next):
    """``superpixels.flow_links`` before the division: pairs (i, j) (E, 2) int64 in sorted order, how many
    pixels of i land (x + dx, y + dy rounded half to even, inside the frame) in j (E,) int64, and the
    pixel count of every superpixel of ``labels`` (S,) int64."""
    height, width = labels.shape
    counts = np.zeros((num_superpixels, num_next), dtype=np.int32)
    sizes = np.zeros(num_superpixels, dtype=np.int64)
    for y in range(height):
        for x in range(width):
            sizes[labels[y, x]] += 1
            to_x = np.int64(np.rint(x + np.float64(flow[y, x, 0])))
            to_y = np.int64(np.rint(y + np.float64(flow[y, x, 1])))
            if 0 <= to_x < width and 0 <= to_y < height:
                counts[labels[y, x], next_labels[to_y, to_x]] += 1
    pairs, found = _nonzero_pairs(counts)
    return pairs, found, sizes
