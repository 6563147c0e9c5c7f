"""Video segmentation speed at 480x360, per stage and end to end (frames per second).

Run: .venv/bin/python -m pytest benchmarks/bench_videoseg.py --benchmark-enable
Frames: the first 20 of DAVIS-2016 blackswan from ../shared/data, resized to 480x360.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wsvs.runtime.flow import dis_flow, forward_flows
from wsvs.runtime.gmm import fit_weighted_gmm
from wsvs.runtime.graphcut import solve_binary_energy
from wsvs.runtime.io import read_image_rgb
from wsvs.runtime.motion import inside_outside_map
from wsvs.runtime.pooling import superpixel_pool
from wsvs.runtime.superpixels import flow_links, slic_superpixels, superpixel_adjacency
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016_dev"
NUM_FRAMES = 20
CONFIG = VideoSegConfig()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    folder = DAVIS / "JPEGImages" / "480p" / "blackswan"
    if not folder.is_dir():
        pytest.skip(f"DAVIS frames not found at {folder}")
    paths = sorted(folder.glob("*.jpg"))[:NUM_FRAMES]
    return np.stack([cv2.resize(read_image_rgb(p), (480, 360), interpolation=cv2.INTER_AREA) for p in paths])


@pytest.fixture(scope="module")
def labels(frames: np.ndarray) -> np.ndarray:
    return np.stack([slic_superpixels(f, CONFIG.num_superpixels, CONFIG.compactness) for f in frames])


@pytest.fixture(scope="module")
def flows(frames: np.ndarray) -> np.ndarray:
    return forward_flows(frames, CONFIG.flow_preset)


def _report(benchmark, frames_per_call: int) -> None:
    benchmark.extra_info["frames_per_s"] = round(frames_per_call / benchmark.stats.stats.mean, 1)


def test_superpixels(benchmark, frames):
    benchmark(slic_superpixels, frames[0], CONFIG.num_superpixels, CONFIG.compactness, CONFIG.slic_iterations)
    _report(benchmark, 1)


def test_flow(benchmark, frames):
    benchmark(dis_flow, frames[0], frames[1], CONFIG.flow_preset)
    _report(benchmark, 1)


def test_motion(benchmark, flows):
    benchmark(inside_outside_map, flows[0], CONFIG.motion_downscale, CONFIG.boundary_threshold)
    _report(benchmark, 1)


def test_pooling(benchmark, frames, labels):
    values = np.concatenate([frames.transpose(0, 3, 1, 2), frames[..., :2].transpose(0, 3, 1, 2)], axis=1)
    values = values.astype(np.float32)  # 5 maps per frame: colour, motion, attention in the real pipeline
    benchmark(superpixel_pool, labels, values, int(labels.max()) + 1)
    _report(benchmark, NUM_FRAMES)


def test_gmm(benchmark, frames, labels):
    _, counts, means = superpixel_pool(labels, frames.transpose(0, 3, 1, 2).astype(np.float32), int(labels.max()) + 1)
    colours = means[counts > 0].astype(np.float64)
    score = np.random.default_rng(0).random(len(colours))  # fg / bg weights as the attention gives them

    def fit_both():
        fit_weighted_gmm(colours, np.where(score > 0.5, score, 0.0), CONFIG.gmm_components)
        fit_weighted_gmm(colours, np.where(score > 0.5, 0.0, 1.0 - score), CONFIG.gmm_components)

    benchmark(fit_both)
    _report(benchmark, NUM_FRAMES)


def test_graphcut(benchmark, labels, flows):
    per_frame = int(labels.max()) + 1
    edges = [superpixel_adjacency(labels[t])[0] + t * per_frame for t in range(NUM_FRAMES)]
    edges += [
        flow_links(labels[t], labels[t + 1], flows[t])[0] + [t * per_frame, (t + 1) * per_frame]
        for t in range(NUM_FRAMES - 1)
    ]
    edges = np.concatenate(edges)
    # Unaries of a box-shaped attention, as an interval's graph sees them (random ones are a far harder cut).
    attention = np.full((NUM_FRAMES, 1, *labels.shape[1:]), 0.1, dtype=np.float32)
    attention[:, :, 100:300, 150:350] = 0.9
    fg = superpixel_pool(labels, attention, per_frame)[2].reshape(-1)
    unary = -np.log(np.stack([1.0 - fg, fg], axis=1).clip(0.02, 0.98))
    benchmark(solve_binary_energy, unary, edges, np.full(len(edges), 0.5))
    _report(benchmark, NUM_FRAMES)


def test_end_to_end(benchmark, frames):
    attention = np.zeros(frames.shape[:3], dtype=np.float32)
    attention[:, 100:300, 150:350] = 0.9  # a box where the object is, as the encoder's attention would be
    benchmark.pedantic(segment_frames, args=(frames, attention, CONFIG), rounds=3, iterations=1)
    _report(benchmark, NUM_FRAMES)


def test_end_to_end_without_attention(benchmark, frames):
    benchmark.pedantic(segment_frames, args=(frames, None, CONFIG), rounds=3, iterations=1)
    _report(benchmark, NUM_FRAMES)
