"""`wsvs adapt`: domain adaptation to still images (§5.2.1).

The model trained on videos labels the weakly annotated training images (§3.4 inference, with each image's
own class labels naming the present classes, since they are known there); the decoder is then fine-tuned on
those label maps: for every present class of an image, its multi-scale attention must give the binary mask
of that class's pixels. Images with several classes teach it the competition between classes that
single-class videos never show. The encoder is kept frozen, so its classification (which picks the classes
at inference) is exactly that of the input checkpoint. The label maps are saved as VOC-palette PNGs in
``<out>/labels/`` for inspection; ``--resume`` continues the fine-tuning after a kill.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsvs.runtime.config import load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import write_palette_png


@dataclass
class AdaptConfig:
    """Fine-tuning of the decoder on the model's own labels of the training images."""

    split: str = "train"
    epochs: int = 10
    batch_size: int = 14
    lr: float = 1e-4  # a tenth of the first training's: fine-tuning
    input_size: int | None = None  # training crop side; None: the encoder's own input size
    scale_jitter: tuple[float, ...] = (0.7, 1.3)
    min_foreground: float = 0.01  # class masks covering less of the image than this are not trained on
    seed: int = 0
    device: str = "auto"


def image_pairs(model, meta, data: Path, config: AdaptConfig, labels_out: Path):
    """Label the split with the model; return the training pairs and counts."""
    import torch
    from tqdm import tqdm

    from .cam import FrameAttention, scored_images
    from .segment import decode_classes, labels_from_foreground
    from .train_decoder import Pairs
    from .voc import VOCDataset

    dataset = VOCDataset(data, config.split, class_names=meta.class_names)
    pairs = Pairs([], [])
    counts = {"images": len(dataset), "class_masks": 0, "used": 0, "skipped_small": 0}
    for i, _, attention in tqdm(scored_images(FrameAttention(model, meta), dataset), total=len(dataset),
                                desc="label images", unit="img", leave=False):
        present = dataset.labels(i) > 0
        if not present.any():
            continue
        foreground = decode_classes(model.decoder, torch.from_numpy(attention[None]),
                                    torch.from_numpy(present[None])).numpy()
        labels = labels_from_foreground(foreground)[0]
        write_palette_png(labels_out / f"{dataset.ids[i]}.png", labels)
        for c in np.flatnonzero(present):
            mask = labels == c + 1
            counts["class_masks"] += 1
            if mask.mean() < config.min_foreground:
                counts["skipped_small"] += 1
                continue
            counts["used"] += 1
            pairs.attention.append(attention[c].astype(np.float16))
            pairs.masks.append(mask)
    return pairs, counts


def adapt(model_dir: Path, data: Path, out: Path, config: AdaptConfig, resume: bool = False
          ) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the decoder of ``model_dir`` on its own labels of the split; returns ``out`` and counts."""
    from .checkpoint import load_checkpoint
    from .train_decoder import fit_decoder

    if out.resolve() == model_dir.resolve():
        raise InputError(out, "must differ from --model: the labels are made with the input checkpoint")
    model, meta = load_checkpoint(model_dir)
    if not meta.decoder_trained:
        raise InputError(model_dir, "has no trained decoder (run train-decoder first)")
    pairs, counts = image_pairs(model, meta, data, config, out / "labels")
    record = {"source": str(model_dir.resolve()), "data": str(data.resolve()), "pairs": counts}
    return fit_decoder(model, meta, pairs, out, config, "adaptation", record, resume), counts


def run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(AdaptConfig)}
    config = load_config(AdaptConfig, args.config, **overrides)
    out, counts = adapt(args.model, args.data, args.out, config, resume=args.resume)
    print(f"adapt: {counts['used']} class masks of {counts['images']} images used "
          f"({counts['skipped_small']} too small skipped); checkpoint: {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt", help="adapt the model to still images with its own labels (paper §5.2.1)",
        description="Label the training images with the model (classes from the images' labels), then "
        "fine-tune the decoder on those label maps (per present class: attention -> binary mask). The encoder "
        "is kept as it is. Writes a checkpoint to --out and the label maps to <out>/labels/.")
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder with a trained decoder")
    p.add_argument("--data", type=Path, required=True, help="VOC-layout folder with image-level labels")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--config", type=Path, default=None, help="YAML with AdaptConfig keys")
    p.add_argument("--split", default=None, help="split to label and train on (default: train)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the last finished epoch in --out")
    p.set_defaults(func=run)
