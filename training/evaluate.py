"""`wsvs eval`: image segmentation of a checkpoint scored on a VOC-layout set (§5, Table 2 layout).

mIoU from a confusion matrix over background + classes, void pixels ignored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from wsvs.runtime.errors import InputError
from wsvs.runtime.io import write_json, write_palette_png


@dataclass
class EvaluateConfig:
    split: str = "val"
    batch_size: int = 8  # images per network call (same-size runs)


def method_name(meta) -> str:
    """The table row of a checkpoint: which stages trained it."""
    if "adaptation" in meta.extra:
        return "decoder + DA"
    return "decoder (videos)" if meta.decoder_trained else "untrained decoder"


def evaluate_model(model_dir: Path, data: Path, config: EvaluateConfig, masks_out: Path | None = None) -> dict:
    """Segment every image of the split with the checkpoint (§3.4) and score it against the masks."""
    from wsvs.runtime.metrics import ConfusionMatrix, format_iou_table, iou_table_json
    from wsvs.runtime.progress import progress_bar

    from .checkpoint import load_checkpoint
    from .inference import segment_dataset
    from .voc import VOCDataset

    model, meta = load_checkpoint(model_dir)
    if not meta.decoder_trained:
        raise InputError(model_dir, "has no trained decoder (run train-decoder first)")
    dataset = VOCDataset(data, config.split, class_names=meta.class_names)
    matrix = ConfusionMatrix(len(meta.class_names) + 1)
    for i, labels, _, _ in progress_bar(segment_dataset(model, meta, dataset, config.batch_size), total=len(dataset),
                                        desc="eval", unit="img", leave=False):
        matrix.update(labels, dataset.mask(i))
        if masks_out is not None:
            write_palette_png(masks_out / f"{dataset.ids[i]}.png", labels)
    rows = {method_name(meta): matrix.iou()}
    return {
        "model": str(model_dir),
        "split": config.split,
        "images": len(dataset),
        "miou": matrix.miou(),
        "pixel_accuracy": matrix.pixel_accuracy(),
        "table": iou_table_json(rows, meta.class_names),
        "table_text": format_iou_table(rows, meta.class_names),
    }


def run(args: argparse.Namespace) -> int:
    from wsvs.runtime.config import load_config

    config = load_config(EvaluateConfig, args.config, split=args.split)
    result = evaluate_model(args.model, args.data, config, args.masks)
    print(result["table_text"])
    print(f"mIoU {100 * result['miou']:.1f} on {result['images']} {config.split} images")
    if args.json:
        write_json(args.json, result)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", aliases=["eval"], help="score image segmentation on a VOC-layout set (mIoU, per-class table)",
        description="Segment every image of a split with the encoder and decoder (paper §3.4) and score it: "
        "confusion-matrix mIoU over background + classes with void ignored, per class in the paper's Table 2 "
        "layout, printed and optionally written as JSON.")
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder with a trained decoder")
    p.add_argument("--data", type=Path, required=True, help="VOC-layout folder (JPEGImages, SegmentationClass)")
    p.add_argument("--split", default=None, help="split name or list file (default: val)")
    p.add_argument("--config", type=Path, default=None, help="YAML with EvaluateConfig keys")
    p.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    p.add_argument("--masks", type=Path, default=None, help="folder for the predicted VOC-palette masks")
    p.set_defaults(func=run)
