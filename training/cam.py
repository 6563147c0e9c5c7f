"""Class activation maps (§3.1, Eq. 2): frame scores and multi-scale attention; `wsvs cam` and `wsvs eval-cam`.

The CAM baseline segmentation (threshold the normalised CAM, background elsewhere) is the reference that the
video-supervised decoder must beat.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wsvs.runtime.io import overlay, read_image_rgb, write_image_rgb, write_json, write_palette_png
from wsvs.runtime.preprocess import normalise


class FrameAttention:
    """A trained encoder applied to RGB frames: class probabilities and multi-scale CAMs, batched."""

    def __init__(self, model, meta, device: str = "cpu", batch_size: int = 16) -> None:
        self.model = model
        self.meta = meta
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> FrameAttention:
        from .checkpoint import load_checkpoint

        model, meta = load_checkpoint(model_dir, device)
        return cls(model, meta, device)

    @classmethod
    def load_in_worker(cls, model_dir: str | Path, device: str, threads: int | None) -> FrameAttention:
        """The model as a worker process of ``wsvs.runtime.executor`` builds it: on ``device`` ("auto" resolved in
        the worker, which may not be where the command runs) and ``threads`` CPU threads (None: the process's own
        setting)."""
        import torch

        from .distributed import resolve_device

        if threads is not None:
            torch.set_num_threads(threads)
        return cls.load(model_dir, resolve_device(device))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    def _batches(self, frames: np.ndarray):
        import torch

        if frames.ndim == 3:
            frames = frames[None]
        for start in range(0, len(frames), self.batch_size):
            batch = normalise(frames[start:start + self.batch_size], self.meta.mean, self.meta.std)
            yield torch.from_numpy(batch).to(self.device)

    def scores(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, C) float32 class probabilities at the frames' own size."""
        import torch

        out = []
        with torch.inference_mode():
            for batch in self._batches(frames):
                logits, _ = self.model.encoder(batch)
                out.append(torch.sigmoid(logits).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def scores_and_attention(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and multi-scale attention of every class (N, C, H, W) in [0, 1]."""
        import torch

        from .models import multiscale_attention

        probs, maps = [], []
        with torch.inference_mode():
            for batch in self._batches(frames):
                logits, _ = self.model.encoder(batch)
                probs.append(torch.sigmoid(logits).cpu().numpy())
                maps.append(multiscale_attention(self.model.encoder, batch, self.meta.scales).cpu().numpy())
        return np.concatenate(probs).astype(np.float32), np.concatenate(maps).astype(np.float32)

    def attention(self, frames: np.ndarray, class_index: int) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, H, W) float32 multi-scale attention of one class in [0, 1]."""
        import torch

        from .models import multiscale_attention

        maps = []
        with torch.inference_mode():
            for batch in self._batches(frames):
                cams = multiscale_attention(self.model.encoder, batch, self.meta.scales)
                maps.append(cams[:, class_index].cpu().numpy())
        return np.concatenate(maps).astype(np.float32)


def scored_images(attention_model: FrameAttention, dataset, batch_size: int = 16):
    """Yield (index, probs (C,), attention (C, H, W)) for a dataset, batching runs of same-size images."""
    batch: list[tuple[int, np.ndarray]] = []

    def flush():
        probs, attention = attention_model.scores_and_attention(np.stack([image for _, image in batch]))
        for (i, _), p, a in zip(batch, probs, attention):
            yield i, p, a
        batch.clear()

    for i in range(len(dataset)):
        image = dataset.image(i)
        if batch and (image.shape != batch[0][1].shape or len(batch) == batch_size):
            yield from flush()
        batch.append((i, image))
    if batch:
        yield from flush()


def cam_segmentation(probs: np.ndarray, attention: np.ndarray, class_threshold: float,
                     cam_threshold: float) -> np.ndarray:
    """The CAM baseline for one image: label = 1 + the present class of highest attention where that
    attention passes ``cam_threshold``, background (0) elsewhere. probs (C,), attention (C, H, W)."""
    present = probs > class_threshold
    labels = np.zeros(attention.shape[1:], np.uint8)
    if not present.any():
        return labels
    masked = np.where(present[:, None, None], attention, -1.0)
    best = masked.argmax(axis=0)
    peak = masked.max(axis=0)
    labels[peak > cam_threshold] = best[peak > cam_threshold] + 1
    return labels


def heatmap_overlay(image: np.ndarray, attention: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A JET heat map of one attention map (H, W) in [0, 1] blended over an RGB image."""
    import cv2

    heat = cv2.applyColorMap((np.clip(attention, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


@dataclass
class EvalCamConfig:
    """`wsvs eval-cam`: how the CAM baseline is thresholded."""

    split: str = "val"
    cam_threshold: float = 0.3
    class_threshold: float | None = None  # None: the checkpoint's own threshold
    # attention input scales; None: the checkpoint's (the multi-scale attention of §3.2), (1.0,): Eq. 2's CAM alone
    scales: tuple[float, ...] | None = None


def evaluate_cam(model_dir: Path, data: Path, config: EvalCamConfig, out: Path | None = None) -> dict:
    """Score the CAM baseline on a VOC-layout set: mIoU (confusion matrix, void ignored), per-class IoU,
    and the CAM recall of object pixels (how much of each object the attention of its class covers)."""
    from wsvs.runtime.metrics import ConfusionMatrix, format_iou_table, iou_table_json
    from wsvs.runtime.progress import progress_bar

    from .voc import VOCDataset

    attention_model = FrameAttention.load(model_dir)
    if config.scales:
        attention_model.meta = replace(attention_model.meta, scales=tuple(config.scales))
    meta = attention_model.meta
    class_threshold = meta.class_threshold if config.class_threshold is None else config.class_threshold
    dataset = VOCDataset(data, config.split, class_names=attention_model.class_names)
    matrix = ConfusionMatrix(len(dataset.class_names) + 1)
    covered = total = 0
    for i, probs, attention in progress_bar(scored_images(attention_model, dataset), total=len(dataset),
                                            desc="eval-cam", unit="img", leave=False):
        gt = dataset.mask(i)
        labels = cam_segmentation(probs, attention, class_threshold, config.cam_threshold)
        matrix.update(labels, gt)
        for c in np.unique(gt):
            if 0 < c < 255:
                on_object = gt == c
                covered += int((attention[c - 1][on_object] > config.cam_threshold).sum())
                total += int(on_object.sum())
        if out is not None:
            write_palette_png(out / "masks" / f"{dataset.ids[i]}.png", labels)
    names = dataset.class_names
    result = {
        "split": config.split,
        "images": len(dataset),
        "cam_threshold": config.cam_threshold,
        "class_threshold": class_threshold,
        "scales": list(meta.scales),
        "miou": matrix.miou(),
        "cam_recall": covered / max(total, 1),
        "table": iou_table_json({"CAM baseline": matrix.iou()}, names),
        "table_text": format_iou_table({"CAM baseline": matrix.iou()}, names),
    }
    if out is not None:
        write_json(out / "eval_cam.json", result)
    return result


def write_cam_overlays(model_dir: Path, images: list[Path], out: Path) -> list[Path]:
    """For each image, a heat-map overlay PNG per predicted class, plus the CAM baseline label overlay."""
    attention_model = FrameAttention.load(model_dir)
    meta = attention_model.meta
    written = []
    for path in images:
        image = read_image_rgb(path)
        probs, attention = attention_model.scores_and_attention(image[None])
        present = np.flatnonzero(probs[0] > meta.class_threshold)
        if present.size == 0:  # still show the most likely class, so there is always something to look at
            present = np.array([int(probs[0].argmax())])
        for c in present:
            target = out / f"{path.stem}_{attention_model.class_names[c]}.png"
            write_image_rgb(target, heatmap_overlay(image, attention[0, c]))
            written.append(target)
        labels = cam_segmentation(probs[0], attention[0], meta.class_threshold, EvalCamConfig.cam_threshold)
        target = out / f"{path.stem}_cam_labels.png"
        write_image_rgb(target, overlay(image, labels))
        written.append(target)
    return written


def run_cam(args: argparse.Namespace) -> int:
    written = write_cam_overlays(args.model, args.images, args.out)
    print(f"wrote {len(written)} overlays to {args.out}")
    return 0


def run_eval_cam(args: argparse.Namespace) -> int:
    from wsvs.runtime.config import load_config

    config = load_config(EvalCamConfig, args.config, split=args.split, cam_threshold=args.cam_threshold,
                         scales=tuple(args.scales) if args.scales else None)
    result = evaluate_cam(args.model, args.data, config, args.out)
    print(result["table_text"])
    print(f"mIoU {100 * result['miou']:.1f}  CAM recall of object pixels {100 * result['cam_recall']:.1f}%")
    if args.json:
        write_json(args.json, result)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    cam = subparsers.add_parser(
        "cam", help="write CAM heat-map overlays per predicted class",
        description="Write, for each image, a CAM heat-map overlay PNG per predicted class "
        "(<out>/<image>_<class>.png) and the CAM-threshold label overlay (<out>/<image>_cam_labels.png).")
    cam.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    cam.add_argument("--model", type=Path, required=True, help="checkpoint folder from train-encoder")
    cam.add_argument("--out", type=Path, required=True, help="folder for the overlay PNGs")
    cam.set_defaults(func=run_cam)

    ev = subparsers.add_parser(
        "eval-cam", help="score the CAM-threshold baseline segmentation (mIoU, per-class table)",
        description="The CAM baseline: threshold each present class's normalised multi-scale CAM, background "
        "elsewhere; scored by confusion-matrix mIoU with void ignored, per class in the paper's Table 2 layout. "
        "Also reports the CAM recall of object pixels.")
    ev.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    ev.add_argument("--data", type=Path, required=True, help="VOC-layout folder (JPEGImages, SegmentationClass)")
    ev.add_argument("--split", default=None, help="split name or list file (default: val)")
    ev.add_argument("--cam-threshold", type=float, default=None, help="normalised CAM threshold (default 0.3)")
    ev.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                    help="attention input scales (default: the checkpoint's multi-scale set; 1 = the CAM of Eq. 2)")
    ev.add_argument("--config", type=Path, default=None, help="YAML with EvalCamConfig keys")
    ev.add_argument("--out", type=Path, default=None, help="folder for palette PNG masks and eval_cam.json")
    ev.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    ev.set_defaults(func=run_eval_cam)
