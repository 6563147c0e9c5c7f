"""The compiled (numba) loops of the video segmentation against their numpy references, on real DAVIS frames."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from wsvs.cuda_kernels import pooling as gpu_pooling
from wsvs.runtime.flow import forward_flows
from wsvs.runtime.io import read_image_rgb, read_label_png
from wsvs.runtime.metrics import binary_iou
from wsvs.runtime.pooling import superpixel_pool
from wsvs.runtime.superpixels import flow_links, slic_superpixels, superpixel_adjacency
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames

SEQUENCE = "cows"  # strong texture and several moving bodies: many near-tied SLIC distances


@pytest.fixture(scope="module")
def davis_clip(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """The first 6 frames of DAVIS-2016 cows at 480x270 (the video path's work size) and their masks."""
    root = shared_data / "davis2016_dev"
    paths = sorted((root / "JPEGImages" / "480p" / SEQUENCE).glob("*.jpg"))[:6]
    frames = np.stack([cv2.resize(read_image_rgb(p), (480, 270), interpolation=cv2.INTER_AREA) for p in paths])
    truth = np.stack([
        cv2.resize(read_label_png(root / "Annotations" / "480p" / SEQUENCE / f"{p.stem}.png"), (480, 270),
                   interpolation=cv2.INTER_NEAREST) > 0
        for p in paths
    ])
    return frames, truth


@pytest.fixture(scope="module")
def labels(davis_clip) -> np.ndarray:
    return np.stack([slic_superpixels(f, 800, 10.0, 4) for f in davis_clip[0][:2]])


def test_compiled_slic_gives_the_reference_ids_bit_for_bit(davis_clip, labels):
    for frame, reference in zip(davis_clip[0], labels):
        compiled = slic_superpixels(frame, 800, 10.0, 4, compiled=True)
        np.testing.assert_array_equal(compiled, reference)
    assert labels.max() + 1 > 700  # the frames really are split into about 800 superpixels
    small = slic_superpixels(davis_clip[0][2, :97, :131], 60, 20.0, 2)  # grid not dividing the image
    np.testing.assert_array_equal(slic_superpixels(davis_clip[0][2, :97, :131], 60, 20.0, 2, compiled=True), small)


def test_compiled_pooling_equals_the_reference(davis_clip, labels):
    frames = davis_clip[0][:2]
    rng = np.random.default_rng(0)
    # colours (exact sums), random maps (rounding sums) and a constant one: 8 maps, as the video path pools
    size = frames.shape[1:3]
    values = np.concatenate(
        [frames.transpose(0, 3, 1, 2), rng.random((2, 4, *size)), np.full((2, 1, *size), 0.1)], axis=1
    ).astype(np.float32)
    count = int(labels.max()) + 1
    reference = superpixel_pool(labels, values, count)
    sums, counts, means = superpixel_pool(labels, values, count, compiled=True)
    np.testing.assert_array_equal(counts, reference[1])
    np.testing.assert_array_equal(sums[..., :3], reference[0][..., :3])  # integer colours: no rounding
    np.testing.assert_allclose(sums, reference[0], rtol=1e-12)  # float64 additions, possibly grouped otherwise
    np.testing.assert_allclose(means, reference[2], rtol=1e-6)
    with pytest.raises(ValueError, match="ids"):
        superpixel_pool(labels, values, count - 1, compiled=True)


def test_compiled_graph_edges_equal_the_reference(davis_clip, labels):
    flow = forward_flows(davis_clip[0][:2])[0]
    for got, want in zip(superpixel_adjacency(labels[0], compiled=True), superpixel_adjacency(labels[0])):
        np.testing.assert_array_equal(got, want)
    got_pairs, got_fraction = flow_links(labels[0], labels[1], flow, compiled=True)
    want_pairs, want_fraction = flow_links(labels[0], labels[1], flow)
    assert len(want_pairs) > 2000
    np.testing.assert_array_equal(got_pairs, want_pairs)
    np.testing.assert_array_equal(got_fraction, want_fraction)


def test_compiled_video_path_segments_as_the_numpy_path(davis_clip):
    frames, truth = davis_clip
    masks = {
        compiled: segment_frames(frames, None, VideoSegConfig(compiled=compiled, pooling="cpu"))[0]
        for compiled in (False, True)
    }
    for reference, compiled in zip(masks[False], masks[True]):
        assert binary_iou(compiled, reference) >= 0.99
    assert np.mean([binary_iou(m, g) for m, g in zip(masks[True], truth)]) > 0.6  # and it finds the cows


def test_compiled_loops_run_where_numba_cannot_cache():
    """A read-only install without a user cache folder: numba finds no cache location, the loops still run."""
    # a locator that only serves IPython cells: for this file numba finds none, as it would on a read-only install
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.IPythonCacheLocator"}
    script = (
        "import numpy as np; from wsvs.runtime import compiled\n"
        "sums, counts = compiled.pool_runs(np.array([[0, 0, 1]], np.int32), np.ones((1, 2, 3), np.float32), 2)\n"
        "print(type(compiled.pool_runs._cache).__name__, sums.tolist(), counts.tolist())"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["NullCache", "[[2.0,", "2.0],", "[1.0,", "1.0]]", "[2,", "1]"]


def test_single_frame_with_attention_but_no_attention_unary():
    """lambda_a = 0 on one frame: no motion either, so the attention seeds the colour models (no crash)."""
    frame = np.zeros((1, 90, 120, 3), dtype=np.uint8)
    frame[:] = (40, 120, 40)
    frame[0, 30:70, 40:90] = (200, 40, 40)  # a red box on green
    attention = np.zeros((1, 90, 120), dtype=np.float32)
    attention[0, 35:65, 45:70] = 0.9  # attention on the left part of the box only
    masks, info = segment_frames(frame, attention, VideoSegConfig(lambda_a=0.0, num_superpixels=100))
    box = np.zeros((90, 120), dtype=bool)
    box[30:70, 40:90] = True
    assert info["terms"] == {"attention": False, "motion": False, "appearance": True}
    assert binary_iou(masks[0], box) > 0.9  # the colour model spreads the attended colour over the whole box


def test_pooling_device_is_checked(davis_clip):
    with pytest.raises(ValueError, match="pooling"):
        VideoSegConfig(pooling="tpu")
    if gpu_pooling.is_available():
        return
    # no GPU: "auto" pools on the CPU (the same masks), "gpu" says why it cannot
    auto = segment_frames(davis_clip[0][:3], None, VideoSegConfig(pooling="auto"))[0]
    np.testing.assert_array_equal(auto, segment_frames(davis_clip[0][:3], None, VideoSegConfig(pooling="cpu"))[0])
    with pytest.raises(RuntimeError, match=r"(?i)cuda"):
        segment_frames(davis_clip[0][:3], None, VideoSegConfig(pooling="gpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_pooling.is_available(), reason="no NVIDIA GPU / CUDA driver (cuInit failed)")
def test_gpu_pooling_segments_as_the_cpu_path(davis_clip):
    frames, _ = davis_clip
    cpu, cpu_info = segment_frames(frames, None, VideoSegConfig(pooling="cpu"))
    gpu, gpu_info = segment_frames(frames, None, VideoSegConfig(pooling="gpu"))
    assert gpu_info["num_superpixels"] == cpu_info["num_superpixels"]
    for on_gpu, on_cpu in zip(gpu, cpu):
        assert binary_iou(on_gpu, on_cpu) >= 0.99


def test_motion_window_fills_a_frame_whose_flow_sees_no_motion():
    """A repeated frame has zero flow, so its own inside-outside map is empty; its neighbours' maps fill it."""
    background = (np.random.default_rng(7).random((15, 20, 3)) * 255).astype(np.uint8)
    background = cv2.resize(background, (160, 120), interpolation=cv2.INTER_CUBIC)
    frames, truth = [], []
    for t in (0, 1, 2, 2, 3, 4):  # frame 2 shown twice: the flow from the first copy to the second is zero
        disc = np.zeros((120, 160), dtype=bool)
        cv2.circle(disc.view(np.uint8), (50 + 5 * t, 60), 22, 1, thickness=-1)
        frame = background.copy()
        frame[disc] = (220, 40, 40)
        frames.append(frame)
        truth.append(disc)
    frames = np.stack(frames)
    # the motion unary alone, its map at a quarter of this small video's size
    motion_only = {"lambda_c": 0.0, "pairwise_weight": 0.0, "num_superpixels": 150, "motion_downscale": 4}
    alone = segment_frames(frames, None, VideoSegConfig(motion_window=0, **motion_only))[0]
    windowed = segment_frames(frames, None, VideoSegConfig(motion_window=1, **motion_only))[0]
    assert binary_iou(alone[2], truth[2]) < 0.2, binary_iou(alone[2], truth[2])  # no motion seen from frame 2 alone
    assert binary_iou(windowed[2], truth[2]) > 0.8
    mean_iou = {name: np.mean([binary_iou(m, g) for m, g in zip(masks, truth)])
                for name, masks in (("alone", alone), ("windowed", windowed))}
    assert mean_iou["windowed"] > mean_iou["alone"] + 0.05, mean_iou
