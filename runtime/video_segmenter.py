"""Streaming video segmentation with the exported encoder and decoder graphs, without torch.

Frames come from a video file or a camera index through the tolerant reader of ``wsvs.runtime.video_reader``
(a corrupt packet costs one frame and a truncated file ends the stream cleanly). Batches of frames go through
the encoder graph (class scores and multi-scale attention); the attention of each confident class goes through
the decoder, and each pixel takes the class of highest foreground probability (§3.4), background under the
threshold.

``refine="superpixel"`` replaces the decoder by the §3.2 graph cut over a sliding window of frames
(``wsvs.runtime.videoseg.segment_frames``, attention of the window's most likely class from the encoder
graph): each window holds ``window`` new frames plus the last frame of the previous one, which links the
windows' motion without segmenting it twice.

Outputs: ``<out>/masks/<index>.png`` (VOC-palette label map per decoded frame, at the frame's size),
``<out>/overlay.mp4`` and ``<out>/summary.json``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .backends import open_backend, select_backend
from .contract import GraphMetadata, labels_from_foreground, present_classes
from .errors import InputError
from .image_segmenter import SizeLimits, check_graph, restore_size, smallest_blank_image, working_size
from .io import MAX_PIXELS, add_h264_stream, atomic_path, overlay, write_json, write_palette_png
from .preprocess import normalise, resize_rgb
from .progress import progress_bar
from .video_reader import FALLBACK_RATE, VideoReader, check_frame_size
from .videoseg import VideoSegConfig, segment_frames

REFINEMENTS = ("none", "superpixel")


class OverlayWriter:
    """H.264 (yuv420p) video of overlays; the stream is sized by the first image written."""

    def __init__(self, path: Path, fps: Fraction) -> None:
        self.container = av.open(str(path), mode="w", format="mp4")
        self.fps = fps
        self.stream = None

    def write(self, image: np.ndarray) -> None:
        image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]  # yuv420p needs even sides
        if self.stream is None:
            self.stream = add_h264_stream(self.container, self.fps, image.shape[1], image.shape[0], crf=23,
                                          preset="veryfast")
        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), "rgb24")))

    def close(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))
        self.container.close()


@dataclass
class _Pending:
    """Frames waiting for their labels: originals, network-size frames, scores and attention per frame."""

    frames: list[np.ndarray] = field(default_factory=list)
    small: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    attention: list[np.ndarray] = field(default_factory=list)


class VideoSegmenter:
    """The encoder and decoder graphs of an exported model, run over a stream of frames.

    ``model``: an export folder or segmenter file (the encoder and decoder graphs sit beside it).
    ``batch``: frames per encoder call. ``long_side``: frames are segmented with their longer side resized
    to this (None: the model's training crop size), each side within what the graphs accept. ``max_pixels``: a
    video whose frames are larger is refused before decoding. ``refine``:
    "none" (decoder) or "superpixel" (§3.2 graph cut over windows of ``window`` frames).
    """

    def __init__(self, model: str | Path, backend: str = "auto", batch: int = 4, long_side: int | None = None,
                 refine: str = "none", window: int = 8, videoseg: VideoSegConfig | None = None,
                 threads: int = 0, max_pixels: int = MAX_PIXELS) -> None:
        if refine not in REFINEMENTS:
            raise InputError(None, f"refine must be one of {', '.join(REFINEMENTS)}, got {refine!r}")
        if batch < 1 or window < 1:
            raise InputError(None, f"batch and window must be >= 1, got {batch} and {window}")
        self.encoder = select_backend(backend, model, "encoder", threads)
        self.decoder = open_backend(model, "decoder", self.encoder.name, threads)
        self.metadata = GraphMetadata.from_props(self.encoder.metadata, self.encoder.path)
        self.batch = min(batch, self.encoder.max_batch or batch)
        self.limits = SizeLimits.of(self.encoder)
        self.long_side = self.limits.long_side(long_side, self.metadata.input_size, self.encoder.path)
        self.refine, self.window = refine, window
        self.max_pixels = max_pixels
        blank = smallest_blank_image(self.metadata, self.limits)
        height, width = blank.shape[-2:]
        classes = len(self.metadata.class_names)
        check_graph(self.encoder, blank, {"scores": (1, classes), "attention": (1, classes, height, width)})
        check_graph(self.decoder, np.zeros((1, 1, height, width), np.float32), {"foreground": (1, 1, height, width)})
        self.videoseg = videoseg or VideoSegConfig()

    def describe(self) -> str:
        return f"{self.encoder.describe()} running {self.encoder.path} and {self.decoder.path.name}"

    def encode(self, small: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, C) and multi-scale attention (N, C, H, W) of same-size RGB frames."""
        outputs = self.encoder.run(normalise(np.stack(small), self.metadata.mean, self.metadata.std),
                                   ("scores", "attention"))
        return outputs["scores"], outputs["attention"]

    def decode(self, scores: np.ndarray, attention: np.ndarray) -> np.ndarray:
        """Labels (N, H, W) uint8 by the §3.4 rule (``wsvs.runtime.contract``): the present classes of each frame
        through the decoder graph, pixel-wise maximum, background where the best probability is under the
        threshold."""
        foreground = np.zeros(attention.shape, np.float32)
        frame_index, class_index = present_classes(scores, self.metadata.class_threshold, self.metadata.top_k)
        step = self.decoder.max_batch or len(frame_index) or 1
        for start in range(0, len(frame_index), step):
            picked = slice(start, start + step)
            maps = attention[frame_index[picked], class_index[picked]][:, None]
            decoded = self.decoder.run(maps, ("foreground",))["foreground"]
            foreground[frame_index[picked], class_index[picked]] = decoded[:, 0]
        return labels_from_foreground(foreground, self.metadata.foreground_threshold)

    def refine_window(self, small: list[np.ndarray], scores: list[np.ndarray],
                      attention: list[np.ndarray]) -> np.ndarray:
        """Labels (T, H, W) uint8 of one window by the §3.2 graph cut with its most likely class's attention;
        all background when no class is confident over the window."""
        mean_scores = np.mean(scores, axis=0)
        best = int(mean_scores.argmax())
        if mean_scores[best] <= self.metadata.class_threshold:
            return np.zeros((len(small), *small[0].shape[:2]), np.uint8)
        masks, _ = segment_frames(np.stack(small), np.stack([a[best] for a in attention]), self.videoseg)
        return (masks * (best + 1)).astype(np.uint8)

    def labelled(self, frames: Iterable[np.ndarray]) -> Iterator[LabelledFrame]:
        """Each (H, W, 3) uint8 RGB frame of ``frames`` with its labels at the frame's size and its class
        probabilities, in order, as soon as its batch (or refinement window) is complete."""
        stream = _LabelledStream(self)
        for frame in frames:
            stream.add(frame, working_size(*frame.shape[:2], self.long_side, self.limits))
            yield from stream.take()
        stream.flush()
        yield from stream.take()

    def segment(self, source: str | Path | int, out: Path, max_frames: int | None = None) -> dict:
        """Segment every frame of ``source`` (file or camera index) into ``out``: ``masks/<index>.png``,
        ``overlay.mp4`` and ``summary.json``, whose content it returns. A corrupt packet is skipped; a damaged file
        ends the run cleanly."""
        name = None if isinstance(source, int) else Path(source)
        if name is not None:
            check_frame_size(name, self.max_pixels)
        reader = VideoReader(source, tolerant=True)
        started = time.perf_counter()
        written = 0
        with atomic_path(out / "overlay.mp4") as overlay_path, \
                progress_bar(desc="segment video", unit="frame", leave=False) as progress:
            overlays = OverlayWriter(overlay_path, FALLBACK_RATE)
            for result in self.labelled(itertools.islice(reader, max_frames)):
                overlays.fps = reader.fps or FALLBACK_RATE  # known once the stream is open
                write_palette_png(out / "masks" / f"{written:06d}.png", result.labels)
                overlays.write(overlay(result.frame, result.labels))
                written += 1
                progress.update(1)
            overlays.close()
            if written == 0:
                raise InputError(name, "no frame could be decoded")
        seconds = time.perf_counter() - started
        summary = {"source": str(source), "frames": written, "corrupt_packets": reader.corrupt,
                   "stopped_early": reader.stopped, "seconds": seconds, "frames_per_s": written / seconds,
                   "backend": self.encoder.describe(), "refine": self.refine, "long_side": self.long_side,
                   "masks": str(out / "masks"), "overlay": str(out / "overlay.mp4")}
        write_json(out / "summary.json", summary)
        return summary


@dataclass
class LabelledFrame:
    """One frame of a stream and what the segmenter made of it."""

    frame: np.ndarray  # (H, W, 3) uint8 RGB, as it came
    labels: np.ndarray  # (H, W) uint8 at the frame's size: 0 background, 1 + class index
    scores: np.ndarray  # (C,) class probabilities


class _LabelledStream:
    """The frames of one stream on their way to label maps: batched for the encoder, then labelled by the
    decoder (``batch`` frames at a time) or by the graph cut (windows of ``window`` frames, each linked to the
    last frame of the previous window); ``take`` hands over the labelled frames in order."""

    def __init__(self, segmenter: VideoSegmenter) -> None:
        self.segmenter = segmenter
        self.pending = _Pending()
        self.context: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the last refined frame
        self.done: list[LabelledFrame] = []

    def add(self, frame: np.ndarray, size: tuple[int, int]) -> None:
        """Take one frame, to be labelled at network ``size``; label what is complete."""
        segmenter = self.segmenter
        if self.pending.small and size != self.pending.small[0].shape[:2]:
            self.flush()  # a stream that changes resolution mid-way starts a new batch
        self.pending.frames.append(frame)
        self.pending.small.append(resize_rgb(frame, size))
        if segmenter.refine != "none" and len(self.pending.small) - len(self.pending.scores) == segmenter.batch:
            self.encode_pending()
        chunk = segmenter.batch if segmenter.refine == "none" else segmenter.window
        if len(self.pending.frames) == chunk:
            self.flush()

    def encode_pending(self) -> None:
        scores, attention = self.segmenter.encode(self.pending.small[len(self.pending.scores):])
        self.pending.scores.extend(scores)
        self.pending.attention.extend(attention)

    def flush(self) -> None:
        """Labels for the pending frames: encode what is not encoded yet, then decode or refine."""
        pending, segmenter = self.pending, self.segmenter
        if not pending.frames:
            return
        if len(pending.scores) < len(pending.small):
            self.encode_pending()
        if segmenter.refine == "none":
            labels = segmenter.decode(np.stack(pending.scores), np.stack(pending.attention))
        else:
            window = [pending.small, pending.scores, pending.attention]
            if self.context is not None and self.context[0].shape == pending.small[0].shape:
                window = [[c, *w] for c, w in zip(self.context, window)]
            labels = segmenter.refine_window(*window)[-len(pending.frames):]
            self.context = (pending.small[-1], pending.scores[-1], pending.attention[-1])
        for frame, small_labels, scores in zip(pending.frames, labels, pending.scores):
            self.done.append(LabelledFrame(frame, restore_size(small_labels, frame.shape[:2]), scores))
        self.pending = _Pending()

    def take(self) -> list[LabelledFrame]:
        """The frames labelled since the last call, in order."""
        done, self.done = self.done, []
        return done
