"""The Python API: segment images, batches, videos and streams of frames with an exported model, without torch.

    from wsvs.runtime import Segmenter

    segmenter = Segmenter("model.onnx")           # backend "auto": the first of BACKENDS that opens it
    result = segmenter("photo.jpg")               # or an (H, W, 3) uint8 RGB array
    result.labels, result.scores, result.overlay()

Images go through the end-to-end segmenter graph (``ImageSegmenter``), videos and streams through the encoder and
decoder graphs (``VideoSegmenter``, with the optional §3.2 graph-cut refinement over windows of frames). A model is
whatever `wsvs segment --model` takes: an exported graph ``X.onnx`` / engine ``X.engine``, a checkpoint folder or
``X.pt`` (run by the ``pytorch-eager`` backend where torch is installed, or by the graphs exported beside it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .image_segmenter import ImageSegmenter
from .io import MAX_PIXELS, overlay, read_image_rgb
from .video_reader import VideoReader, check_frame_size
from .video_segmenter import VideoSegmenter

Image = np.ndarray | str | Path  # an (H, W, 3) uint8 RGB array or an image file


@dataclass
class Result:
    """What the model made of one image or frame."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, as given
    labels: np.ndarray  # (H, W) uint8 at the image's size: 0 background, 1 + index into class_names
    scores: np.ndarray  # (C,) class probabilities
    class_names: list[str]

    def overlay(self) -> np.ndarray:
        """The image with its labels drawn over it in the VOC palette, (H, W, 3) uint8 RGB."""
        return overlay(self.image, self.labels)

    def present(self) -> list[str]:
        """The names of the classes that label some pixel, most pixels first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names) + 1)[1:]
        return [self.class_names[i] for i in np.argsort(-counts, kind="stable") if counts[i]]


class Segmenter:
    """An exported model (or a checkpoint) on one backend.

    ``backend``: "auto" or a row of ``wsvs.runtime.backends.BACKENDS``. ``batch``: images or frames per network
    call. ``long_side``: images are segmented with their longer side resized to this (labels come back at their
    own size); None: the model's training crop size. ``refine``: for videos and streams, "none" (the decoder) or
    "superpixel" (the §3.2 graph cut over windows of ``window`` frames). ``max_pixels``: image files and videos
    whose header declares more pixels are refused before decoding.
    """

    def __init__(self, model: str | Path, backend: str = "auto", *, batch: int = 8, long_side: int | None = None,
                 threads: int = 0, refine: str = "none", window: int = 8, max_pixels: int = MAX_PIXELS) -> None:
        self.model, self.threads = model, threads
        self.batch_size, self.long_side, self.refine, self.window = batch, long_side, refine, window
        self.max_pixels = max_pixels
        self.images = ImageSegmenter(model, backend, batch, long_side, threads)
        self.class_names = list(self.images.metadata.class_names)
        self._video: VideoSegmenter | None = None

    @property
    def videos(self) -> VideoSegmenter:
        """The encoder and decoder graphs, opened at first use (image-only users never load them)."""
        if self._video is None:
            self._video = VideoSegmenter(self.model, self.images.backend.name, self.batch_size, self.long_side,
                                         self.refine, self.window, threads=self.threads, max_pixels=self.max_pixels)
        return self._video

    def describe(self) -> str:
        """One line: the backend and the file it runs."""
        return self.images.describe()

    def __call__(self, image: Image) -> Result:
        """Segment one image (an RGB array or a file)."""
        return self.batch([image])[0]

    def batch(self, images: Sequence[Image]) -> list[Result]:
        """Segment images of any sizes, ``batch`` per network call where their working sizes match."""
        arrays = [image if isinstance(image, np.ndarray) else read_image_rgb(Path(image), self.max_pixels)
                  for image in images]
        return [Result(image, s.labels, s.scores, self.class_names)
                for image, s in zip(arrays, self.images.segment(arrays))]

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[Result]:
        """Segment a stream of (H, W, 3) uint8 RGB frames (a camera, a decoder of one's own) in order, each as soon
        as its batch or refinement window is complete."""
        for labelled in self.videos.labelled(frames):
            yield Result(labelled.frame, labelled.labels, labelled.scores, self.class_names)

    def video(self, source: str | Path | int, max_frames: int | None = None) -> Iterator[Result]:
        """Segment the frames of a video file (or a camera index), in order; a corrupt packet costs its frame."""
        if not isinstance(source, int):
            check_frame_size(Path(source), self.max_pixels)
        yield from self.stream(itertools.islice(VideoReader(source, tolerant=True), max_frames))
