"""`wsvs adapt`: domain adaptation to still images (§5.2.1).

The model trained on videos labels the weakly annotated training images (§3.4 inference, with each image's own
class labels naming the present classes, since they are known there), and each present class's mask is cut again
by the graph cut of §3.2 on the image, with the decoder's foreground probability as its attention term and the
colour GMMs it seeds (no motion in a still image): the video masks the decoder learned from were made the same way,
and the decoder alone under-segments (on a demo world's training images, the refined labels score 86 mIoU against
the truth where the decoder's score 55; benchmarks/RESULTS.md). Then the whole network is fine-tuned on those label
maps, as the paper fine-tunes "the network using the generated annotations as strong supervision": for every
present class of an image, the decoder's output on that class's multi-scale attention must give the class's pixels
(binary cross-entropy), and the encoder keeps its image-level loss (Eq. 1), so its class scores, which pick the
classes at inference, stay trained. Fine-tuning the encoder is what lets the attention itself move toward the
labelled regions; a decoder that sees only the attention cannot (on the demo world, fine-tuning the decoder alone,
even on the ground-truth masks, did not beat the video-trained decoder). The gradient reaches the encoder through
the attention at every scale (on a tuning world the adaptation gained 4.1 val mIoU points so, 2.0 through the
scale-1 attention alone, for a fifth more time). Images with several classes teach the competition between
classes that single-class videos never show. The label maps are saved as VOC-palette PNGs in ``<out>/labels/``
for inspection; ``--resume`` continues the fine-tuning after a kill.

Self-training can go wrong without anyone seeing it: only image-level labels are known, so a share of the labelled
images (``holdout``) is kept out of the fine-tuning to judge it; where the images are frames of videos
(``holdout_sequences``), whole sequences are, since a frame held out beside its trained neighbours is a
near-duplicate of them and cannot show an adaptation that fits the training videos and loses on new ones. The
foreground threshold is calibrated on those held-out labels, not on the ones trained on (which the network learns to
reproduce at any cut), and the adapted model must keep the input model's class mAP there and agree with their label
maps (mIoU) at least about as well as the input model does: fine-tuning on labels must move the model toward the
labels of images it did not see, not away. When it does not, the adaptation is refused: ``--out`` holds the input
model, and its record says why; the refused model is kept in ``<out>/refused/`` for inspection (finished work is
never thrown away).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsvs.runtime.config import load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import write_palette_png
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames

REFUSED = "refused"  # sub-folder of --out that keeps an adaptation the held-out check refused


def still_image_refinement() -> VideoSegConfig:
    """§3.2's graph cut on one still image: the decoder's foreground probability as the attention term, the colour
    GMMs seeded by it, no motion; superpixels of about 6 px at the demo's 128 px."""
    return VideoSegConfig(work_long_side=0, num_superpixels=500, lambda_a=0.5, lambda_m=0.0, pairwise_weight=8.0)


@dataclass
class AdaptConfig:
    """Fine-tuning of the whole network on the model's own labels of the training images."""

    split: str = "train"
    epochs: int = 2
    batch_size: int = 14
    lr: float = 3e-4  # under a third of the first trainings': fine-tuning (1e-4 gained less on a tuning world)
    input_size: int | None = None  # training crop side; None: the encoder's own input size
    scale_jitter: tuple[float, ...] = (0.7, 1.3)
    min_foreground: float = 0.01  # class masks covering less of the image than this are not trained on
    # the graph cut that refines each class's label mask (its attention_threshold is the model's foreground one)
    refinement: VideoSegConfig = field(default_factory=still_image_refinement)
    holdout: float = 0.15  # share of the labelled images (or sequences) kept out of fine-tuning to judge it
    holdout_sequences: bool = False  # hold out whole sequences: an image id's part before its last "_" (DAVIS world)
    max_map_drop: float = 0.02  # the adapted model's class mAP on the held-out images may fall this much at most
    # ... and its label maps' agreement (mIoU) with the held-out labels may fall this much at most below the input
    # model's (on a tuning world, fine-tunings whose agreement fell by more lost val mIoU, those within it gained)
    max_agreement_drop: float = 0.02
    seed: int = 0
    device: str = "auto"


@dataclass
class LabelledImages:
    """The images to fine-tune on: dataset indices, the model's label map of each and the classes whose
    masks are trained on (present, and not too small)."""

    indices: list[int]
    labels: list[np.ndarray]
    classes: list[np.ndarray]


def label_images(model, meta, dataset, config: AdaptConfig, labels_out: Path) -> tuple[LabelledImages, dict]:
    """Label the split with the model, knowing each image's classes; returns the images and counts."""
    from wsvs.runtime.progress import progress_bar

    from .inference import segment_dataset

    images = LabelledImages([], [], [])
    # the colour GMMs' foreground seeds are what the model calls foreground
    refinement = dataclasses.replace(config.refinement, attention_threshold=meta.foreground_threshold)
    counts = {"images": len(dataset), "class_masks": 0, "used": 0, "skipped_small": 0}
    for i, labels, _, foreground in progress_bar(segment_dataset(model, meta, dataset, use_image_labels=True),
                                                 total=len(dataset), desc="label images", unit="img", leave=False):
        present = np.flatnonzero(dataset.labels(i) > 0)
        labels = refine_labels(dataset.image(i), foreground, present, refinement)
        write_palette_png(labels_out / f"{dataset.ids[i]}.png", labels)
        trained = np.array([c for c in present if (labels == c + 1).mean() >= config.min_foreground], np.int64)
        counts["class_masks"] += len(present)
        counts["skipped_small"] += len(present) - len(trained)
        counts["used"] += len(trained)
        if len(trained):
            images.indices.append(i)
            images.labels.append(labels)
            images.classes.append(trained)
    return images, counts


def refine_labels(image: np.ndarray, foreground: np.ndarray, present: np.ndarray, config: VideoSegConfig
                  ) -> np.ndarray:
    """A label map (H, W) uint8 of ``image`` (H, W, 3) from the decoder's ``foreground`` probability (C, H, W) of
    each ``present`` class, each class's mask cut by §3.2's graph cut with that probability as its attention; a
    pixel that several classes' cuts claim takes the class of highest probability."""
    claims = np.full(foreground.shape, -1.0, dtype=np.float32)
    for c in present:
        masks, _ = segment_frames(image[None], foreground[c][None].astype(np.float32), config)
        claims[c][masks[0]] = foreground[c][masks[0]]
    return np.where(claims.max(axis=0) >= 0, claims.argmax(axis=0) + 1, 0).astype(np.uint8)


def holdout_split(groups: list[str], share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``groups`` (each image's group: its id, or its sequence) split at random into (trained on,
    held out), a group wholly on one side; at least one group on each."""
    names = list(dict.fromkeys(groups))
    if len(names) < 2:
        raise ValueError(f"need at least 2 labelled groups to hold one out, got {len(names)}")
    order = np.random.default_rng([seed, len(names)]).permutation(len(names))
    count = min(max(1, round(share * len(names))), len(names) - 1)
    held = np.isin(groups, [names[k] for k in order[:count]])
    return np.flatnonzero(~held), np.flatnonzero(held)


def image_group(image_id: str, by_sequence: bool) -> str:
    """The group an image is held out with: its DAVIS-world sequence (``<sequence>_<frame>``) or itself."""
    return image_id.rsplit("_", 1)[0] if by_sequence else image_id


def holdout_check(model, meta, reference, reference_meta, dataset, held_labels: list[np.ndarray],
                  config: AdaptConfig) -> dict[str, Any]:
    """Judge the adapted ``model`` on held-out images (``dataset``) with what weak supervision allows, against the
    input (``reference``) model: their class mAP, and the agreement (mIoU over background and classes) of their
    label maps with the held-out labels (``held_labels``); both with each image's classes known."""
    from wsvs.runtime.metrics import ConfusionMatrix

    from .inference import segment_dataset
    from .train_encoder import evaluate_classifier

    device = str(next(model.parameters()).device)

    def agreement(network, network_meta) -> ConfusionMatrix:
        matrix = ConfusionMatrix(len(meta.class_names) + 1)
        for i, labels, _, _ in segment_dataset(network, network_meta, dataset, use_image_labels=True, device=device):
            matrix.update(labels, held_labels[i])
        return matrix

    before, after = agreement(reference, reference_meta), agreement(model, meta)
    map_before = evaluate_classifier(reference, reference_meta, dataset, device)["map"]
    map_after = evaluate_classifier(model, meta, dataset, device)["map"]
    check = {"images": len(dataset), "agreement_before": round(before.miou(), 4), "agreement": round(after.miou(), 4),
             "agreement_per_class": dict(zip(["background", *meta.class_names],
                                             (None if np.isnan(v) else round(float(v), 4) for v in after.iou()))),
             "map_before": round(map_before, 4), "map_after": round(map_after, 4),
             "threshold_before": reference_meta.foreground_threshold, "threshold_after": meta.foreground_threshold}
    reasons = []
    if check["agreement"] < check["agreement_before"] - config.max_agreement_drop:
        reasons.append(f"its label maps agree with the held-out labels at mIoU {check['agreement']:.3f}, the input "
                       f"model's at {check['agreement_before']:.3f}")
    if map_before - map_after > config.max_map_drop:
        reasons.append(f"held-out class mAP fell from {map_before:.3f} to {map_after:.3f}")
    check["accepted"] = not reasons
    check["reason"] = "; ".join(reasons)
    return check


def adaptation_network(model, scales, frozen_trunk: bool):
    """The module fine-tuned: images, and the (image, class) pairs to segment -> class logits and the decoder's
    foreground logits of each pair on the multi-scale attention. A trunk the encoder's training kept frozen
    (``freeze_backbone``) stays frozen here too, batch-norm statistics included."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .models import multiscale_attention, normalise_cams

    other_scales = [s for s in scales if s != 1]

    class AdaptationNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            model.encoder.features.requires_grad_(not frozen_trunk)

        def train(self, mode: bool = True) -> AdaptationNetwork:
            super().train(mode)
            self.model.encoder.features.train(mode and not frozen_trunk)
            return self

        def forward(self, images: torch.Tensor, image_index: torch.Tensor, class_index: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
            logits, cams = self.model.encoder(images)  # scale 1's pass gives the class logits too: not run twice
            attention = F.interpolate(normalise_cams(cams), size=images.shape[-2:], mode="bilinear",
                                      align_corners=False)
            if other_scales:
                attention = torch.maximum(attention, multiscale_attention(self.model.encoder, images, other_scales))
            return logits, self.model.decoder(attention[image_index, class_index][:, None])[:, 0]

    return AdaptationNetwork()


def adapt(model_dir: Path, data: Path, out: Path, config: AdaptConfig, resume: bool = False
          ) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the network of ``model_dir`` on its own labels of the split; returns ``out`` and counts."""
    import torch
    import torch.nn.functional as F

    from wsvs.runtime.preprocess import normalise

    from .augment import augment
    from .checkpoint import load_checkpoint, save_checkpoint
    from .distributed import join
    from .fit import fit
    from .inference import segment_dataset
    from .voc import VOCDataset

    if out.resolve() == model_dir.resolve():
        raise InputError(out, "must differ from --model: the labels are made with the input checkpoint")
    model, meta = load_checkpoint(model_dir)
    if not meta.decoder_trained:
        raise InputError(model_dir, "has no trained decoder (run train-decoder first)")
    dataset = VOCDataset(data, config.split, class_names=meta.class_names)
    images, counts = label_images(model, meta, dataset, config, out / "labels")
    groups = [image_group(dataset.ids[i], config.holdout_sequences) for i in images.indices]
    if len(set(groups)) < 2:
        unit = "sequences" if config.holdout_sequences else "images"
        raise InputError(data, f"fewer than 2 {config.split} {unit} have a labelled class mask to fine-tune on "
                         "(one is held out to check the adaptation)")
    trained, held = holdout_split(groups, config.holdout, config.seed)
    counts["held_out_images"] = len(held)
    held_dataset = dataset.subset([images.indices[k] for k in held])
    held_labels = [images.labels[k] for k in held]
    class_labels = dataset.label_matrix()
    size = config.input_size or meta.input_size

    def batch_loss(network, replica, batch: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        batch = trained[batch]
        crops = [augment(dataset.image(images.indices[k]), size, config.scale_jitter, rng, images.labels[k])
                 for k in batch]
        share = replica.share(np.arange(len(batch)))
        x = torch.from_numpy(normalise(np.stack([crops[j][0] for j in share]), meta.mean, meta.std))
        y = torch.from_numpy(class_labels[[images.indices[batch[j]] for j in share]])
        pairs = [(row, c) for row, j in enumerate(share) for c in images.classes[batch[j]]]
        image_index, class_index = (torch.tensor(v) for v in zip(*pairs))
        target = torch.from_numpy(np.stack([crops[share[row]][1] for row, _ in pairs]).astype(np.int64))
        logits, foreground = network(x.to(replica.device), image_index, class_index)
        scored = (target != 255).float().to(replica.device)
        mask = (target == class_index[:, None, None] + 1).float().to(replica.device)
        segmentation = F.binary_cross_entropy_with_logits(foreground, mask, weight=scored, reduction="sum")
        classification = F.binary_cross_entropy_with_logits(logits, y.to(replica.device))
        return segmentation / scored.sum().clamp_min(1) + classification, len(share)

    def predictions() -> Iterator[tuple[np.ndarray, np.ndarray]]:  # held-out labels: calibration and check
        device = str(next(model.parameters()).device)
        for i, _, _, foreground in segment_dataset(model, meta, held_dataset, use_image_labels=True, device=device):
            yield from ((foreground[c], held_labels[i] == c + 1) for c in images.classes[held[i]])

    record = {"source": str(model_dir.resolve()), "data": str(data.resolve()), "pairs": counts}
    frozen_trunk = meta.extra.get("encoder_training", {}).get("config", {}).get("freeze_backbone", False)
    network = adaptation_network(model, meta.scales, frozen_trunk)
    fit(model, meta, network, len(trained), batch_loss, predictions, out, config, "adaptation", record, resume)
    replica = join(config.device)
    if not replica.is_main:  # rank 0 judges and writes the final checkpoint
        replica.wait_for_main()
        return out, counts
    reference, reference_meta = load_checkpoint(model_dir)
    check = holdout_check(model, meta, reference.to(next(model.parameters()).device), reference_meta,
                          held_dataset, held_labels, config)
    meta.extra["adaptation"]["check"] = check
    if check["accepted"]:
        save_checkpoint(out, model, meta)
    else:  # refused: the input model goes on, with the record of what was tried
        save_checkpoint(out / REFUSED, model, meta)
        reference_meta.extra["adaptation"] = meta.extra["adaptation"]
        save_checkpoint(out, reference, reference_meta)
    replica.wait_for_main()
    return out, {**counts, "check": check}


def run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(AdaptConfig)}
    config = load_config(AdaptConfig, args.config, **overrides)
    from .checkpoint import finish_training, training_folder

    out, counts = adapt(args.model, args.data, training_folder(args.out), config, resume=args.resume)
    print(f"adapt: {counts['used']} class masks of {counts['images']} images used "
          f"({counts['skipped_small']} too small skipped, {counts['held_out_images']} images held out)")
    if "check" in counts:  # the process that judged the adaptation
        print(describe_check(counts["check"], out))
        print(f"checkpoint: {finish_training(out, args.out)}")
    return 0


def describe_check(check: dict[str, Any], out: Path) -> str:
    """One line on the held-out check of the adaptation written to ``out``: what it measured and what became of
    the adapted model."""
    measured = (f"held-out agreement with the labels {check['agreement_before']:.3f} -> {check['agreement']:.3f}, "
                f"class mAP {check['map_before']:.3f} -> {check['map_after']:.3f}, foreground threshold "
                f"{check['threshold_before']} -> {check['threshold_after']}")
    if check["accepted"]:
        return f"adaptation accepted: {measured}"
    return (f"adaptation REFUSED ({check['reason']}): the input model is kept, the refused one is in "
            f"{out / REFUSED}; {measured}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt", help="adapt the model to still images with its own labels (paper §5.2.1)",
        description="Label the training images with the model (classes from the images' labels), cut each "
        "class's mask again by §3.2's graph cut on the image (the decoder's probability as attention, colour GMMs, "
        "no motion), then fine-tune the whole network on those label maps (per present class: its attention through "
        "the decoder -> binary mask, plus the encoder's image-level loss). Held-out labelled images calibrate the "
        "foreground threshold and judge the result: an adaptation that lowers their class mAP, or agrees less with "
        "their labels than the input model does, is refused (--out then holds the input model with the reason, and "
        "<out>/refused/ the adapted one). Writes a checkpoint to --out and the label maps to <out>/labels/.")
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder with a trained decoder")
    p.add_argument("--data", type=Path, required=True, help="VOC-layout folder with image-level labels")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write, or X.pt for one file")
    p.add_argument("--config", type=Path, default=None, help="YAML with AdaptConfig keys")
    p.add_argument("--split", default=None, help="split to label and train on (default: train)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--holdout", type=float, default=None,
                   help="share of the labelled images kept out of fine-tuning to check it (default 0.15)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the last finished epoch in --out")
    p.set_defaults(func=run)
