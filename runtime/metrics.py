"""Segmentation metrics: confusion-matrix IoU (PASCAL VOC), binary J (DAVIS) and the paper's IoU table.

Numpy only: the same code scores image segmentation (Table 2) and video segmentation (Table 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .io import VOID

# Column headers of the paper's Table 2 for the PASCAL VOC class names.
VOC_ABBREVIATIONS = {
    "aeroplane": "aero",
    "bicycle": "bike",
    "diningtable": "table",
    "motorbike": "mbk",
    "pottedplant": "plant",
    "tvmonitor": "tv",
}


class ConfusionMatrix:
    """Accumulates a (num_classes, num_classes) pixel count matrix: rows are ground truth, columns prediction."""

    def __init__(self, num_classes: int, ignore_index: int = VOID) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Count one prediction against its ground truth (same shape, integer labels); void gt is skipped."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        scored = gt != self.ignore_index
        gt_scored = gt[scored].astype(np.int64)
        pred_scored = pred[scored].astype(np.int64)
        for name, labels in (("ground truth", gt_scored), ("prediction", pred_scored)):
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{name} has labels outside 0..{self.num_classes - 1} "
                    f"(min {labels.min()}, max {labels.max()}) on non-void pixels"
                )
        n = self.num_classes
        self.matrix += np.bincount(gt_scored * n + pred_scored, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from a worker process) into this one; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        """Per-class intersection over union, float64; NaN for a class absent from both gt and prediction."""
        true_positive = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur (the VOC benchmark number)."""
        return _nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        """Fraction of non-void pixels labelled correctly (NaN before any update)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def binary_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """The DAVIS region similarity J of two masks (non-zero = foreground); both empty counts as 1.0."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else 1.0


def class_abbreviation(name: str) -> str:
    """A table column header: the paper's short form of a VOC class, otherwise the first 6 characters."""
    return VOC_ABBREVIATIONS.get(name, name[:6])


def format_iou_table(rows: Mapping[str, Sequence[float]], class_names: list[str]) -> str:
    """The paper's Table 2 layout: one line per method; bkg, each class, mean; IoU in percent, 1 decimal.

    ``class_names`` are the object classes (no background); each row holds 1 + len(class_names) IoU values
    in [0, 1], background first. NaN (a class absent from gt and prediction) shows as "-".
    """
    header = ["Method", "bkg", *(class_abbreviation(name) for name in class_names), "mean"]
    table = [header]
    for method, values in rows.items():
        per_class = _checked_row(method, values, class_names)
        table.append([method, *(_percent(value) for value in per_class), _percent(_nanmean(per_class))])
    method_width = max(len(line[0]) for line in table)
    widths = [max(len(name), 5) for name in header[1:]]  # 5 = len("100.0")
    return "\n".join(
        "  ".join([line[0].ljust(method_width), *(cell.rjust(w) for cell, w in zip(line[1:], widths))])
        for line in table
    )


def iou_table_json(rows: Mapping[str, Sequence[float]], class_names: list[str]) -> dict:
    """The same table for JSON reports: IoU as fractions in [0, 1], full class names, None for NaN.

    {"classes": ["background", *class_names], "rows": {method: {"per_class": {name: iou}, "mean": miou}}}
    """
    classes = ["background", *class_names]
    table_rows = {}
    for method, values in rows.items():
        per_class = _checked_row(method, values, class_names)
        table_rows[method] = {
            "per_class": {name: _json_number(value) for name, value in zip(classes, per_class)},
            "mean": _json_number(_nanmean(per_class)),
        }
    return {"classes": classes, "rows": table_rows}


def _checked_row(method: str, values: Sequence[float], class_names: list[str]) -> np.ndarray:
    row = np.asarray(values, dtype=np.float64)
    if row.shape != (len(class_names) + 1,):
        raise ValueError(
            f"row {method!r} has {row.size} values, expected {len(class_names) + 1} (background + classes)"
        )
    return row


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    # NaN when no class occurs at all, without numpy's "mean of empty slice" warning.
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100.0 * value:.1f}"


def _json_number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
