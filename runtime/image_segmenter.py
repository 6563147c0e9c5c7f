"""Semantic segmentation of still images with the exported end-to-end graph (§3.4), without torch.

Images are normalised with the graph's own mean and std (``wsvs.runtime.preprocess.normalise``), batched
by size, and run through ``model.onnx`` (or its engine); the graph's ``labels`` output (0 background,
1 + class index) becomes a VOC-palette PNG and an overlay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .backends import Backend, select_backend
from .contract import GraphMetadata
from .errors import InputError
from .io import IMAGE_SUFFIXES, overlay, read_image_rgb, write_image_rgb, write_palette_png
from .preprocess import normalise, resize_rgb

MIN_SIDE = 32  # the encoder's stride 8 at the smallest attention scale still leaves a few cells
MAX_SIDE = 4096  # larger inputs run out of memory in the probability maps (N x top_k x H x W floats)


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) uint8 at the image's size: 0 background, 1 + class index
    scores: np.ndarray  # (C,) class probabilities


def network_size(height: int, width: int, long_side: int | None, name: str | Path | None = None) -> tuple[int, int]:
    """The (height, width) an image of this size is segmented at: as is, or with its longer side scaled to
    ``long_side``. Images too small to segment, or too large to segment as is, are an InputError."""
    if min(height, width) < MIN_SIDE:
        raise InputError(name, f"image is {width}x{height}, smaller than {MIN_SIDE} px on a side")
    if long_side is None:
        if max(height, width) > MAX_SIDE:
            raise InputError(name, f"image is {width}x{height}, larger than {MAX_SIDE} px on a side: "
                                   "set a long side to resize it to (--long-side)")
        return height, width
    scale = long_side / max(height, width)
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


class ImageSegmenter:
    """The end-to-end segmenter graph of an exported model on one backend.

    ``model``: an export folder (``model.onnx``, ``model.engine``) or a segmenter ``.onnx``/``.engine`` file.
    ``backend``: "auto" or one of ``wsvs.runtime.backends.BACKENDS``. ``batch``: images per graph call.
    ``long_side``: segment every image with its longer side resized to this (labels are resized back);
    None segments at the image's own size.
    """

    def __init__(self, model: str | Path, backend: str = "auto", batch: int = 8, long_side: int | None = None,
                 threads: int = 0) -> None:
        if batch < 1:
            raise InputError(None, f"batch must be >= 1, got {batch}")
        self.backend: Backend = select_backend(backend, model, "segmenter", threads)
        self.metadata = GraphMetadata.from_props(self.backend.metadata, self.backend.path)
        self.batch = min(batch, self.backend.max_batch or batch)
        self.long_side = long_side

    def segment(self, images: Sequence[np.ndarray], names: Sequence[str | Path] | None = None) -> list[Segmentation]:
        """Segment (H, W, 3) uint8 RGB images of any sizes; images of equal network size share graph calls.
        ``names`` (e.g. their files) appear in error messages."""
        names = list(names) if names is not None else [None] * len(images)
        sizes = [network_size(*image.shape[:2], self.long_side, name) for image, name in zip(images, names)]
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
                labels = labels.astype(np.uint8)
                if labels.shape != images[i].shape[:2]:
                    labels = cv2.resize(labels, images[i].shape[1::-1], interpolation=cv2.INTER_NEAREST)
                results[i] = Segmentation(labels, scores)
        return results  # type: ignore[return-value]


def image_paths(inputs: Sequence[Path]) -> list[Path]:
    """The image files named, and those directly inside named folders (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            paths.append(item)
        else:
            raise InputError(item, "no such image or folder")
    if not paths:
        raise InputError(inputs[0] if inputs else None, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def segment_files(model_path: Path, inputs: list[Path], out: Path, backend: str = "auto", batch: int = 8,
                  long_side: int | None = None) -> list[Path]:
    """Write ``<out>/<name>.png`` (VOC-palette label map) and ``<out>/<name>_overlay.jpg`` for every image
    named in ``inputs`` (files or folders), ``batch`` images per graph call; returns the label map paths."""
    segmenter = ImageSegmenter(model_path, backend, batch, long_side)
    paths = image_paths(inputs)
    written = []
    with tqdm(total=len(paths), desc="segment", unit="img", leave=False) as progress:
        for start in range(0, len(paths), segmenter.batch):
            chunk = paths[start:start + segmenter.batch]
            images = [read_image_rgb(p) for p in chunk]
            for path, image, result in zip(chunk, images, segmenter.segment(images, chunk)):
                write_palette_png(out / f"{path.stem}.png", result.labels)
                write_image_rgb(out / f"{path.stem}_overlay.jpg", overlay(image, result.labels))
                written.append(out / f"{path.stem}.png")
            progress.update(len(chunk))
    return written
