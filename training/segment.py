"""Semantic segmentation with the whole network (§3.4); `wsvs segment` for images and videos.

The classes whose probability passes the checkpoint's class threshold are present; the decoder turns the
multi-scale attention of each into a foreground probability map, and each pixel takes the present class of
highest probability, or background where that probability is below the checkpoint's foreground threshold (or no
class is present): ``wsvs.runtime.contract.labels_from_foreground``, the rule every backend applies.

`wsvs segment` runs the checkpoint in PyTorch (backend `pytorch-eager`), or its exported graphs (`wsvs export`) on
the torch-free runtime: TensorRT, ONNX Runtime CUDA or CPU; ``--backend auto`` takes the fastest that loads and
says which.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wsvs.runtime.contract import labels_from_foreground
from wsvs.runtime.errors import InputError
from wsvs.runtime.image_segmenter import Segmentation, SizeLimits, restore_size, working_size
from wsvs.runtime.io import MAX_PIXELS, VIDEO_SUFFIXES
from wsvs.runtime.preprocess import resize_rgb


def segment_images(model, meta, images: np.ndarray, present: np.ndarray | None = None,
                   device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment same-size images (N, H, W, 3) uint8 RGB with the encoder and decoder of ``model``.

    Returns labels (N, H, W) uint8 (0 background, 1 + class index), class probabilities (N, C) and the
    decoder's foreground probability per class (N, C, H, W), 0 for classes not present. ``present`` (N, C)
    bool, when given, names the present classes instead of thresholding the probabilities (images whose
    labels are known, as in domain adaptation).
    """
    import torch

    from wsvs.runtime.preprocess import normalise

    from .models import multiscale_attention

    x = torch.from_numpy(normalise(images, meta.mean, meta.std)).to(device)
    with torch.inference_mode():
        logits, _ = model.encoder(x)
        scores = torch.sigmoid(logits)
        chosen = scores > meta.class_threshold if present is None else torch.from_numpy(present).to(device)
        if chosen.any():
            foreground = decode_classes(model.decoder, multiscale_attention(model.encoder, x, meta.scales), chosen)
        else:
            foreground = torch.zeros(*chosen.shape, *images.shape[1:3])
        foreground = foreground.cpu().numpy()
    return labels_from_foreground(foreground, meta.foreground_threshold), scores.cpu().numpy(), foreground


def decode_classes(decoder, attention, chosen):
    """The decoder's foreground probability (N, C, H, W) tensor for the chosen (N, C) bool tensor of classes,
    0 for the others, from the multi-scale attention (N, C, H, W) tensor."""
    import torch

    foreground = torch.zeros_like(attention)
    image_index, class_index = torch.nonzero(chosen, as_tuple=True)
    with torch.inference_mode():
        logits = decoder(attention[image_index, class_index][:, None])[:, 0]
    foreground[image_index, class_index] = torch.sigmoid(logits)
    return foreground


def segment_dataset(model, meta, dataset, batch_size: int = 8, use_image_labels: bool = False,
                    device: str = "cpu") -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (index, labels, probs, foreground) for each image of a VOCDataset, batching runs of same-size
    images. ``use_image_labels``: the dataset's image-level labels name the present classes."""
    batch: list[int] = []
    images: list[np.ndarray] = []

    def flush():
        present = np.stack([dataset.labels(i) > 0 for i in batch]) if use_image_labels else None
        results = segment_images(model, meta, np.stack(images), present, device)
        yield from zip(batch, *results)
        batch.clear()
        images.clear()

    for i in range(len(dataset)):
        image = dataset.image(i)
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield from flush()
        batch.append(i)
        images.append(image)
    if images:
        yield from flush()


class EagerSegmenter:
    """The checkpoint run by PyTorch (backend ``pytorch-eager``), one image per call, at the working sizes of the
    runtime's ``ImageSegmenter`` (within MIN_SIDE..MAX_SIDE, as there is no engine profile)."""

    batch = 1

    def __init__(self, model_dir: Path, long_side: int | None = None) -> None:
        from .checkpoint import checkpoint_files, load_checkpoint

        self.model, self.meta = load_checkpoint(model_dir)
        if not self.meta.decoder_trained:
            raise InputError(model_dir, "has no trained decoder (run train-decoder first)")
        self.path = checkpoint_files(model_dir)[0]
        self.limits = SizeLimits()
        self.long_side = self.limits.long_side(long_side, self.meta.input_size, None)

    def describe(self) -> str:
        import torch

        from wsvs.runtime.backends import EAGER

        return f"{EAGER} (PyTorch {torch.__version__}) running {self.path}"

    def segment(self, images: list[np.ndarray]) -> list[Segmentation]:
        results = []
        for image in images:
            size = working_size(*image.shape[:2], self.long_side, self.limits)
            labels, scores, _ = segment_images(self.model, self.meta, resize_rgb(image, size)[None])
            results.append(Segmentation(restore_size(labels[0], image.shape[:2]), scores[0]))
        return results


def split_inputs(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """Image inputs (files or folders of images) and video files."""
    videos = [p for p in inputs if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    return [p for p in inputs if p not in videos], videos


def choose_backend(name: str, model: Path) -> str:
    """``auto`` falls back to PyTorch when no exported graph sits beside ``model``."""
    from wsvs.runtime.backends import EAGER, graph_file

    exported = any(graph_file(model, "segmenter", suffix).is_file() for suffix in (".onnx", ".engine"))
    if name == "auto" and not exported:
        print(f"backend auto: {EAGER} (no exported graph beside {model}; `wsvs export --model {model}` makes one)")
        return EAGER
    return name


def run(args: argparse.Namespace) -> int:
    """Every input that can be segmented is; the others are listed at the end (exit 0), unless none could be
    (one line, exit 2)."""
    from wsvs.runtime.backends import EAGER
    from wsvs.runtime.image_segmenter import ImageSegmenter, SegmentReport, segment_files
    from wsvs.runtime.video_segmenter import VideoSegmenter

    model = args.model
    engine = model.suffix == ".engine" and not model.is_dir()
    backend = choose_backend("tensorrt" if engine and args.backend == "auto" else args.backend, model)
    images, videos = split_inputs(args.images)
    if backend == EAGER and videos:
        raise InputError(videos[0], f"video input runs on the exported graphs: run `wsvs-export --model {model}` "
                         "first")
    report = SegmentReport()
    if images:
        segmenter = (EagerSegmenter(model, args.long_side) if backend == EAGER
                     else ImageSegmenter(model, backend, args.batch, args.long_side))
        print(f"segment: {segmenter.describe()}", file=sys.stderr)
        segment_files(segmenter, images, args.out, args.max_pixels, report)
        print(f"segment: {len(report.written)} label maps (VOC palette) and overlays in {args.out}")
    videos_done = 0
    if videos:
        video_segmenter = VideoSegmenter(model, backend, args.batch, args.long_side, args.refine, args.window,
                                         max_pixels=args.max_pixels)
        print(f"segment: {video_segmenter.describe()}", file=sys.stderr)
        for video in videos:
            try:
                summary = video_segmenter.segment(video, args.out / video.stem)
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


def _backend_name(text: str) -> str:
    """Backend names as given; ``pytorch`` is the older spelling of ``pytorch-eager``."""
    from wsvs.runtime.backends import EAGER

    return EAGER if text == "pytorch" else text


def register(subparsers: argparse._SubParsersAction) -> None:
    from wsvs.runtime.backends import BACKENDS, EAGER
    from wsvs.runtime.video_segmenter import REFINEMENTS

    p = subparsers.add_parser(
        "segment", help="segment images and videos with the encoder and decoder (paper §3.4)",
        description="For each image or frame: classes over the checkpoint's threshold, the decoder's foreground "
        "probability from each class's multi-scale attention, pixel-wise maximum (background below the "
        "checkpoint's foreground threshold). Writes "
        "<out>/<name>.png (VOC-palette label map) and <out>/<name>_overlay.jpg per image, and "
        "<out>/<video>/masks/*.png, overlay.mp4 and summary.json per video. Videos and the TensorRT / ONNX Runtime "
        "backends use the graphs of `wsvs export`.")
    p.add_argument("images", nargs="+", type=Path, metavar="INPUT", help="image files, folders of images, videos")
    p.add_argument("--model", type=Path, required=True,
                   help="checkpoint folder with a trained decoder (and its export), or an exported segmenter graph "
                   "X.onnx / TensorRT engine X.engine (X.encoder/decoder.* beside)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--backend", default="auto", type=_backend_name, choices=["auto", EAGER, *BACKENDS],
                   help=f"auto (default): TensorRT, else ONNX Runtime CUDA, else CPU, else {EAGER}; "
                   "auto on an X.engine file is tensorrt")
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
