"""Object masks for weakly labelled videos (paper §3.2): the videos, their relevant intervals, and the per-video
driver around the graph cut of ``wsvs.runtime.videoseg``; no torch.

For each video, a frame model (the encoder, supplied by ``wsvs.training.segment_videos``) scores every frame
for the video's class (y · f_enc(v)); frames over the threshold that form a run of MORE than ``min_interval``
consecutive frames are a relevant interval. Each interval is segmented on its own by the spatio-temporal graph
cut with the model's attention for the class as the attention term; frames outside every interval get no
mask. Without a model every frame is relevant and the graph cut uses motion and appearance alone.

Output, per video: ``<out>/<video_id>/<frame:05d>.png`` (0/255, frame index from 0 as in DAVIS) and
``<out>/<video_id>.json``, written last: its presence marks the video done, so a rerun after a kill skips
it. Unreadable videos are reported, listed in ``<out>/failures.json`` and skipped.
"""

from __future__ import annotations

import functools
import itertools
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import av
import cv2
import numpy as np
from tqdm import tqdm

from .errors import InputError
from .executor import ExecutorConfig, map_unordered
from .io import VIDEO_SUFFIXES, is_hidden, read_json, write_binary_png, write_json
from .progress import progress_bar
from .video_reader import VideoReader, frame_files
from .videoseg import VideoSegConfig, segment_frames

MANIFEST_NAME = "videos.json"  # optional {video path relative to the videos folder: class name}
SCORE_BATCH = 32  # frames scored per model call: bounds memory while scoring a long video
# Decoding and input problems that make one video unusable; the batch goes on without it.
VIDEO_ERRORS = (av.FFmpegError, InputError, OSError)


class FrameModel(Protocol):
    """What the driver needs of a model: class scores and per-class attention of RGB frames."""

    @property
    def class_names(self) -> list[str]: ...

    def scores(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, C) class probabilities."""

    def attention(self, frames: np.ndarray, class_index: int) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, H, W) attention of one class in [0, 1]."""


@dataclass
class SegmentVideosConfig:
    threshold: float = 0.5  # a frame is relevant when its class probability is above this
    min_interval: int = 5  # a relevant interval has MORE than this many consecutive relevant frames
    max_interval: int = 200  # longer runs are cut into near-equal pieces: bounds memory and graph size
    # Frames are downscaled so that their longer side is at most this before scoring, attention and
    # segmentation (videoseg.work_long_side may shrink them further for the graph); masks are at frame size.
    max_side: int = 480
    attention_scales: tuple[float, ...] | None = None  # the encoder's CAM input scales; None: the checkpoint's own
    videoseg: VideoSegConfig = field(default_factory=VideoSegConfig)
    # "graphcut" is §3.2; "cam_threshold" thresholds the attention per pixel instead (the CAM baseline of the
    # ablation, on the same intervals).
    method: str = "graphcut"
    cam_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in ("graphcut", "cam_threshold"):
            raise ValueError(f"method must be graphcut or cam_threshold, got {self.method!r}")


@dataclass(frozen=True)
class VideoSource:
    video_id: str
    path: Path  # a video file, or a folder of frame images
    relative: str  # path relative to the videos folder, as reported in the outputs
    class_name: str | None


def relevant_intervals(
    relevant: Sequence[bool] | np.ndarray, min_length: int = 5, max_length: int | None = None
) -> list[tuple[int, int]]:
    """``[start, end)`` runs of consecutive relevant frames longer than ``min_length`` frames.

    Runs longer than ``max_length`` are cut into the fewest near-equal pieces of at most that length.
    """
    flags = np.concatenate([[False], np.asarray(relevant, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    intervals: list[tuple[int, int]] = []
    for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        if end - start <= min_length:
            continue
        pieces = 1 if max_length is None else math.ceil((end - start) / max_length)
        bounds = np.linspace(start, end, pieces + 1).round().astype(int).tolist()
        intervals.extend(itertools.pairwise(bounds))
    return intervals


# -- the videos ------------------------------------------------------------------------------------------------


def find_videos(videos_dir: Path) -> list[VideoSource]:
    """The videos under ``videos_dir``: video files (class from ``videos.json`` or the parent folder name)
    or, when there are none, DAVIS-style frame folders (``JPEGImages/480p/<seq>/`` or ``<seq>/``)."""
    if not videos_dir.is_dir():
        raise InputError(videos_dir, "videos folder not found")
    manifest_path = videos_dir / MANIFEST_NAME
    manifest: dict[str, str] = read_json(manifest_path) if manifest_path.is_file() else {}
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise InputError(manifest_path, "must map video paths (relative to its folder) or sequence names to classes")

    # The manifest keys a video file by its relative path and a frame folder by its sequence name.
    sources, keys = _video_files(videos_dir, manifest) or _frame_folders(videos_dir, manifest)
    if not sources:
        raise InputError(videos_dir, "holds no video files and no folders of frame images")
    unknown = sorted(set(manifest) - keys)
    if unknown:
        raise InputError(manifest_path, f"lists videos that are not in the folder: {', '.join(unknown[:5])}")
    seen: dict[str, str] = {}
    for source in sources:
        if source.video_id in seen:
            raise InputError(videos_dir, f"two videos share the id {source.video_id!r}: "
                             f"{seen[source.video_id]} and {source.relative}")
        seen[source.video_id] = source.relative
    return sources


def _video_files(videos_dir: Path, manifest: dict[str, str]) -> tuple[list[VideoSource], set[str]] | None:
    """The video files under ``videos_dir`` and their manifest keys; None when there are none."""
    files = sorted(p for p in videos_dir.rglob("*")
                   if p.is_file() and not is_hidden(p) and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        return None
    sources, keys = [], set()
    for path in files:
        relative = path.relative_to(videos_dir).as_posix()
        folder_class = path.parent.name if path.parent != videos_dir else None
        sources.append(VideoSource(path.stem, path, relative, manifest.get(relative, folder_class)))
        keys.add(relative)
    return sources, keys


def _frame_folders(videos_dir: Path, manifest: dict[str, str]) -> tuple[list[VideoSource], set[str]]:
    """The DAVIS-style frame folders under ``videos_dir`` and their manifest keys (sequence names)."""
    frames_root = videos_dir / "JPEGImages" / "480p"
    if not frames_root.is_dir():
        frames_root = videos_dir
    sources, keys = [], set()
    for folder in sorted(p for p in frames_root.iterdir() if p.is_dir() and frame_files(p)):
        relative = folder.relative_to(videos_dir).as_posix()
        sources.append(VideoSource(folder.name, folder, relative, manifest.get(folder.name)))
        keys.add(folder.name)
    return sources, keys


def downscale(frame: np.ndarray, max_side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def upscale_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask back at frame size; bilinear on 0/1 then 0.5 keeps edges smoother than nearest."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5


# -- one video -------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """What the first pass over a video finds."""

    frames: int
    height: int
    width: int
    fps: float | None
    scores: list[float] | None  # the class probability of every frame; None without a model


def segment_video(
    source: VideoSource, out_dir: Path, config: SegmentVideosConfig, model: FrameModel | None
) -> dict[str, Any]:
    """Segment the relevant intervals of one video; write its masks, then its JSON record (returned).

    ``model`` None means no attention: every frame is relevant and the graph cut uses motion and appearance.
    """
    started = time.perf_counter()
    class_index = None if model is None else model.class_names.index(source.class_name)
    score = None if model is None else lambda frames: model.scores(frames)[:, class_index]
    scan = _scan_frames(source, config.max_side, score)
    relevant = np.ones(scan.frames, bool) if scan.scores is None else np.asarray(scan.scores) > config.threshold
    intervals = relevant_intervals(relevant, config.min_interval, config.max_interval)
    scoring_s = time.perf_counter() - started

    attend = None if model is None else lambda frames: model.attention(frames, class_index)
    timings = _mask_intervals(source, intervals, scan, out_dir / source.video_id, config, attend)
    record = {
        "video": source.relative,
        "class": source.class_name,
        "frames": scan.frames,
        "fps": scan.fps,
        "width": scan.width,
        "height": scan.height,
        "intervals": [list(interval) for interval in intervals],
        "masked_frames": sum(end - start for start, end in intervals),
        "scores": None if scan.scores is None else [round(s, 6) for s in scan.scores],
        "timings_s": {"decode_and_score": round(scoring_s, 4), **timings,
                      "total": round(time.perf_counter() - started, 4)},
    }
    write_json(out_dir / f"{source.video_id}.json", record)  # last: marks the video done
    return record


def _scan_frames(source: VideoSource, max_side: int, score: Callable[[np.ndarray], np.ndarray] | None) -> _Scan:
    """Pass 1: frame count, size, rate and class scores, streaming (only one scoring batch in memory)."""
    scores: list[float] = []
    batch: list[np.ndarray] = []
    frame_count, size = 0, None
    reader = VideoReader(source.path)
    for frame in reader:
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:
            raise InputError(source.path, f"frame {frame_count} is {frame.shape[1]}x{frame.shape[0]}, "
                             f"the first was {size[1]}x{size[0]}")
        frame_count += 1
        if score is not None:
            batch.append(downscale(frame, max_side))
            if len(batch) == SCORE_BATCH:
                scores.extend(score(np.stack(batch)).tolist())
                batch.clear()
    if score is not None and batch:
        scores.extend(score(np.stack(batch)).tolist())
    if size is None:
        raise InputError(source.path, "has no decodable frames")
    fps = None if reader.fps is None else float(reader.fps)
    return _Scan(frame_count, *size, fps, None if score is None else scores)


def _mask_intervals(source: VideoSource, intervals: list[tuple[int, int]], scan: _Scan, mask_dir: Path,
                    config: SegmentVideosConfig, attend: Callable[[np.ndarray], np.ndarray] | None) -> dict[str, float]:
    """Pass 2: segment each interval and write its masks at frame size; the seconds spent, by stage."""
    shutil.rmtree(mask_dir, ignore_errors=True)  # leftovers of an interrupted run
    attention_s, write_s = 0.0, 0.0
    stage_s: dict[str, float] = {}
    for start, frames in _interval_frames(source, intervals, scan.frames, config.max_side):
        tic = time.perf_counter()
        attention = None if attend is None else attend(frames)
        attention_s += time.perf_counter() - tic
        masks, stages = _segment_interval(frames, attention, config, source.path)
        for stage, seconds in stages.items():
            stage_s[stage] = stage_s.get(stage, 0.0) + seconds
        tic = time.perf_counter()
        for offset, mask in enumerate(masks):
            write_binary_png(mask_dir / f"{start + offset:05d}.png", upscale_mask(mask, scan.height, scan.width))
        write_s += time.perf_counter() - tic
    return {
        "attention": round(attention_s, 4),
        **{f"videoseg_{stage}": round(seconds, 4) for stage, seconds in stage_s.items()},
        "write_masks": round(write_s, 4),
    }


def _interval_frames(source: VideoSource, intervals: list[tuple[int, int]], frame_count: int,
                     max_side: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame index, downscaled frames (T, H, W, 3)) of each interval, holding one interval at a time."""
    pending = list(intervals)
    held: list[np.ndarray] = []
    for index, frame in enumerate(VideoReader(source.path)):
        if not pending:
            break
        start, end = pending[0]
        if index < start:
            continue
        held.append(downscale(frame, max_side))
        if index < end - 1:
            continue
        frames = np.stack(held)
        held.clear()
        pending.pop(0)
        yield start, frames
    if pending:
        raise InputError(source.path, f"decoded fewer frames the second time (expected {frame_count})")


def _segment_interval(frames: np.ndarray, attention: np.ndarray | None, config: SegmentVideosConfig,
                      path: Path) -> tuple[np.ndarray, dict[str, float]]:
    """Masks (T, H, W) bool of one interval by the configured method, and the graph cut's seconds by stage."""
    if config.method == "cam_threshold":
        if attention is None:
            raise InputError(path, "method cam_threshold needs attention (a --model)")
        return attention > config.cam_threshold, {}
    masks, info = segment_frames(frames, attention, config.videoseg)
    return masks, info["timings_s"]


# -- many videos -----------------------------------------------------------------------------------------------


def segment_sources(
    sources: list[VideoSource],
    out_dir: Path,
    config: SegmentVideosConfig,
    settings: dict[str, Any],
    load_model: Callable[[], FrameModel] | None = None,
    executor: ExecutorConfig | None = None,
) -> dict[str, Any]:
    """Segment ``sources`` into ``out_dir``, skipping the videos a previous run finished there.

    ``settings``: what makes the masks (model, configuration), kept in ``run.json``: a folder holding results
    of other settings is refused. ``load_model``: builds the frame model once in each worker process
    (picklable); None: no attention. ``executor``: where the videos are segmented (default: here, one at a
    time). Returns a summary: counts and failures.
    """
    _claim_output(out_dir, settings)
    todo = [source for source in sources if not (out_dir / f"{source.video_id}.json").is_file()]
    failures: dict[str, dict[str, str]] = {}
    records: list[dict[str, Any]] = []
    work = functools.partial(_segment_or_fail, out_dir=out_dir, config=config)
    setup = functools.partial(_load_or_none, load_model)
    results = map_unordered(work, todo, executor or ExecutorConfig(), setup)
    with progress_bar(total=len(todo), unit="video", desc="segment-videos", disable=not todo) as progress:
        for source, record, reason in results:
            progress.update()
            if record is not None:
                records.append(record)
                continue
            tqdm.write(f"wsvs segment-videos: skipped {source.path}: {reason}", file=sys.stderr)
            failures[source.video_id] = {"video": source.relative, "error": reason}
            write_json(out_dir / "failures.json", dict(sorted(failures.items())))
    write_json(out_dir / "failures.json", dict(sorted(failures.items())))
    return {
        "videos": len(sources),
        "already_done": len(sources) - len(todo),
        "segmented": len(records),
        "failed": len(failures),
        "intervals": sum(len(record["intervals"]) for record in records),
        "masked_frames": sum(record["masked_frames"] for record in records),
        "frames": sum(record["frames"] for record in records),
        "failures": failures,
    }


def _claim_output(out_dir: Path, settings: dict[str, Any]) -> None:
    settings_path = out_dir / "run.json"
    if settings_path.is_file() and read_json(settings_path) != settings:
        raise InputError(out_dir, "holds results made with other settings (see run.json); use a new --out")
    write_json(settings_path, settings)


def _load_or_none(load_model: Callable[[], FrameModel] | None) -> FrameModel | None:
    return None if load_model is None else load_model()


def _segment_or_fail(
    model: FrameModel | None, source: VideoSource, out_dir: Path, config: SegmentVideosConfig
) -> tuple[VideoSource, dict[str, Any] | None, str | None]:
    """(source, record, None) on success; (source, None, one-line reason) for an unusable video."""
    try:
        return source, segment_video(source, out_dir, config, model), None
    except VIDEO_ERRORS as exc:
        shutil.rmtree(out_dir / source.video_id, ignore_errors=True)  # no half-masked video left behind
        reason = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        return source, None, " ".join(reason.split())
