"""`wsvs segment-videos`: object masks for weakly labelled videos (paper §3.2).

For each video, the encoder scores every frame for the video's class (y · f_enc(v)); frames over the
threshold that form a run of MORE than ``min_interval`` consecutive frames are a relevant interval. Each
interval is segmented on its own by the spatio-temporal graph cut of ``wsvs.runtime.videoseg`` with the
multi-scale CAM of the class as the attention term; frames outside every interval get no mask.

Output, per video: ``<out>/<video_id>/<frame:05d>.png`` (0/255, frame index from 0 as in DAVIS) and
``<out>/<video_id>.json``, written last: its presence marks the video done, so a rerun after a kill skips
it. Unreadable videos are reported, listed in ``<out>/failures.json`` and skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
from tqdm import tqdm

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import VIDEO_SUFFIXES, read_json, write_binary_png, write_json
from wsvs.runtime.video_reader import VideoReader, frame_files
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames

if TYPE_CHECKING:
    from wsvs.training.cam import FrameAttention

MANIFEST_NAME = "videos.json"  # optional {video path relative to the videos folder: class name}
SCORE_BATCH = 32  # frames scored per encoder call: bounds memory while scoring a long video
# Decoding and input problems that make one video unusable; the batch goes on without it.
VIDEO_ERRORS = (av.FFmpegError, InputError, OSError)


@dataclass
class SegmentVideosConfig:
    threshold: float = 0.5  # a frame is relevant when its class probability is above this
    min_interval: int = 5  # a relevant interval has MORE than this many consecutive relevant frames
    max_interval: int = 200  # longer runs are cut into near-equal pieces: bounds memory and graph size
    # Frames are downscaled so that their longer side is at most this before scoring, attention and
    # segmentation (videoseg.work_long_side may shrink them further for the graph); masks are at frame size.
    max_side: int = 480
    attention_scales: tuple[float, ...] | None = None  # CAM input scales; None: the checkpoint's own
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
    files = sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    sources, keys = [], set()
    if files:
        for path in files:
            relative = path.relative_to(videos_dir).as_posix()
            folder_class = path.parent.name if path.parent != videos_dir else None
            sources.append(VideoSource(path.stem, path, relative, manifest.get(relative, folder_class)))
            keys.add(relative)
    else:
        frames_root = videos_dir / "JPEGImages" / "480p"
        if not frames_root.is_dir():
            frames_root = videos_dir
        for folder in sorted(p for p in frames_root.iterdir() if p.is_dir() and frame_files(p)):
            relative = folder.relative_to(videos_dir).as_posix()
            sources.append(VideoSource(folder.name, folder, relative, manifest.get(folder.name)))
            keys.add(folder.name)
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


def segment_video(
    source: VideoSource, out_dir: Path, config: SegmentVideosConfig, model: FrameAttention | None
) -> dict[str, Any]:
    """Segment the relevant intervals of one video; write its masks, then its JSON record (returned).

    ``model`` None means no attention: every frame is relevant and the graph cut uses motion and appearance.
    """
    started = time.perf_counter()
    class_index = None if model is None else model.class_names.index(source.class_name)

    # Pass 1: size, frame count and class scores, streaming (only one scoring batch in memory).
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
        if model is not None:
            batch.append(downscale(frame, config.max_side))
            if len(batch) == SCORE_BATCH:
                scores.extend(model.scores(np.stack(batch))[:, class_index].tolist())
                batch.clear()
    if model is not None and batch:
        scores.extend(model.scores(np.stack(batch))[:, class_index].tolist())
    if size is None:
        raise InputError(source.path, "has no decodable frames")
    height, width = size
    relevant = np.ones(frame_count, bool) if model is None else np.asarray(scores) > config.threshold
    intervals = relevant_intervals(relevant, config.min_interval, config.max_interval)
    scoring_s = time.perf_counter() - started

    # Pass 2: hold the frames of one interval at a time and segment it.
    mask_dir = out_dir / source.video_id
    shutil.rmtree(mask_dir, ignore_errors=True)  # leftovers of an interrupted run
    attention_s, write_s = 0.0, 0.0
    stage_s: dict[str, float] = {}
    pending = list(intervals)
    held: list[np.ndarray] = []
    for index, frame in enumerate(reader):
        if not pending:
            break
        start, end = pending[0]
        if index < start:
            continue
        held.append(downscale(frame, config.max_side))
        if index < end - 1:
            continue
        frames = np.stack(held)
        held.clear()
        pending.pop(0)
        tic = time.perf_counter()
        attention = None if model is None else model.attention(frames, class_index)
        attention_s += time.perf_counter() - tic
        if config.method == "cam_threshold":
            if attention is None:
                raise InputError(source.path, "method cam_threshold needs attention (a --model)")
            masks, info = attention > config.cam_threshold, {"timings_s": {}}
        else:
            masks, info = segment_frames(frames, attention, config.videoseg)
        for stage, seconds in info["timings_s"].items():
            stage_s[stage] = stage_s.get(stage, 0.0) + seconds
        tic = time.perf_counter()
        for offset, mask in enumerate(masks):
            write_binary_png(mask_dir / f"{start + offset:05d}.png", upscale_mask(mask, height, width))
        write_s += time.perf_counter() - tic
    if pending:
        raise InputError(source.path, f"decoded fewer frames the second time (expected {frame_count})")

    record = {
        "video": source.relative,
        "class": source.class_name,
        "frames": frame_count,
        "fps": None if reader.fps is None else float(reader.fps),
        "width": width,
        "height": height,
        "intervals": [list(interval) for interval in intervals],
        "masked_frames": sum(end - start for start, end in intervals),
        "scores": None if model is None else [round(score, 6) for score in scores],
        "timings_s": {
            "decode_and_score": round(scoring_s, 4),
            "attention": round(attention_s, 4),
            **{f"videoseg_{stage}": round(seconds, 4) for stage, seconds in stage_s.items()},
            "write_masks": round(write_s, 4),
            "total": round(time.perf_counter() - started, 4),
        },
    }
    write_json(out_dir / f"{source.video_id}.json", record)  # last: marks the video done
    return record


def _segment_or_fail(
    source: VideoSource, out_dir: Path, config: SegmentVideosConfig, model: FrameAttention | None
) -> tuple[VideoSource, dict[str, Any] | None, str | None]:
    """(source, record, None) on success; (source, None, one-line reason) for an unusable video."""
    try:
        return source, segment_video(source, out_dir, config, model), None
    except VIDEO_ERRORS as exc:
        shutil.rmtree(out_dir / source.video_id, ignore_errors=True)  # no half-masked video left behind
        reason = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        return source, None, " ".join(reason.split())


def load_attention(model_dir: Path, config: SegmentVideosConfig) -> FrameAttention:
    from wsvs.training.cam import FrameAttention

    model = FrameAttention.load(model_dir)
    if config.attention_scales is not None:
        model.meta = dataclasses.replace(model.meta, scales=tuple(config.attention_scales))
    return model


_worker_model: FrameAttention | None = None  # each worker process loads the model once


def _init_worker(model_dir: Path | None, config: SegmentVideosConfig, threads: int) -> None:
    global _worker_model
    if model_dir is not None:
        import torch

        torch.set_num_threads(threads)
        _worker_model = load_attention(model_dir, config)


def _segment_in_worker(
    source: VideoSource, out_dir: Path, config: SegmentVideosConfig
) -> tuple[VideoSource, dict[str, Any] | None, str | None]:
    return _segment_or_fail(source, out_dir, config, _worker_model)


def segment_videos(
    videos_dir: Path,
    out_dir: Path,
    config: SegmentVideosConfig,
    model_dir: Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Segment every video under ``videos_dir`` into ``out_dir``; resumes where a previous run stopped.

    ``model_dir`` None: no attention (every frame relevant). Returns a summary: counts and failures.
    """
    sources = find_videos(videos_dir)
    model = None
    if model_dir is not None:
        model = load_attention(model_dir, config)
        for source in sources:
            if source.class_name not in model.class_names:
                raise InputError(source.path, f"class {source.class_name!r} is not one of the model's classes "
                                 f"({', '.join(model.class_names)}); set it in {MANIFEST_NAME} or the folder name")

    settings = {"attention": "none" if model_dir is None else "cam",
                "model": None if model_dir is None else str(model_dir.resolve()),
                "config": dump_config(config)}
    settings_path = out_dir / "run.json"
    if settings_path.is_file() and read_json(settings_path) != settings:
        raise InputError(out_dir, "holds results made with other settings (see run.json); use a new --out")
    write_json(settings_path, settings)

    todo = [source for source in sources if not (out_dir / f"{source.video_id}.json").is_file()]
    failures: dict[str, dict[str, str]] = {}
    records: list[dict[str, Any]] = []
    progress = tqdm(total=len(todo), unit="video", desc="segment-videos", disable=not todo)

    def collect(source: VideoSource, record: dict[str, Any] | None, reason: str | None) -> None:
        progress.update()
        if record is not None:
            records.append(record)
            return
        tqdm.write(f"wsvs segment-videos: skipped {source.path}: {reason}", file=sys.stderr)
        failures[source.video_id] = {"video": source.relative, "error": reason}
        write_json(out_dir / "failures.json", dict(sorted(failures.items())))

    if workers <= 1:
        for source in todo:
            collect(*_segment_or_fail(source, out_dir, config, model))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(model_dir, config, threads),
        ) as pool:
            futures = [pool.submit(_segment_in_worker, source, out_dir, config) for source in todo]
            for future in as_completed(futures):
                collect(*future.result())
    progress.close()
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment-videos",
        help="segment objects in weakly labelled videos (paper §3.2)",
        description="Score each frame with the encoder for the video's class, keep runs of more than "
        "min_interval consecutive frames over the threshold as relevant intervals, and segment each "
        "interval by graph cut over attention, appearance and motion. Writes <out>/<video>/<frame>.png "
        "(0/255) and <out>/<video>.json; rerun to resume after an interruption.",
    )
    parser.add_argument("--videos", type=Path, required=True, metavar="DIR",
                        help="folder of videos (<class>/<video>.mp4, or any layout with videos.json "
                        "{relative path: class}) or of DAVIS-style frame folders (JPEGImages/480p/<seq>/)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder for masks and records")
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="encoder folder (from train-encoder); needed for --attention cam")
    parser.add_argument("--attention", choices=("cam", "none"), default="cam",
                        help="cam: relevance scores and CAM attention from --model (default); none: every frame "
                        "is relevant and only motion and appearance are used")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="videos processed in parallel (default 1)")
    parser.add_argument("--config", type=Path, metavar="YAML", help="YAML with SegmentVideosConfig fields")
    parser.add_argument("--threshold", type=float, metavar="T", help="frame relevance threshold (overrides the config)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.attention == "cam" and args.model is None:
        raise InputError(None, "--attention cam needs --model DIR (or use --attention none)")
    if args.workers < 1:
        raise InputError(None, f"--workers must be at least 1, got {args.workers}")
    config = load_config(SegmentVideosConfig, args.config, threshold=args.threshold)
    model_dir = args.model if args.attention == "cam" else None
    summary = segment_videos(args.videos, args.out, config, model_dir, args.workers)
    print(
        f"segment-videos: {summary['segmented']} videos segmented, {summary['already_done']} already done, "
        f"{summary['failed']} failed; {summary['masked_frames']} of {summary['frames']} frames masked in "
        f"{summary['intervals']} intervals; results in {args.out}"
    )
    if summary["failed"]:
        print(f"segment-videos: failures listed in {args.out / 'failures.json'}")
    return 1 if summary["failed"] and not summary["segmented"] and not summary["already_done"] else 0

