"""Superpixel pooling: per-superpixel sums, pixel counts and means of per-pixel maps."""

from __future__ import annotations

import numpy as np

from .compiled import pool_runs


def superpixel_pool(
    labels: np.ndarray, values: np.ndarray, num_superpixels: int, *, compiled: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum, count and average per-pixel values over the superpixels of each image of a batch.

    Contract (a CUDA kernel reproduces it exactly):

    - ``labels``: (B, H, W) integer (int32) superpixel ids, each in ``[0, num_superpixels)``; ids are
      per image, so superpixel ``s`` of image ``b`` is unrelated to superpixel ``s`` of image ``b + 1``.
    - ``values``: (B, C, H, W) float32, C maps per image (e.g. attention maps or colour channels).
    - returns ``sums`` (B, S, C) float64 with ``sums[b, s, c] = sum of values[b, c, y, x] over the pixels
      with labels[b, y, x] == s`` (accumulated in float64), ``counts`` (B, S) int64 with the number of such
      pixels, and ``means`` (B, S, C) float32 = ``float32(sums / counts)``, 0 where ``counts == 0``;
      S = ``num_superpixels``.

    Ids out of range raise ValueError. Superpixels are compact, so along the flattened pixels the ids come in
    runs (about a superpixel's width each): every map is summed over the runs by one sequential
    ``np.add.reduceat`` in float64, then the run sums go to their superpixels with ``np.bincount``. Only the
    first pass touches every pixel, so the work is close to one read of the inputs.

    ``compiled`` sums the same runs in one compiled pass over all maps (``wsvs.runtime.compiled.pool_runs``):
    counts equal, sums equal up to the order of float64 additions within a run.
    """
    labels = np.asarray(labels)
    values = np.asarray(values)
    if labels.ndim != 3 or values.ndim != 4 or values.shape[0] != labels.shape[0]:
        raise ValueError(f"expected labels (B,H,W) and values (B,C,H,W), got {labels.shape}, {values.shape}")
    if values.shape[2:] != labels.shape[1:]:
        raise ValueError(f"labels {labels.shape} and values {values.shape} differ in size")
    batch, channels = values.shape[:2]
    if labels.size and (labels.min() < 0 or labels.max() >= num_superpixels):
        raise ValueError(f"superpixel ids must lie in [0, {num_superpixels})")
    bins = batch * num_superpixels
    sums = np.zeros((bins, channels), dtype=np.float64)
    counts = np.zeros(bins, dtype=np.int64)
    if labels.size and compiled:
        sums, counts = pool_runs(
            np.ascontiguousarray(labels.reshape(batch, -1), dtype=np.int32),
            np.ascontiguousarray(values.reshape(batch, channels, -1), dtype=np.float32),
            num_superpixels,
        )
    elif labels.size:
        flat = labels.reshape(-1)
        pixels = labels[0].size
        # a run starts where the id changes and at every image's first pixel
        change = np.empty(flat.size, dtype=bool)
        change[0] = True
        np.not_equal(flat[1:], flat[:-1], out=change[1:])
        change[::pixels] = True
        starts = np.flatnonzero(change)
        run_ids = flat[starts].astype(np.int64) + (starts // pixels) * num_superpixels
        counts = np.bincount(run_ids, weights=np.diff(starts, append=flat.size), minlength=bins).astype(np.int64)
        per_channel = values.transpose(1, 0, 2, 3).reshape(channels, -1)  # channel-major
        run_sums = np.add.reduceat(per_channel, starts, axis=1, dtype=np.float64)
        for c in range(channels):
            sums[:, c] = np.bincount(run_ids, weights=run_sums[c], minlength=bins)
    means = np.zeros((bins, channels), dtype=np.float32)
    nonempty = counts > 0
    means[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    return (
        sums.reshape(batch, num_superpixels, channels),
        counts.reshape(batch, num_superpixels),
        means.reshape(batch, num_superpixels, channels),
    )
