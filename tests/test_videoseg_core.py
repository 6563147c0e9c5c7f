"""The torch-free video segmentation core: each piece against a known answer, then DAVIS."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from wsvs.runtime.flow import dis_flow
from wsvs.runtime.gmm import fit_weighted_gmm
from wsvs.runtime.graphcut import binary_energy, solve_binary_energy
from wsvs.runtime.io import read_image_rgb, read_label_png
from wsvs.runtime.metrics import binary_iou
from wsvs.runtime.motion import inside_outside, inside_outside_map
from wsvs.runtime.pooling import superpixel_pool
from wsvs.runtime.superpixels import flow_links, slic_superpixels, superpixel_adjacency
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random colour texture (H, W, 3) uint8: distinct, trackable structure everywhere."""
    noise = np.random.default_rng(seed).random((height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    return (cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def _disc(height: int, width: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2


def test_graph_cut_equals_brute_force_minimum():
    rng = np.random.default_rng(0)
    for _ in range(60):
        num_nodes = int(rng.integers(1, 10))
        unary = rng.normal(scale=2.0, size=(num_nodes, 2))
        pairs = [(i, j) for i, j in itertools.combinations(range(num_nodes), 2) if rng.random() < 0.5]
        edges = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        weights = rng.random(len(edges)) * 3.0
        found = binary_energy(solve_binary_energy(unary, edges, weights), unary, edges, weights)
        best = min(
            binary_energy(np.array(labels), unary, edges, weights)
            for labels in itertools.product((0, 1), repeat=num_nodes)
        )
        assert found == pytest.approx(best, abs=1e-9)


def test_graph_cut_rejects_negative_potts_weights():
    with pytest.raises(ValueError, match="non-negative"):
        solve_binary_energy(np.zeros((2, 2)), np.array([[0, 1]]), np.array([-1.0]))


def test_weighted_gmm_recovers_a_sampled_mixture():
    rng = np.random.default_rng(1)
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 12.0, -6.0]])
    covariances = np.array(
        [np.diag([1.0, 2.0, 0.5]), [[2.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]], np.eye(3) * 1.5]
    )
    component = rng.choice(3, size=20000, p=weights)
    chol = np.linalg.cholesky(covariances)
    samples = means[component] + np.einsum("nij,nj->ni", chol[component], rng.normal(size=(len(component), 3)))
    fitted = fit_weighted_gmm(samples, np.ones(len(samples)), num_components=3)
    order = [int(np.argmin(np.linalg.norm(fitted.means - m, axis=1))) for m in means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(fitted.weights[order], weights, atol=0.02)
    np.testing.assert_allclose(fitted.means[order], means, atol=0.1)
    np.testing.assert_allclose(fitted.covariances[order], covariances, atol=0.15)


def test_weighted_gmm_ignores_zero_weight_samples_and_follows_the_weights():
    rng = np.random.default_rng(2)
    core = rng.normal(size=(2000, 3))
    outliers = rng.normal(loc=50.0, size=(500, 3))
    alone = fit_weighted_gmm(core, np.ones(len(core)), num_components=2)
    with_zeros = fit_weighted_gmm(np.concatenate([core, outliers]), np.r_[np.ones(2000), np.zeros(500)], 2)
    np.testing.assert_array_equal(with_zeros.means, alone.means)
    np.testing.assert_array_equal(with_zeros.covariances, alone.covariances)
    # One Gaussian over two clusters: its mean is the weight-averaged cluster centre.
    one = fit_weighted_gmm(np.concatenate([core, outliers]), np.r_[np.ones(2000), np.full(500, 4.0)], 1)
    np.testing.assert_allclose(one.means[0], (core.sum(0) + 4 * outliers.sum(0)) / 4000, atol=1e-9)


def test_inside_outside_fills_a_closed_ring():
    ring = np.zeros((120, 160), dtype=np.uint8)
    cv2.circle(ring, (70, 60), 35, 1, thickness=2)
    assert binary_iou(inside_outside(ring > 0), _disc(120, 160, (60, 70), 35)) > 0.95


def test_inside_outside_map_marks_a_disc_moving_over_a_static_background():
    disc = _disc(240, 320, (110, 150), 60)
    flow = np.zeros((240, 320, 2), dtype=np.float32)
    flow[disc] = (3.0, -2.0)
    flow += np.random.default_rng(3).normal(scale=0.05, size=flow.shape).astype(np.float32)  # flow noise
    flow = cv2.GaussianBlur(flow, (0, 0), 2.0)  # estimated flow has soft motion boundaries
    assert binary_iou(inside_outside_map(flow), disc) > 0.9


def test_superpixel_pool_equals_a_direct_loop():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 7, size=(2, 9, 11)).astype(np.int32)
    labels[1][labels[1] == 3] = 4  # superpixel 3 of image 1 is empty
    values = rng.random((2, 3, 9, 11)).astype(np.float32)
    sums, counts, means = superpixel_pool(labels, values, 7)
    assert sums.dtype == np.float64 and counts.dtype == np.int64 and means.dtype == np.float32
    for b, s in itertools.product(range(2), range(7)):
        inside = labels[b] == s
        assert counts[b, s] == inside.sum()
        for c in range(3):
            direct = sum(float(v) for v in values[b, c][inside])
            assert sums[b, s, c] == pytest.approx(direct, abs=1e-9)
            assert means[b, s, c] == (np.float32(direct / inside.sum()) if inside.any() else 0.0)
    with pytest.raises(ValueError, match="ids"):
        superpixel_pool(labels, values, 5)


def test_superpixels_cover_every_pixel_and_respect_colour_edges():
    image = _texture(150, 200, seed=5) // 4
    image[:, 97:] += 150  # a strong vertical colour edge off the SLIC grid
    labels = slic_superpixels(image, num_segments=120, compactness=10.0)
    assert labels.shape == (150, 200) and labels.dtype == np.int32
    num = labels.max() + 1
    assert np.array_equal(np.unique(labels), np.arange(num))  # every id used, no gaps
    assert 100 <= num <= 140
    straddling = set(np.unique(labels[:, :97])) & set(np.unique(labels[:, 97:]))
    assert not straddling


def test_spatial_adjacency_counts_shared_boundary():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]], dtype=np.int32)
    pairs, shared = superpixel_adjacency(labels)
    assert dict(zip(map(tuple, pairs.tolist()), shared.tolist())) == {(0, 1): 2, (0, 2): 2, (1, 2): 1}


def test_flow_links_map_superpixels_of_a_translated_image():
    shift_x, shift_y = 6, 3
    canvas = _texture(140, 200, seed=6)
    first, second = canvas[10:130, 10:170], canvas[10 - shift_y : 130 - shift_y, 10 - shift_x : 170 - shift_x]
    labels = slic_superpixels(first, num_segments=60)
    # Ground truth: the second frame's superpixels are the first frame's, moved with the content.
    next_labels = np.full_like(labels, labels.max() + 1)  # uncovered strip: a new superpixel
    next_labels[shift_y:, shift_x:] = labels[:-shift_y, :-shift_x]
    flow = dis_flow(first, second, "medium")
    assert np.median(flow[..., 0]) == pytest.approx(shift_x, abs=0.1)
    assert np.median(flow[..., 1]) == pytest.approx(shift_y, abs=0.1)
    pairs, fraction = flow_links(labels, next_labels, flow)
    strongest = {}
    for (i, j), f in zip(pairs.tolist(), fraction.tolist()):
        if f > strongest.get(i, (None, 0.0))[1]:
            strongest[i] = (j, f)
    assert all(j == i for i, (j, _) in strongest.items())
    assert np.mean([f for _, f in strongest.values()]) > 0.85
    sizes = np.bincount(labels.ravel())
    totals = np.bincount(pairs[:, 0], weights=fraction, minlength=len(sizes))
    assert np.all(totals <= 1 + 1e-12)


def _moving_disc_video(num_frames: int = 6) -> tuple[np.ndarray, np.ndarray]:
    background = _texture(120, 160, seed=7)
    disc_colour = np.array([220, 40, 40], dtype=np.uint8)
    frames, truth = [], []
    for t in range(num_frames):
        disc = _disc(120, 160, (60, 50 + 4 * t), 22)
        frame = background.copy()
        frame[disc] = disc_colour
        frames.append(frame)
        truth.append(disc)
    return np.stack(frames), np.stack(truth)


def test_segment_frames_motion_and_appearance_find_a_moving_disc():
    frames, truth = _moving_disc_video()
    masks, info = segment_frames(frames, None, VideoSegConfig(num_superpixels=150))
    assert masks.shape == truth.shape and masks.dtype == bool
    assert np.mean([binary_iou(m, g) for m, g in zip(masks, truth)]) > 0.85
    assert info["terms"] == {"attention": False, "motion": True, "appearance": True}
    assert set(info["timings_s"]) >= {"superpixels", "flow", "motion", "pooling", "gmm", "edges", "graphcut"}


def test_zero_attention_weight_ignores_the_attention_maps():
    """lambda_a = 0 is the motion + appearance variant: its colour GMMs start from motion, so the attention
    passed along (for the encoder's frame choice) must not change the masks, even when it marks the
    background only."""
    frames, truth = _moving_disc_video()
    config = VideoSegConfig(lambda_a=0.0, num_superpixels=150)
    without, _ = segment_frames(frames, None, config)
    misleading, info = segment_frames(frames, (~truth).astype(np.float32), config)
    assert info["terms"] == {"attention": False, "motion": True, "appearance": True}
    assert np.array_equal(without, misleading)
    assert np.mean([binary_iou(m, g) for m, g in zip(misleading, truth)]) > 0.85


def test_segment_frames_attention_only_follows_the_attention():
    frames, truth = _moving_disc_video()
    # A soft attention over the disc is the only unary: lambda_m = lambda_c = 0.
    attention = np.stack([cv2.GaussianBlur(g.astype(np.float32), (0, 0), 3.0) for g in truth])
    config = VideoSegConfig(lambda_m=0.0, lambda_c=0.0, num_superpixels=150)
    masks, info = segment_frames(frames, attention, config)
    assert info["terms"] == {"attention": True, "motion": False, "appearance": False}
    assert np.mean([binary_iou(m, g) for m, g in zip(masks, truth)]) > 0.85


def test_unary_seeded_appearance_spreads_part_attention_over_the_moving_body():
    """The attention covers only a small part of a moving body of another colour (the failure of §3.2's
    attention); seeding the colour GMMs from attention and motion together, with the attention as a soft vote,
    recovers the body, where attention-seeded GMMs keep the mask near the part."""
    background = _texture(120, 160, seed=3)
    frames, truth, attention = [], [], []
    for t in range(8):
        centre = (60, 45 + 5 * t)
        body, part = _disc(120, 160, centre, 24), _disc(120, 160, (centre[0], centre[1] + 22), 8)
        frame = background.copy()
        frame[body] = (40, 140, 220)
        frame[part] = (250, 220, 20)
        frames.append(frame)
        truth.append(body | part)
        attention.append(cv2.GaussianBlur(part.astype(np.float32), (0, 0), 4.0) / 0.75)
    frames, truth = np.stack(frames), np.stack(truth)
    attention = np.clip(np.stack(attention), 0, 1)

    def mean_iou(config: VideoSegConfig) -> float:
        masks, _ = segment_frames(frames, attention, config)
        return float(np.mean([binary_iou(m, g) for m, g in zip(masks, truth)]))

    paper = mean_iou(VideoSegConfig(num_superpixels=200))
    soft = mean_iou(VideoSegConfig(num_superpixels=200, attention_floor=0.3, appearance_seeds="unary"))
    assert soft > 0.8 and soft > paper + 0.2, (paper, soft)


def test_videoseg_config_rejects_unknown_seeds_and_floors():
    with pytest.raises(ValueError, match="appearance_seeds"):
        VideoSegConfig(appearance_seeds="motion")
    with pytest.raises(ValueError, match="attention_floor"):
        VideoSegConfig(attention_floor=0.5)


def test_segment_frames_rejects_mismatched_attention():
    frames, _ = _moving_disc_video(2)
    with pytest.raises(ValueError, match="attention"):
        segment_frames(frames, np.zeros((2, 10, 10), np.float32), VideoSegConfig())


def test_davis_blackswan_motion_and_appearance(shared_data):
    root = shared_data / "davis2016_dev"
    paths = sorted((root / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[:20]
    frames = np.stack([read_image_rgb(p) for p in paths])
    truth = [read_label_png(root / "Annotations" / "480p" / "blackswan" / f"{p.stem}.png") > 0 for p in paths]
    masks, _ = segment_frames(frames, None, VideoSegConfig(work_long_side=320, num_superpixels=400))
    assert np.mean([binary_iou(m, g) for m, g in zip(masks, truth)]) > 0.80  # measured 0.87
