"""Semantic segmentation of still images with the whole network (§3.4); `wsvs segment`.

The classes whose probability passes the checkpoint's threshold are present; the decoder turns the multi-scale
attention of each into a foreground probability map, and each pixel takes the present class of highest
probability, or background where that probability is below 0.5 (or no class is present).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wsvs.runtime.errors import InputError
from wsvs.runtime.io import overlay, read_image_rgb, write_image_rgb, write_palette_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
FOREGROUND_THRESHOLD = 0.5


def labels_from_foreground(foreground: np.ndarray) -> np.ndarray:
    """(N, C, H, W) foreground probabilities (0 for absent classes) -> (N, H, W) uint8 labels:
    1 + the class of highest probability, 0 (background) where that probability is below 0.5."""
    best = foreground.argmax(axis=1)
    peak = foreground.max(axis=1)
    return np.where(peak >= FOREGROUND_THRESHOLD, best + 1, 0).astype(np.uint8)


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
    return labels_from_foreground(foreground), scores.cpu().numpy(), foreground


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


def image_paths(inputs: list[Path]) -> list[Path]:
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
        raise InputError(inputs[0], "holds no images (.jpg, .jpeg, .png, .bmp)")
    return paths


def segment_files(model_dir: Path, inputs: list[Path], out: Path) -> list[Path]:
    """Write ``<out>/<name>.png`` (VOC-palette label map) and ``<out>/<name>_overlay.jpg`` per image."""
    from tqdm import tqdm

    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(model_dir)
    if not meta.decoder_trained:
        raise InputError(model_dir, "has no trained decoder (run train-decoder first)")
    written = []
    for path in tqdm(image_paths(inputs), desc="segment", unit="img", leave=False):
        image = read_image_rgb(path)
        labels = segment_images(model, meta, image[None])[0][0]
        write_palette_png(out / f"{path.stem}.png", labels)
        write_image_rgb(out / f"{path.stem}_overlay.jpg", overlay(image, labels))
        written.append(out / f"{path.stem}.png")
    return written


def run(args: argparse.Namespace) -> int:
    written = segment_files(args.model, args.images, args.out)
    print(f"segment: {len(written)} label maps (VOC palette) and overlays in {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="segment still images with the encoder and decoder (paper §3.4)",
        description="For each image: classes over the checkpoint's threshold, the decoder's foreground "
        "probability from each class's multi-scale attention, pixel-wise maximum (background below 0.5). "
        "Writes <out>/<name>.png (VOC-palette label map) and <out>/<name>_overlay.jpg.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE|DIR", help="image files or folders of images")
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder with a trained decoder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)
