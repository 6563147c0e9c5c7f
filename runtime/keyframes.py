"""Key-frames (I-frames) of a video and the frames around them, without decoding the whole video.

Paper §4: a compressed video already carries reference frames that summarise it; decoding only those
(the decoder skips every non-key frame) is a cheap way to score a video, and seeking to a kept key-frame
decodes just the few seconds around it. Frame times are presentation times in seconds from the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import InputError
from .io import add_h264_stream, atomic_path
from .video_reader import FALLBACK_RATE, VideoReader


def iter_keyframes(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in s, (H, W, 3) uint8 RGB) for each key-frame, decoding only key-frames.

    A file that is not a video, or breaks while decoding, is an InputError naming it.
    """
    for frame in VideoReader(Path(path)).decode(keyframes_only=True):
        yield float(frame.time), frame.to_ndarray(format="rgb24")


def merge_windows(key_times: list[float], window: float) -> list[tuple[float, float]]:
    """The intervals [t - window, t + window] around each key time, overlapping ones merged, sorted."""
    merged: list[tuple[float, float]] = []
    for t in sorted(key_times):
        start, end = t - window, t + window
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def window_times(path: str | Path, start: float, end: float) -> list[float]:
    """Times of the frames in [start, end], decoding only from the key-frame before ``start``."""
    return [float(frame.time) for frame in VideoReader(Path(path)).decode(start, end)]


def cut_clip(path: str | Path, start: float, end: float, out: str | Path) -> int:
    """Write the frames of ``path`` in [start, end] to ``out`` as H.264 mp4 (atomically); return their count.

    The clip keeps the source frame rate and size (rounded down to even, which yuv420p needs). No clip
    is written when the interval holds no frame.
    """
    path, out = Path(path), Path(out)
    with VideoReader(path) as video:
        stream = video.stream
        rate = stream.average_rate or stream.guessed_rate or FALLBACK_RATE
        width, height = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2
        count = 0
        with atomic_path(out) as tmp:
            with av.open(str(tmp), "w", format="mp4") as sink:
                encoder = add_h264_stream(sink, rate, width, height, crf=20, preset="veryfast")
                try:
                    for frame in video.decode(start, end):
                        clip_frame = frame.reformat(width=width, height=height, format="yuv420p")
                        clip_frame.pts = count
                        clip_frame.time_base = Fraction(1) / rate
                        sink.mux(encoder.encode(clip_frame))
                        count += 1
                except av.FFmpegError as exc:  # the encoder's: the reader raises its decoding errors as InputError
                    raise InputError(path, f"video breaks while decoding ({exc})") from None
                sink.mux(encoder.encode(None))
            if count == 0:
                raise InputError(path, f"no frame between {start:.2f} s and {end:.2f} s")
    return count
