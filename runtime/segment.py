"""`wsvs segment`: label maps and overlays of images and videos (§3.4), on any backend, through the Python API.

The classes whose probability passes the model's class threshold are present; the decoder turns the multi-scale
attention of each into a foreground probability map, and each pixel takes the present class of highest
probability, or background under the model's foreground threshold (``wsvs.runtime.contract``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .api import Segmenter
from .backends import backend_name, backends_help
from .errors import InputError
from .image_segmenter import SegmentReport, segment_files
from .io import MAX_PIXELS, VIDEO_SUFFIXES
from .video_segmenter import REFINEMENTS

DEFAULT_OUT = Path("runs/segment")


def split_inputs(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """Image inputs (files or folders of images) and video files."""
    videos = [p for p in inputs if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    return [p for p in inputs if p not in videos], videos


def backend_argument(text: str) -> str:
    """--backend's value: a name of the backend table (read when parsing, so every row counts), else a usage
    error."""
    try:
        return backend_name(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Every input that can be segmented is; the others are listed at the end (exit 0), unless none could be
    (one line, exit 2)."""
    segmenter = Segmenter(args.model, args.backend, batch=args.batch, long_side=args.long_side, refine=args.refine,
                          window=args.window, max_pixels=args.max_pixels)
    images, videos = split_inputs(args.images)
    if images:
        print(f"segment: {segmenter.describe()}", file=sys.stderr)
    if videos:
        print(f"segment: {segmenter.videos.describe()}", file=sys.stderr)
    if segmenter.images.backend.selection:
        print(segmenter.images.backend.selection, file=sys.stderr)
    report = SegmentReport()
    if images:
        segment_files(segmenter.images, images, args.out, args.max_pixels, report)
        print(f"segment: {len(report.written)} label maps (VOC palette) and overlays in {args.out}")
    videos_done = 0
    for video in videos:
        try:
            summary = segmenter.videos.segment(video, args.out / video.stem)
        except InputError as exc:
            report.failed.append(exc)
            with contextlib.suppress(OSError):
                (args.out / video.stem).rmdir()  # only if the failure left it empty
            continue
        videos_done += 1
        print(f"segment: {video.name}: {summary['frames']} frames at {summary['frames_per_s']:.1f} frames/s "
              f"-> {args.out / video.stem} (masks/, overlay.mp4)")
    if report.failed and not report.written and not videos_done:
        raise InputError(None, "nothing could be segmented: " + "; ".join(map(str, report.failed)))
    if report.failed:
        print(f"segment: skipped {len(report.failed)} input(s):", file=sys.stderr)
        for problem in report.failed:
            print(f"  {problem}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="segment images and videos with an exported model or a checkpoint (paper §3.4)",
        description="For each image or frame: classes over the model's threshold, the decoder's foreground "
        "probability from each class's multi-scale attention, pixel-wise maximum (background below the "
        "model's foreground threshold). Writes <out>/<name>.png (VOC-palette label map) and "
        "<out>/<name>_overlay.jpg per image, and <out>/<video>/masks/*.png, overlay.mp4 and summary.json per "
        f"video. Example: wsvs segment photo.jpg clip.mp4 --model model.onnx (writes to {DEFAULT_OUT}/)")
    p.add_argument("images", nargs="+", type=Path, metavar="INPUT", help="image files, folders of images, videos")
    p.add_argument("--model", type=Path, required=True,
                   help="an exported segmenter graph X.onnx or engine X.engine (X.encoder/decoder.* beside), a "
                   "checkpoint X.pt or folder (its exported graphs beside it, else PyTorch)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--backend", default="auto", type=backend_argument, metavar="NAME", help=backends_help())
    p.add_argument("--batch", type=int, default=8, help="images or frames per network call (default 8)")
    p.add_argument("--long-side", dest="long_side", type=int, default=None,
                   help="segment images and frames with their longer side resized to this, each side within "
                   "what the graph (an engine's profile) accepts; label maps come back at the input's size "
                   "(default: the model's training crop size)")
    p.add_argument("--max-pixels", dest="max_pixels", type=int, default=MAX_PIXELS,
                   help="refuse images and videos whose header declares more pixels (per frame) than this, "
                   "before decoding them "
                   f"(decompression bombs; default {MAX_PIXELS}, Pillow's warning level)")
    p.add_argument("--refine", choices=REFINEMENTS, default="none",
                   help="videos: 'superpixel' replaces the decoder by the §3.2 graph cut over a sliding window")
    p.add_argument("--window", type=int, default=8, help="frames per refinement window (default 8)")
    p.set_defaults(func=run)
