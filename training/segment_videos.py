"""`wsvs segment-videos`: object masks for weakly labelled videos (paper §3.2), with the encoder's attention.

The torch-free part (videos, relevant intervals, the per-video driver and resume) is ``wsvs.runtime.video_masks``
beside the graph cut of ``wsvs.runtime.videoseg``; it runs the videos through ``wsvs.runtime.executor`` (local
processes or a Ray cluster). This module supplies what needs the encoder (class scores and multi-scale CAM
attention per frame, ``wsvs.training.cam.FrameAttention``) and the command line. Outputs are described in
``wsvs.runtime.video_masks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.executor import ExecutorConfig, add_executor_arguments, executor_from_args
from wsvs.runtime.video_masks import MANIFEST_NAME, SegmentVideosConfig, VideoSource, find_videos, segment_sources

if TYPE_CHECKING:
    from wsvs.training.cam import FrameAttention


def load_attention(model_dir: Path, config: SegmentVideosConfig, device: str = "cpu",
                   threads: int | None = None) -> FrameAttention:
    """The attention model at ``config``'s scales, on ``device`` and ``threads`` CPU threads (None: this process's
    own setting), as a worker process of the executor builds it."""
    from wsvs.training.cam import FrameAttention

    model = FrameAttention.load_in_worker(model_dir, device, threads)
    if config.attention_scales is not None:
        model.meta = dataclasses.replace(model.meta, scales=tuple(config.attention_scales))
    return model


def _check_classes(sources: list[VideoSource], class_names: list[str]) -> None:
    for source in sources:
        if source.class_name not in class_names:
            raise InputError(source.path, f"class {source.class_name!r} is not one of the model's classes "
                             f"({', '.join(class_names)}); set it in {MANIFEST_NAME} or the folder name")


def segment_videos(
    videos_dir: Path,
    out_dir: Path,
    config: SegmentVideosConfig,
    model_dir: Path | None = None,
    executor: ExecutorConfig | None = None,
) -> dict[str, Any]:
    """Segment every video under ``videos_dir`` into ``out_dir``; resumes where a previous run stopped.

    ``model_dir`` None: no attention (every frame relevant). ``executor``: where the videos are segmented
    (default: in this process). Returns a summary: counts and failures.
    """
    executor = executor or ExecutorConfig()
    sources = find_videos(videos_dir)
    load_model = None
    if model_dir is not None:
        _check_classes(sources, load_attention(model_dir, config).class_names)
        load_model = functools.partial(load_attention, model_dir, config, executor.device(),
                                       executor.threads_per_task())
    settings = {"attention": "none" if model_dir is None else "cam",
                "model": None if model_dir is None else str(model_dir.resolve()),
                "config": dump_config(config)}
    return segment_sources(sources, out_dir, config, settings, load_model, executor)


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
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="videos processed at once: local processes or Ray tasks in flight (default 1)")
    add_executor_arguments(parser)
    parser.add_argument("--config", type=Path, metavar="YAML", help="YAML with SegmentVideosConfig fields")
    parser.add_argument("--threshold", type=float, metavar="T", help="frame relevance threshold (overrides the config)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.attention == "cam" and args.model is None:
        raise InputError(None, "--attention cam needs --model DIR (or use --attention none)")
    executor = executor_from_args(args, args.workers)
    config = load_config(SegmentVideosConfig, args.config, threshold=args.threshold)
    model_dir = args.model if args.attention == "cam" else None
    summary = segment_videos(args.videos, args.out, config, model_dir, executor)
    print(
        f"segment-videos: {summary['segmented']} videos segmented, {summary['already_done']} already done, "
        f"{summary['failed']} failed; {summary['masked_frames']} of {summary['frames']} frames masked in "
        f"{summary['intervals']} intervals; results in {args.out}"
    )
    if summary["failed"]:
        print(f"segment-videos: failures listed in {args.out / 'failures.json'}")
    return 1 if summary["failed"] and not summary["segmented"] and not summary["already_done"] else 0

