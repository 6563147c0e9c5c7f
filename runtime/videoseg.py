"""Spatio-temporal object segmentation of one relevant video interval (Hong et al., CVPR 2017, Sec. 3.2).

Nodes are the SLIC superpixels of every frame; edges join spatially adjacent superpixels and superpixels of
consecutive frames linked by optical flow. The energy (Eq. 3-5)

    E(L) = sum_{t,i} -lambda_a log A(l) - lambda_m log M(l) - lambda_c log C(l)
           + sum_{spatial} [l_i != l_j] w phi_s phi_c + sum_{temporal} [l_i != l_j] w phi_t phi_c

with A the pooled attention, M the fraction of the superpixel inside the motion boundaries
(Papazoglou & Ferrari, ICCV 2013) and C the foreground posterior of two colour GMMs, is minimised exactly
by one graph cut over the whole interval. Without attention the GMMs start from the motion map instead:
the motion + appearance configuration of Papazoglou & Ferrari.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .flow import dis_flow, forward_flows
from .gmm import fit_weighted_gmm
from .graphcut import solve_binary_energy
from .motion import inside_outside_map
from .pooling import superpixel_pool
from .superpixels import flow_links, lab_superpixels, rgb_to_lab, superpixel_adjacency


@dataclass
class VideoSegConfig:
    """Weights and settings of the video segmentation energy; the lambdas are the paper's."""

    lambda_a: float = 2.0  # attention unary weight (0 drops the term)
    lambda_m: float = 1.0  # motion (inside-outside) unary weight
    lambda_c: float = 2.0  # appearance (colour GMM) unary weight
    work_long_side: int = 480  # frames are segmented at this longer side (0: as given); masks at input size
    num_superpixels: int = 800  # per frame
    compactness: float = 10.0  # SLIC m: spatial vs Lab colour distance
    slic_iterations: int = 4
    flow_preset: str = "fast"  # DIS preset: ultrafast, fast, medium
    motion_downscale: int = 4  # the inside-outside map is computed on the flow shrunk this many times
    boundary_threshold: float = 0.2  # normalised flow-gradient strength above which a pixel is a boundary
    angle_scale: float = 1.0  # direction-change factor 1 - exp(-s dtheta^2) for weak boundaries
    gmm_components: int = 5
    attention_threshold: float = 0.5  # superpixels above it seed the foreground GMM, the rest the background
    pairwise_weight: float = 4.0  # scale of the Potts terms (chosen on DAVIS dev; 2 and 8 score lower on train)
    colour_sigma: float = 10.0  # phi_c bandwidth, in Lab units
    probability_floor: float = 0.02  # unary probabilities are clipped to [floor, 1 - floor]
    # The attention unary's own floor. A CAM is a relative score, near 0 on most of an object outside its
    # discriminative part; at the general floor its -log vetoes the rest of the body that motion and colour
    # find. A higher floor (0.3, with appearance_seeds = "unary") scored better on the synthetic world's videos,
    # by most with randomly rotated bodies: see the §3.2 ablation in benchmarks/RESULTS.md.
    attention_floor: float = 0.02
    # What seeds the colour GMMs: "attention" thresholds the attention (the paper's words); "unary" thresholds
    # the foreground probability of the attention and motion unaries together, so the foreground model learns
    # the colours of the moving body as well as those of the attended part.
    appearance_seeds: str = "attention"
    # The inside-outside map of a frame averaged with that of w frames each side. 1 (with motion_downscale 8)
    # scored higher on DAVIS-2016 train but lower on the 4 dev sequences: see benchmarks/RESULTS.md.
    motion_window: int = 0
    # Superpixels, pooling and the graph's edges as compiled loops (numba); False runs the numpy reference
    # they are tested against (same superpixels and graph, several times slower).
    compiled: bool = True
    # Where superpixel pooling runs: "gpu" on the CUDA kernels (wsvs.cuda_kernels.pooling), "cpu", or "auto":
    # the GPU when one is present and the kernels load on it, else the CPU.
    pooling: str = "auto"

    def __post_init__(self) -> None:
        if self.appearance_seeds not in ("attention", "unary"):
            raise ValueError(f"appearance_seeds must be 'attention' or 'unary', not {self.appearance_seeds!r}")
        if self.motion_window < 0:
            raise ValueError(f"motion_window must be >= 0, got {self.motion_window}")
        if self.pooling not in ("auto", "cpu", "gpu"):
            raise ValueError(f"pooling must be 'auto', 'cpu' or 'gpu', not {self.pooling!r}")
        for name in ("probability_floor", "attention_floor"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must lie in (0, 0.5), got {getattr(self, name)}")


def _check_inputs(frames: np.ndarray, attention: np.ndarray | None) -> None:
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    if attention is not None and attention.shape != frames.shape[:3]:
        raise ValueError(f"attention must be (T, H, W) = {frames.shape[:3]}, got {attention.shape}")
    if attention is None and len(frames) < 2:
        raise ValueError("without attention, segmentation needs motion: at least 2 frames")


def _work_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    if long_side <= 0 or max(height, width) <= long_side:
        return height, width
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _negative_log(probability: np.ndarray, floor: float) -> np.ndarray:
    """Unary costs (N, 2) -log P(l=0), -log P(l=1) of a foreground probability (N,)."""
    p = np.clip(probability, floor, 1.0 - floor)
    return -np.log(np.stack([1.0 - p, p], axis=1))


def _foreground_posterior(log_ratio: np.ndarray) -> np.ndarray:
    """P(fg) = 1 / (1 + exp(log_ratio)) of log_ratio = log p_bg - log p_fg (clipped so exp stays finite)."""
    return 1.0 / (1.0 + np.exp(np.clip(log_ratio, -50.0, 50.0)))


def _appearance(colours: np.ndarray, foreground_score: np.ndarray, config: VideoSegConfig) -> np.ndarray | None:
    """Foreground posterior p_fg / (p_fg + p_bg) of colour GMMs seeded by thresholding the score.

    The foreground GMM is fitted to the superpixels above the threshold with the score as sample weight,
    the background GMM to the rest with weight 1 - score. None when either side has no weight.
    """
    seeds = foreground_score > config.attention_threshold
    fg_weights = np.where(seeds, foreground_score, 0.0)
    bg_weights = np.where(seeds, 0.0, 1.0 - foreground_score)
    if not (fg_weights.sum() > 0 and bg_weights.sum() > 0):
        return None
    fg = fit_weighted_gmm(colours, fg_weights, config.gmm_components)
    bg = fit_weighted_gmm(colours, bg_weights, config.gmm_components)
    return _foreground_posterior(bg.log_likelihood(colours) - fg.log_likelihood(colours))


class _Clock:
    """Seconds per stage, summed when a stage comes back (flow, resize)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass
class _Nodes:
    """The graph's nodes, the superpixels of every frame (node of superpixel i in frame t: t * per_frame + i),
    with their mean features."""

    labels: np.ndarray  # (T, H, W) superpixel index of each pixel
    per_frame: int
    present: np.ndarray  # (N,) bool: the node covers at least one pixel
    lab: np.ndarray  # (N, 3) mean Lab colour
    rgb: np.ndarray  # (N, 3) mean RGB colour
    motion: np.ndarray | None  # (N,) fraction inside the motion boundaries, when motion is used
    score: np.ndarray | None  # (N,) what seeds the appearance: the attention, else the motion


def segment_frames(frames: np.ndarray, attention: np.ndarray | None, config: VideoSegConfig) -> tuple[np.ndarray, dict]:
    """Segment the object of one relevant interval: frames (T, H, W, 3) uint8 RGB -> masks (T, H, W) bool.

    ``attention`` (T, H, W) float32 in [0, 1] is the class's multi-scale attention per frame, or None for
    the motion + appearance configuration (the GMMs then start from the inside-outside map, as they do
    when lambda_a is 0, except on a single frame, which has no motion: there the attention seeds them).
    A lambda of 0 drops its term. ``info`` holds per-stage ``timings_s``, the node and
    edge counts and the work size.
    """
    frames = np.asarray(frames)
    _check_inputs(frames, attention)
    clock = _Clock()
    num_frames, height, width = frames.shape[:3]
    frames, attention = _to_work_size(frames, attention, config.work_long_side)
    use_attention = attention is not None and config.lambda_a > 0
    use_appearance = config.lambda_c > 0
    use_motion = num_frames > 1 and (config.lambda_m > 0 or (use_appearance and not use_attention))
    # A single frame has no motion: there the attention seeds the colour GMMs even when lambda_a drops its unary.
    seed_attention = attention if use_attention or not use_motion else None
    clock.lap("resize")

    nodes, flows = _nodes(frames, seed_attention, use_motion, config, clock)
    unary, appearance = _unaries(nodes, use_attention, config)
    clock.lap("gmm")
    edges, weights, num_spatial = _edges(nodes, flows, config)
    clock.lap("edges")
    foreground = solve_binary_energy(unary, edges, weights)
    clock.lap("graphcut")

    masks = foreground.reshape(num_frames, nodes.per_frame)[np.arange(num_frames)[:, None, None], nodes.labels]
    if masks.shape[1:] != (height, width):
        masks = np.stack(
            [cv2.resize(m.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5 for m in masks]
        )
    clock.lap("resize")
    info = {
        "timings_s": clock.timings,
        "num_superpixels": int(nodes.present.sum()),
        "num_spatial_edges": num_spatial,
        "num_temporal_edges": len(edges) - num_spatial,
        "work_size": list(frames.shape[1:3]),
        "terms": {
            "attention": use_attention,
            "motion": nodes.motion is not None and config.lambda_m > 0,
            "appearance": appearance is not None,
        },
    }
    return masks, info


def _to_work_size(frames: np.ndarray, attention: np.ndarray | None,
                  long_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames (area) and attention (bilinear) shrunk to the work size: longer side at most ``long_side``."""
    height, width = frames.shape[1:3]
    work_h, work_w = _work_size(height, width, long_side)
    if (work_h, work_w) == (height, width):
        return frames, attention
    frames = np.stack([cv2.resize(f, (work_w, work_h), interpolation=cv2.INTER_AREA) for f in frames])
    if attention is not None:
        attention = np.stack([cv2.resize(a, (work_w, work_h), interpolation=cv2.INTER_LINEAR) for a in attention])
    return frames, attention


def _nodes(frames: np.ndarray, attention: np.ndarray | None, use_motion: bool, config: VideoSegConfig,
           clock: _Clock) -> tuple[_Nodes, list[np.ndarray]]:
    """Superpixels of every frame, the forward flows between frames, and each node's mean colour, motion and
    attention (``attention`` None: not used)."""
    lab = rgb_to_lab(frames)
    labels = np.stack(
        [
            lab_superpixels(f, config.num_superpixels, config.compactness, config.slic_iterations,
                            compiled=config.compiled)
            for f in lab
        ]
    )
    per_frame = int(labels.max()) + 1
    clock.lap("superpixels")
    flows = forward_flows(frames, config.flow_preset)
    clock.lap("flow")

    maps = [lab.transpose(0, 3, 1, 2), frames.transpose(0, 3, 1, 2)]
    if use_motion:
        maps.append(_inside_maps(frames, flows, config, clock)[:, None])
    if attention is not None:
        maps.append(attention[:, None])
    # one planar (T, C, H, W) float32 array, written once (np.concatenate would keep the inputs' channel-last
    # layout and leave a strided array to pool)
    values = np.empty((len(frames), sum(m.shape[1] for m in maps), *frames.shape[1:3]), dtype=np.float32)
    np.concatenate(maps, axis=1, out=values)
    _, counts, means = _pool(labels, values, per_frame, config)
    means = means.reshape(len(frames) * per_frame, -1)
    motion = means[:, 6] if use_motion else None
    nodes = _Nodes(
        labels=labels,
        per_frame=per_frame,
        present=counts.reshape(-1) > 0,
        lab=means[:, 0:3].astype(np.float64),
        rgb=means[:, 3:6].astype(np.float64),
        motion=motion,
        score=means[:, -1] if attention is not None else motion,
    )
    clock.lap("pooling")
    return nodes, flows


@functools.cache
def _auto_gpu_executor():
    """The CUDA pooling kernels' executor when a GPU is present and they load on it, else None (CPU pooling)."""
    from wsvs.cuda_kernels import pooling

    if not pooling.is_available():
        return None
    try:
        return pooling.default_executor()
    except RuntimeError:  # no NVRTC to compile the kernels, or they do not load on this GPU
        return None


def _pool(labels: np.ndarray, values: np.ndarray, per_frame: int,
          config: VideoSegConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``superpixel_pool`` on the configured device: the CUDA kernels (through their loader) or the CPU."""
    executor = None
    if config.pooling == "gpu":
        from wsvs.cuda_kernels import pooling

        executor = pooling.default_executor()  # no GPU: its one-line CudaError
    elif config.pooling == "auto":
        executor = _auto_gpu_executor()
    if executor is not None:
        from wsvs.cuda_kernels import pooling

        return pooling.superpixel_pool(executor, labels, values, per_frame)
    return superpixel_pool(labels, values, per_frame, compiled=config.compiled)


def _inside_maps(frames: np.ndarray, flows: list[np.ndarray], config: VideoSegConfig, clock: _Clock) -> np.ndarray:
    """(T, H, W) float32 inside-outside map of every frame from its motion boundaries, 0 or 1 (a fraction of
    frames with ``motion_window``)."""
    # The last frame has no successor: its boundaries come from the flow back to the previous frame.
    last = dis_flow(frames[-1], frames[-2], config.flow_preset)
    clock.lap("flow")
    inside = np.stack(
        [
            inside_outside_map(f, config.motion_downscale, config.boundary_threshold, config.angle_scale)
            for f in [*flows, last]
        ]
    ).astype(np.float32)
    if config.motion_window > 0:
        # mean over the frames t - w .. t + w (fewer at the ends): a single frame's broken boundary no longer
        # drops the object, as Papazoglou & Ferrari accumulate the map over several frames
        window = config.motion_window
        totals = np.concatenate([np.zeros_like(inside[:1]), np.cumsum(inside, axis=0)])
        ends = np.minimum(np.arange(len(inside)) + window + 1, len(inside))
        starts = np.maximum(np.arange(len(inside)) - window, 0)
        inside = (totals[ends] - totals[starts]) / (ends - starts)[:, None, None].astype(np.float32)
    clock.lap("motion")
    return inside


def _unaries(nodes: _Nodes, use_attention: bool, config: VideoSegConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Unary costs (N, 2) of the attention, motion and appearance terms, and the appearance's foreground
    posterior per node (None when the colour GMMs are not used or have nothing to fit)."""
    unary = np.zeros((len(nodes.present), 2))
    if use_attention:
        unary += config.lambda_a * _negative_log(nodes.score, config.attention_floor)
    if nodes.motion is not None and config.lambda_m > 0:
        unary += config.lambda_m * _negative_log(nodes.motion, config.probability_floor)
    appearance = None
    if config.lambda_c > 0:
        # unary costs are -log p, so cost_1 - cost_0 is the log-ratio of background to foreground
        joint = config.appearance_seeds == "unary" and use_attention
        seeds = _foreground_posterior(unary[:, 1] - unary[:, 0]) if joint else nodes.score
        fitted = _appearance(nodes.rgb[nodes.present], seeds[nodes.present], config)
        if fitted is not None:
            appearance = np.full(len(unary), 0.5)
            appearance[nodes.present] = fitted
            unary += config.lambda_c * _negative_log(appearance, config.probability_floor)
    return unary, appearance


def _edges(nodes: _Nodes, flows: list[np.ndarray], config: VideoSegConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Node pairs (E, 2), their Potts weights (E,) and how many of them are spatial (they come first).

    Weights: shared boundary length in grid steps (phi_s) or flow-link fraction (phi_t), times colour
    similarity phi_c = exp(-|dLab|^2 / (2 sigma^2)).
    """
    labels, per_frame = nodes.labels, nodes.per_frame
    num_frames, work_h, work_w = labels.shape
    step = np.sqrt(work_h * work_w / config.num_superpixels)
    edges, strengths = [], []
    for t in range(num_frames):
        pairs, shared = superpixel_adjacency(labels[t], compiled=config.compiled)
        edges.append(pairs + t * per_frame)
        strengths.append(shared / step)
    num_spatial = sum(len(e) for e in edges)
    for t in range(num_frames - 1):
        pairs, fraction = flow_links(labels[t], labels[t + 1], flows[t], compiled=config.compiled)
        edges.append(pairs + np.array([t * per_frame, (t + 1) * per_frame]))
        strengths.append(fraction)
    edges = np.concatenate(edges)
    colour_gap = ((nodes.lab[edges[:, 0]] - nodes.lab[edges[:, 1]]) ** 2).sum(axis=1)
    weights = config.pairwise_weight * np.concatenate(strengths) * np.exp(-colour_gap / (2 * config.colour_sigma**2))
    return edges, weights, num_spatial
