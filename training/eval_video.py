"""`wsvs eval-video`: video segmentation IoU against DAVIS-layout ground truth (the paper's Table 4 protocol).

Per video, the IoU is the mean over its ground-truth frames of the binary IoU (the DAVIS J); a frame with no
predicted mask counts as an empty prediction. ``mean_iou`` averages the videos ("video avg."), ``class_avg``
averages within each class first, then over classes ("class avg.").
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsvs.runtime.errors import InputError
from wsvs.runtime.io import is_hidden, read_json, read_label_png, write_json
from wsvs.runtime.metrics import binary_iou


def ground_truth_sequences(gt_dir: Path) -> dict[str, list[Path]]:
    """{sequence: its mask PNGs, sorted} from ``GT/Annotations/480p/<seq>/*.png`` or ``GT/<seq>/*.png``."""
    if not gt_dir.is_dir():
        raise InputError(gt_dir, "ground-truth folder not found")
    root = gt_dir / "Annotations" / "480p"
    if not root.is_dir():
        root = gt_dir
    sequences = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        masks = sorted(p for p in folder.glob("*.png") if not is_hidden(p))
        if masks:
            sequences[folder.name] = masks
    if not sequences:
        raise InputError(gt_dir, "holds no ground-truth sequences (Annotations/480p/<seq>/*.png or <seq>/*.png)")
    return sequences


def video_class(sequence: str, pred_dir: Path, classes: Mapping[str, str] | None) -> str:
    """The class of a video: the ``classes`` mapping, else the prediction record's class, else the name's
    prefix before its last "_" (YouTube-Objects style ``aeroplane_0001``)."""
    if classes and sequence in classes:
        return classes[sequence]
    record_path = pred_dir / f"{sequence}.json"
    if record_path.is_file():
        name = read_json(record_path).get("class")
        if name:
            return str(name)
    return sequence.rsplit("_", 1)[0]


def evaluate_videos(pred_dir: Path, gt_dir: Path, classes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score ``<pred>/<seq>/<frame>.png`` masks (non-zero = object) against the ground truth.

    Prediction masks of another size are resized (nearest) to the ground truth's size.
    """
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    sequences = ground_truth_sequences(gt_dir)
    # no folder named after any ground-truth sequence is a layout mismatch (e.g. segment-videos' per-clip
    # folders against whole-video ground truth), not a method that found nothing: it would score empty masks
    if not any((pred_dir / sequence).is_dir() for sequence in sequences):
        raise InputError(pred_dir, f"has no folder named after a ground-truth sequence of {gt_dir} "
                                   f"(such as {next(iter(sequences))}/)")
    per_video: dict[str, dict[str, Any]] = {}
    for sequence, gt_paths in sequences.items():
        ious, missing = [], 0
        for gt_path in gt_paths:
            gt = read_label_png(gt_path) > 0
            pred_path = pred_dir / sequence / gt_path.name
            if pred_path.is_file():
                pred = read_label_png(pred_path) > 0
                if pred.shape != gt.shape:
                    pred = cv2.resize(pred.astype(np.uint8), gt.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            else:
                pred = np.zeros_like(gt)
                missing += 1
            ious.append(binary_iou(pred, gt))
        per_video[sequence] = {
            "class": video_class(sequence, pred_dir, classes),
            "iou": float(np.mean(ious)),
            "frames": len(gt_paths),
            "missing_frames": missing,
        }
    by_class: dict[str, list[float]] = {}
    for scores in per_video.values():
        by_class.setdefault(scores["class"], []).append(scores["iou"])
    per_class = {name: float(np.mean(values)) for name, values in sorted(by_class.items())}
    return {
        "per_video": per_video,
        "mean_iou": float(np.mean([scores["iou"] for scores in per_video.values()])),
        "class_avg": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table: videos, then classes, then the two averages (IoU in percent)."""
    width = max(len(name) for name in [*report["per_video"], *report["per_class"], "video avg."])
    lines = [f"{'video':<{width}}  {'class':<12} {'frames':>6} {'missing':>7} {'IoU':>6}"]
    for name, scores in report["per_video"].items():
        lines.append(f"{name:<{width}}  {scores['class']:<12} {scores['frames']:>6} "
                     f"{scores['missing_frames']:>7} {100 * scores['iou']:>6.1f}")
    lines.append("")
    lines.extend(f"{name:<{width}}  {100 * iou:>6.1f}" for name, iou in report["per_class"].items())
    lines.append(f"{'class avg.':<{width}}  {100 * report['class_avg']:>6.1f}")
    lines.append(f"{'video avg.':<{width}}  {100 * report['mean_iou']:>6.1f}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-video",
        help="score video masks against DAVIS-layout ground truth (class avg. / video avg. IoU)",
        description="IoU per video = mean binary IoU over its ground-truth frames (frames without a predicted "
        "mask count as empty); reports the mean over videos and over classes (averaged within each class "
        "first), as in the paper's Table 4.",
    )
    parser.add_argument("--pred", type=Path, required=True, metavar="DIR",
                        help="predicted masks: <pred>/<seq>/<frame>.png")
    parser.add_argument("--gt", type=Path, required=True, metavar="DIR",
                        help="ground truth: <gt>/Annotations/480p/<seq>/*.png or <gt>/<seq>/*.png")
    parser.add_argument("--classes", type=Path, metavar="JSON",
                        help="JSON {sequence: class}; default: the class in <pred>/<seq>.json, else the name's "
                        "prefix before its last '_'")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    classes = None
    if args.classes is not None:
        classes = read_json(args.classes)
        if not isinstance(classes, dict):
            raise InputError(args.classes, "must map sequence names to class names")
    report = evaluate_videos(args.pred, args.gt, classes)
    print(format_report(report))
    if args.json is not None:
        write_json(args.json, report)
    return 0
