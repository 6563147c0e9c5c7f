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

# A rate for streams that declare none (rare; some raw or broken files).
FALLBACK_RATE = Fraction(25)


def open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The container and its first video stream; a missing or unreadable file is an InputError naming it."""
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except av.FFmpegError as exc:
        raise InputError(path, f"not a readable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(path, "has no video stream")
    return container, container.streams.video[0]


def iter_keyframes(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in s, (H, W, 3) uint8 RGB) for each key-frame, decoding only key-frames.

    A file that is not a video, or breaks while decoding, is an InputError naming it.
    """
    path = Path(path)
    container, stream = open_video(path)
    with container:
        stream.codec_context.skip_frame = "NONKEY"
        try:
            for frame in container.decode(stream):
                yield float(frame.time), frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise InputError(path, f"video breaks while decoding key-frames ({exc})") from None


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


def _iter_window_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float, end: float
) -> Iterator[av.VideoFrame]:
    """Frames with start <= time <= end: seek to the key-frame at or before ``start``, decode up to ``end``."""
    if start > 0:
        container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        t = float(frame.time)
        if t > end:
            break
        if t >= start:
            yield frame


def window_times(path: str | Path, start: float, end: float) -> list[float]:
    """Times of the frames in [start, end], decoding only from the key-frame before ``start``."""
    path = Path(path)
    container, stream = open_video(path)
    with container:
        try:
            return [float(frame.time) for frame in _iter_window_frames(container, stream, start, end)]
        except av.FFmpegError as exc:
            raise InputError(path, f"video breaks while decoding ({exc})") from None


def cut_clip(path: str | Path, start: float, end: float, out: str | Path) -> int:
    """Write the frames of ``path`` in [start, end] to ``out`` as H.264 mp4 (atomically); return their count.

    The clip keeps the source frame rate and size (rounded down to even, which yuv420p needs). No clip
    is written when the interval holds no frame.
    """
    path, out = Path(path), Path(out)
    container, stream = open_video(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or FALLBACK_RATE
        width, height = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2
        count = 0
        with atomic_path(out) as tmp:
            with av.open(str(tmp), "w", format="mp4") as sink:
                encoder = add_h264_stream(sink, rate, width, height, crf=20, preset="veryfast")
                try:
                    for frame in _iter_window_frames(container, stream, start, end):
                        clip_frame = frame.reformat(width=width, height=height, format="yuv420p")
                        clip_frame.pts = count
                        clip_frame.time_base = Fraction(1) / rate
                        sink.mux(encoder.encode(clip_frame))
                        count += 1
                except av.FFmpegError as exc:
                    raise InputError(path, f"video breaks while decoding ({exc})") from None
                sink.mux(encoder.encode(None))
            if count == 0:
                raise InputError(path, f"no frame between {start:.2f} s and {end:.2f} s")
    return count
