"""File I/O shared by every stage: atomic writes, palette PNG masks, JSON and image reading."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .errors import InputError

VOID = 255
# Pillow's own warning level for decompression bombs: images declaring more pixels than this are refused.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), shape (n, 3) uint8; index 255 is the void colour."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A kill mid-write leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def is_hidden(path: Path) -> bool:
    """A dot-file: a temporary of ``atomic_path`` (one a kill left behind included) or OS metadata such as
    macOS's ``._<name>`` files; never data, so folder listings skip it."""
    return path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """The entries directly inside ``folder`` named as images, in name order. A subfolder named so is listed too:
    ``wsvs segment`` reports it as unreadable rather than passing over it in silence."""
    return sorted(p for p in folder.iterdir() if not is_hidden(p) and p.suffix.lower() in IMAGE_SUFFIXES)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file is an InputError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None


def write_palette_png(path: str | Path, labels: np.ndarray) -> None:
    """Save a label map (H, W) of class indices as a VOC-palette PNG, so it is viewable, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"label map must be 2-D with values in 0..255, got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a palette (or grayscale) PNG label map as its raw indices, (H, W) uint8."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise InputError(path, f"label PNG must be palette or grayscale, got mode {image.mode}")
            return np.array(image)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, SyntaxError) as exc:
        raise InputError(path, f"not a readable PNG ({exc})") from None


def write_binary_png(path: str | Path, mask: np.ndarray) -> None:
    """Save a binary mask as a 0/255 grayscale PNG (the DAVIS convention), atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8), mode="L").save(tmp, "PNG")


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """An image or video frame declared larger than ``max_pixels`` is an InputError naming ``path``."""
    if width * height > max_pixels:
        raise InputError(path, f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the cap of "
                               f"{max_pixels / 1e6:.1f} (--max-pixels)")


def read_image_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; gray, alpha, palette, CMYK and 16-bit inputs are converted.

    The size its header declares is checked against ``max_pixels`` before any pixel is decoded, so a
    decompression bomb costs nothing. A missing, unreadable, truncated or oversized file is an InputError naming it.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not an image")
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        # Pillow warns about damaged metadata (and about large images, which the cap below decides): one line of
        # error per unreadable file is the report, readable pixels are what counts.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                check_pixels(path, *image.size, max_pixels)
                image.load()
                if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: keep the high byte
                    gray = np.clip(np.asarray(image) >> 8, 0, 255).astype(np.uint8)
                    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
                if image.mode == "F":
                    raise InputError(path, "unsupported pixel type (floating point)")
                return np.array(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise InputError(path, f"declared size is over Pillow's decompression-bomb limit ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for unidentified, truncated, broken files
        raise InputError(path, f"not a readable image ({exc})") from None


def write_image_rgb(path: str | Path, image: np.ndarray) -> None:
    """Save an (H, W, 3) uint8 RGB image (format from the suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
            raise InputError(path, "could not write image")


def add_h264_stream(container: Any, rate: Any, width: int, height: int, crf: int, preset: str,
                    x264_params: str = "") -> Any:
    """A libx264 yuv420p stream of a PyAV output container whose bytes depend on the frames only.

    One thread and no macroblock-tree rate control: with mbtree this libx264 gives different bytes from run
    to run for the same frames, so clips, their segmentations and everything trained on them would drift.
    ``x264_params`` adds to those settings (e.g. a fixed GOP).
    """
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1
    params = ":".join(p for p in (x264_params, "threads=1:no-mbtree=1") if p)
    stream.options = {"crf": str(crf), "preset": preset, "x264-params": params}
    return stream


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colours of a label map over an RGB image; background (0) and void stay as is.

    In uint8 throughout: a float copy of a photo of tens of megapixels would take gigabytes."""
    blended = cv2.addWeighted(image, 1 - alpha, voc_palette()[labels], alpha, 0)
    keep = (labels == 0) | (labels == VOID)
    blended[keep] = image[keep]
    return blended
