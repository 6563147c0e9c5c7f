"""Semantic segmentation of still images with the exported end-to-end graph (§3.4), without torch.

Every image is resized to a working size the graph accepts (its longer side at the model's training crop size
by default, each side within the engine's optimisation profile), normalised with the graph's own mean and std
(``wsvs.runtime.preprocess.normalise``), batched by working size, and run through ``model.onnx`` (or its engine);
the graph's ``labels`` output (0 background, 1 + class index), resized back to the image's size, becomes a
VOC-palette PNG and an overlay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .backends import Backend, select_backend
from .contract import GraphMetadata
from .errors import InputError, first_line
from .io import IMAGE_SUFFIXES, MAX_PIXELS, image_files, overlay, read_image_rgb, write_image_rgb, write_palette_png
from .preprocess import normalise, resize_rgb
from .progress import progress_bar

MIN_SIDE = 32  # the encoder's stride 8 at the smallest attention scale still leaves a few cells
MAX_SIDE = 4096  # larger inputs run out of memory in the probability maps (N x top_k x H x W floats)


@dataclass(frozen=True)
class SizeLimits:
    """The network input sizes a graph accepts: an engine's optimisation profile, else MIN_SIDE..MAX_SIDE."""

    min_height: int = MIN_SIDE
    min_width: int = MIN_SIDE
    max_height: int = MAX_SIDE
    max_width: int = MAX_SIDE

    @classmethod
    def of(cls, backend: Backend) -> SizeLimits:
        if backend.profile is None:
            return cls()
        (_, _, min_h, min_w), _, (_, _, max_h, max_w) = backend.profile
        return cls(max(MIN_SIDE, min_h), max(MIN_SIDE, min_w), max_h, max_w)

    def long_side(self, requested: int | None, default: int, path: Path | None) -> int:
        """The working long side: ``requested`` (refused outside the limits), else ``default`` within them."""
        low, high = max(self.min_height, self.min_width), min(self.max_height, self.max_width)
        if requested is None:
            return min(max(default, low), high)
        if not low <= requested <= high:
            raise InputError(path, f"--long-side {requested} is outside the sizes this graph accepts ({low}..{high})")
        return requested


def working_size(height: int, width: int, long_side: int, limits: SizeLimits) -> tuple[int, int]:
    """The (height, width) an image of this size is segmented at: its longer side scaled to ``long_side``, each
    side then brought within ``limits`` (a tiny or very elongated image is stretched to the minimum side)."""
    scale = long_side / max(height, width)
    return (min(max(round(height * scale), limits.min_height), limits.max_height),
            min(max(round(width * scale), limits.min_width), limits.max_width))


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) uint8 at the image's size: 0 background, 1 + class index
    scores: np.ndarray  # (C,) class probabilities


class Segmenter(Protocol):
    """What ``segment_files`` runs: the exported graph (``ImageSegmenter``) or the PyTorch model."""

    batch: int

    def describe(self) -> str:
        """One line: the backend and the file it runs."""

    def segment(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """Labels at each image's own size for (H, W, 3) uint8 RGB images of any sizes."""


def smallest_blank_image(metadata: GraphMetadata, limits: SizeLimits) -> np.ndarray:
    """A black image of the smallest size ``limits`` allow, normalised as the graph's input (1, 3, H, W)."""
    return normalise(np.zeros((1, limits.min_height, limits.min_width, 3), np.uint8), metadata.mean, metadata.std)


def check_graph(backend: Backend, inputs: np.ndarray, expected: dict[str, tuple[int, ...]]) -> None:
    """Run a graph once on blank ``inputs`` of the smallest size and compare its outputs' shapes with ``expected``
    (by name), so that a graph other than the one expected (other inputs, other outputs) is refused in one line
    when it is loaded, not with a traceback at the first image."""
    try:
        outputs = backend.run(inputs)
    except Exception as exc:  # each backend raises its own types for inputs a graph does not take
        shape = "x".join(map(str, inputs.shape))
        raise InputError(backend.path, f"the graph does not run on a {shape} input ({first_line(exc)})") \
            from None
    shapes = {name: getattr(outputs.get(name), "shape", None) for name in expected}
    if shapes != expected:
        got = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InputError(backend.path, f"not the expected graph: outputs {got}, expected "
                                       f"{', '.join(f'{name} {shape}' for name, shape in expected.items())}")


class ImageSegmenter:
    """The end-to-end segmenter graph of an exported model on one backend.

    ``model``: an export folder (``model.onnx``, ``model.engine``) or a segmenter ``.onnx``/``.engine`` file.
    ``backend``: "auto" or one of ``wsvs.runtime.backends.BACKENDS``. ``batch``: images per graph call.
    ``long_side``: images are segmented with their longer side resized to this (labels are resized back);
    None: the model's training crop size (``input_size`` in its metadata), within what the graph accepts.
    """

    def __init__(self, model: str | Path, backend: str = "auto", batch: int = 8, long_side: int | None = None,
                 threads: int = 0) -> None:
        if batch < 1:
            raise InputError(None, f"batch must be >= 1, got {batch}")
        self.backend: Backend = select_backend(backend, model, "segmenter", threads)
        self.metadata = GraphMetadata.from_props(self.backend.metadata, self.backend.path)
        self.batch = min(batch, self.backend.max_batch or batch)
        self.limits = SizeLimits.of(self.backend)
        self.long_side = self.limits.long_side(long_side, self.metadata.input_size, self.backend.path)
        blank = smallest_blank_image(self.metadata, self.limits)
        height, width = blank.shape[-2:]
        check_graph(self.backend, blank, {"labels": (1, height, width), "scores": (1, len(self.metadata.class_names))})

    def describe(self) -> str:
        return f"{self.backend.describe()} running {self.backend.path}"

    def segment(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """Segment (H, W, 3) uint8 RGB images of any sizes at their working sizes; images of equal working size
        share graph calls. Labels come back at each image's own size."""
        sizes = [working_size(*image.shape[:2], self.long_side, self.limits) for image in images]
        results: list[Segmentation | None] = [None] * len(images)
        order = sorted(range(len(images)), key=lambda i: sizes[i])
        groups = [[order[0]]] if order else []
        for i in order[1:]:
            if sizes[i] == sizes[groups[-1][0]] and len(groups[-1]) < self.batch:
                groups[-1].append(i)
            else:
                groups.append([i])
        for group in groups:
            height, width = sizes[group[0]]
            batch = np.stack([resize_rgb(images[i], (height, width)) for i in group])
            outputs = self.backend.run(normalise(batch, self.metadata.mean, self.metadata.std), ("labels", "scores"))
            for i, labels, scores in zip(group, outputs["labels"], outputs["scores"]):
                results[i] = Segmentation(restore_size(labels.astype(np.uint8), images[i].shape[:2]), scores)
        return results  # type: ignore[return-value]


def restore_size(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map resized (nearest) from its working size back to the image's (height, width)."""
    if labels.shape == size:
        return labels
    return cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)


@dataclass
class SegmentReport:
    """What ``segment_files`` did: the label maps written, and the inputs it skipped, each with its problem."""

    written: list[Path] = field(default_factory=list)
    failed: list[InputError] = field(default_factory=list)


def image_paths(inputs: Sequence[Path], report: SegmentReport) -> list[Path]:
    """The image files named, and those directly inside named folders (sorted); inputs that are neither go into
    ``report.failed``."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = image_files(item)
            if not found:
                report.failed.append(InputError(item, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})"))
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            report.failed.append(InputError(item, "no such image or folder"))
    return paths


def segment_files(segmenter: Segmenter, inputs: Sequence[Path], out: Path, max_pixels: int = MAX_PIXELS,
                  report: SegmentReport | None = None) -> SegmentReport:
    """Write ``<out>/<name>.png`` (VOC-palette label map) and ``<out>/<name>_overlay.jpg`` for every image
    named in ``inputs`` (files or folders), ``segmenter.batch`` images per call. An input that cannot be read
    (missing, not an image, truncated, over ``max_pixels``) is skipped and listed in the report's ``failed``;
    the others go on. ``report``: add to this one (e.g. shared with the videos of one command)."""
    report = report if report is not None else SegmentReport()
    paths = image_paths(inputs, report)
    with progress_bar(total=len(paths), desc="segment", unit="img", leave=False) as progress:
        for start in range(0, len(paths), segmenter.batch):
            chunk, images = [], []
            for path in paths[start:start + segmenter.batch]:
                try:
                    images.append(read_image_rgb(path, max_pixels))
                    chunk.append(path)
                except InputError as exc:
                    report.failed.append(exc)
            for path, image, result in zip(chunk, images, segmenter.segment(images)):
                write_palette_png(out / f"{path.stem}.png", result.labels)
                write_image_rgb(out / f"{path.stem}_overlay.jpg", overlay(image, result.labels))
                report.written.append(out / f"{path.stem}.png")
            progress.update(len(paths[start:start + segmenter.batch]))
    return report
