"""The one reader of video frames: video files (PyAV), folders of frame images and cameras (OpenCV).

Its callers want different things from a damaged file, so that is the one choice the reader offers:

* strict (the default): video segmentation (§3.2) and the decoder's training read every frame of a video twice
  and count frames from 0, so a file that cannot be opened or breaks while decoding is an InputError naming it;
* ``tolerant``: the streaming runtime shows what it can, so a packet that fails to decode is skipped (counted
  in ``corrupt``) and a container that breaks ends the stream cleanly (``stopped`` says why).

``decode`` gives the file's frames as PyAV frames for key-frame extraction (§4): only the key-frames, or only
the frames of a time window (seeking to the key-frame before it), with their presentation times in seconds,
and without a round trip through RGB when they are encoded again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from .errors import InputError
from .io import check_pixels, image_files, read_image_rgb

# A rate for streams and cameras that declare none (rare; some raw or broken files).
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


def check_frame_size(path: Path, max_pixels: int) -> None:
    """Refuse a video file whose stream declares frames of more than ``max_pixels``, before decoding any."""
    container, stream = open_video(path)
    with container:
        codec = stream.codec_context
        if codec is None:
            raise InputError(path, "the video stream has no codec parameters (a truncated file?)")
        check_pixels(path, codec.width, codec.height, max_pixels)


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder, in name order (a subfolder named as an image is no frame)."""
    return [p for p in image_files(folder) if p.is_file()]


@dataclass
class VideoReader:
    """Frames of ``source``: a video file, a folder of frame images (name order) or a camera index.

    Iterating yields (H, W, 3) uint8 RGB frames and opens the source anew each time. ``fps`` is the declared
    frame rate once reading has started (None for a folder or a stream that declares none). Used as a context
    manager on a video file, the reader holds the file open (``stream`` is its video stream) for ``decode``.
    """

    source: str | Path | int
    tolerant: bool = False
    fps: Fraction | None = None
    corrupt: int = 0  # packets skipped because they failed to decode (tolerant only)
    stopped: str | None = None  # why the stream ended early, if it did (tolerant only)
    stream: av.video.stream.VideoStream | None = field(default=None, init=False, repr=False)
    _container: Any = field(default=None, init=False, repr=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        if isinstance(self.source, int):
            return self._camera(self.source)
        if Path(self.source).is_dir():
            return self._images(Path(self.source))
        # Frame threading decodes several frames at once: faster on whole videos, but a damaged packet's
        # error would surface at a later packet, so the tolerant reader keeps the decoder's default.
        return (frame.to_ndarray(format="rgb24") for frame in self.decode(threaded=not self.tolerant))

    def __enter__(self) -> VideoReader:
        self._container, self.stream = open_video(Path(self.source))
        self.fps = self.stream.average_rate
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._container.close()
        self._container = self.stream = None

    def decode(self, start: float | None = None, end: float | None = None, keyframes_only: bool = False,
               threaded: bool = False) -> Iterator[av.VideoFrame]:
        """The video file's frames as PyAV frames, in decoding order.

        ``start``, ``end``: only the frames with start <= time <= end, decoded from the key-frame at or before
        ``start``. ``keyframes_only``: the decoder skips every non-key frame. ``threaded``: frame threading.
        """
        if self._container is None:
            with self:
                yield from self._decode(start, end, keyframes_only, threaded)
        else:
            yield from self._decode(start, end, keyframes_only, threaded)

    def _decode(self, start: float | None, end: float | None, keyframes_only: bool,
                threaded: bool) -> Iterator[av.VideoFrame]:
        container, stream = self._container, self.stream
        if threaded:
            stream.thread_type = "AUTO"
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        try:
            if start is not None and start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            frames = self._packets_decoded(container, stream)
            if start is None and end is None:
                yield from frames
                return
            for frame in frames:
                t = float(frame.time)
                if end is not None and t > end:
                    break
                if start is None or t >= start:
                    yield frame
        except av.FFmpegError as exc:  # what the tolerant reader does not skip or stop at
            what = "video breaks while decoding key-frames" if keyframes_only else "video breaks while decoding"
            raise InputError(Path(self.source), f"{what} ({exc})") from None

    def _packets_decoded(self, container: Any, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
        """Packet by packet, so that the tolerant reader loses one frame to a corrupt packet and ends cleanly at
        a truncation; strict reading is ``container.decode(stream)``, which is the same loop."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:  # the container itself breaks: a truncated or damaged file
                if not self.tolerant:
                    raise
                self.stopped = f"demuxing failed ({exc})"
                return
            try:
                frames = packet.decode()  # an empty packet at the end flushes the decoder
            except av.FFmpegError:
                if not self.tolerant:
                    raise
                self.corrupt += 1
                continue
            yield from frames

    def _images(self, folder: Path) -> Iterator[np.ndarray]:
        self.fps = None
        for path in frame_files(folder):
            yield read_image_rgb(path)

    def _camera(self, index: int) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise InputError(None, f"camera {index} cannot be opened")
        rate = capture.get(cv2.CAP_PROP_FPS)
        self.fps = Fraction(rate).limit_denominator(1001) if rate else None
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
