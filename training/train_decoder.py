"""`wsvs train-decoder`: learn f_dec from the video masks of segment-videos (§3.3, Eq. 6).

Training pairs are (multi-scale attention of the video's class on a frame, the generated mask of that frame).
The encoder is frozen in Eq. 6, so the attention of every masked frame is computed once and cached per video
(``<out>/attention/<video_id>.npz``, written atomically; a rerun reuses it). Masks that cannot be an object
(nearly empty or nearly the whole frame) are skipped and counted. The loss is binary cross-entropy on the
decoder's foreground logits. A full checkpoint (the encoder unchanged, the trained decoder) is written after
every epoch; ``--resume`` continues from the last finished epoch (also to more ``--epochs``) with the same
result as an unbroken run.

The pairs are held in memory (float16 attention + bool mask, 3 bytes a pixel).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import atomic_path, read_json, read_label_png, write_json

from .distributed import Replica, join, resolve_device

CACHE_DIR = "attention"
SCORE_BATCH = 32  # frames per encoder or decoder call while caching attention or calibrating
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # foreground thresholds tried: 0.05 .. 0.95


@dataclass
class TrainDecoderConfig:
    """Decoder training on video masks. Adam, lr 1e-3, batches of 14 as in the paper."""

    epochs: int = 20
    batch_size: int = 14
    lr: float = 1e-3
    input_size: int | None = None  # training crop side; None: the encoder's own input size
    scale_jitter: tuple[float, ...] = (0.7, 1.3)  # random rescale range of each pair before the crop
    max_side: int = 480  # frames are downscaled to this longer side before attention (as segment-videos does)
    min_foreground: float = 0.01  # masks covering less of the frame than this are implausible, skipped
    max_foreground: float = 0.9  # ... and so are masks covering more than this
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


class FitSettings(Protocol):
    """What the decoder training loop reads from a stage config (train-decoder's or adapt's)."""

    epochs: int
    batch_size: int
    lr: float
    input_size: int | None
    scale_jitter: tuple[float, ...]
    seed: int
    device: str


@dataclass
class Pairs:
    """Decoder training pairs: attention maps in [0, 1] (float16) and binary masks, each (H, W)."""

    attention: list[np.ndarray]
    masks: list[np.ndarray]


def augment_pair(attention: np.ndarray, mask: np.ndarray, size: int, jitter: Sequence[float],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale, flip and a size x size crop of one pair. Returns float32 attention and a float32
    target where padding (outside the rescaled map) is -1, i.e. not scored."""
    import cv2

    scale = rng.uniform(jitter[0], jitter[1])
    height, width = (max(1, round(d * scale)) for d in attention.shape)
    attention = cv2.resize(attention.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    target = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    if rng.random() < 0.5:
        attention, target = attention[:, ::-1], target[:, ::-1]
    top, left = rng.integers(0, max(height - size, 0) + 1), rng.integers(0, max(width - size, 0) + 1)
    attention, target = attention[top:top + size, left:left + size], target[top:top + size, left:left + size]
    oy, ox = rng.integers(0, size - attention.shape[0] + 1), rng.integers(0, size - attention.shape[1] + 1)
    canvas = np.zeros((size, size), np.float32)
    scored = np.full((size, size), -1.0, np.float32)
    canvas[oy:oy + attention.shape[0], ox:ox + attention.shape[1]] = attention
    scored[oy:oy + target.shape[0], ox:ox + target.shape[1]] = target
    return canvas, scored


def decoder_predictions(decoder, pairs: Pairs, device: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(foreground probability, mask) of each pair, the decoder run on batches of same-size attention maps."""
    import torch

    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, attention in enumerate(pairs.attention):
        by_shape.setdefault(attention.shape, []).append(i)
    decoder.eval()
    with torch.inference_mode():
        for indices in by_shape.values():
            for start in range(0, len(indices), SCORE_BATCH):
                chunk = indices[start:start + SCORE_BATCH]
                x = np.stack([pairs.attention[i] for i in chunk]).astype(np.float32)[:, None]
                probabilities = torch.sigmoid(decoder(torch.from_numpy(x).to(device)))[:, 0].cpu().numpy()
                yield from zip(probabilities, (pairs.masks[i] for i in chunk))


def calibrate_threshold(predictions: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, dict[str, float]]:
    """The foreground threshold of ``THRESHOLD_GRID`` whose masks (probability >= t) best match the true
    masks, by IoU pooled over all (probability, mask) pairs; returns it and the IoU at each threshold.

    Cross-entropy fits probabilities, and cutting them at 0.5 maximises pixel accuracy, not IoU: where the
    attention leaves an object's extent uncertain (the body away from its discriminative part), the
    probability there stays under 0.5 and a 0.5 cut keeps only the sure core. The threshold is chosen on the
    stage's own training masks, never on evaluation data.
    """
    intersection = np.zeros(len(THRESHOLD_GRID))
    union = np.zeros(len(THRESHOLD_GRID))
    for probability, mask in predictions:
        for k, threshold in enumerate(THRESHOLD_GRID):
            predicted = probability >= threshold
            intersection[k] += np.count_nonzero(predicted & mask)
            union[k] += np.count_nonzero(predicted | mask)
    iou = intersection / np.maximum(union, 1)
    return THRESHOLD_GRID[int(iou.argmax())], {str(t): round(float(v), 4) for t, v in zip(THRESHOLD_GRID, iou)}


# (module to step, this process's replica, batch of item indices, the epoch's random stream) -> (this
# process's mean loss on its share of the batch, the share's size)
BatchLoss = Callable[[Any, Replica, np.ndarray, np.random.Generator], tuple[Any, int]]


def fit(model, meta, module, items: int, batch_loss: BatchLoss,
        predictions: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], out: Path, config: FitSettings,
        record_name: str, record: dict[str, Any], resume: bool = False) -> Path:
    """The training loop of train-decoder and adapt: Adam on ``module``'s parameters over ``items`` training
    items for ``config.epochs``. The full checkpoint is written to ``out`` every epoch with
    ``meta.extra[record_name]`` = ``record`` + config + history (``--resume`` continues from the last one),
    and at the end with the foreground threshold calibrated on ``predictions()``, the trained model's
    (probability, mask) pairs of its training data. Every process draws the whole batch's augmentations, so
    the random stream does not depend on the number of processes. Returns ``out``."""
    import torch
    from tqdm import tqdm

    from .checkpoint import save_checkpoint
    from .training_state import resume_state, save_state

    replica = join(config.device)
    torch.manual_seed(config.seed)
    model.to(replica.device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    start_epoch, history = resume_state(out, module, optimizer, config, replica.device) if resume else (0, [])
    extra_before = dict(meta.extra)
    meta.decoder_trained = True

    def write_checkpoint(**findings: Any) -> None:
        meta.extra = {**extra_before,
                      record_name: {**record, "config": dump_config(config), "history": history, **findings}}
        save_checkpoint(out, model, meta)

    stepped = replica.wrap(module)
    for epoch in range(start_epoch, config.epochs):
        module.train()
        rng = np.random.default_rng([config.seed, epoch])
        batches = replica.batches(rng.permutation(items), config.batch_size)
        loss = replica.train_epoch(batches, optimizer, lambda batch, rng=rng: batch_loss(stepped, replica, batch, rng),
                                   f"epoch {epoch + 1}/{config.epochs}")
        if replica.is_main:
            model.eval()
            history.append({"epoch": epoch + 1, "loss": loss})
            tqdm.write(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}")
            write_checkpoint()
            save_state(out, module, optimizer, config, epoch + 1, history)
        replica.wait_for_main()
    if replica.is_main:
        model.eval()
        meta.foreground_threshold, iou = calibrate_threshold(predictions())
        tqdm.write(f"foreground threshold {meta.foreground_threshold}: IoU {iou[str(meta.foreground_threshold)]:.3f} "
                   f"with the training masks ({iou['0.5']:.3f} at 0.5)")
        write_checkpoint(threshold_iou=iou)
    replica.wait_for_main()
    return out


def fit_decoder(model, meta, pairs: Pairs, out: Path, config: TrainDecoderConfig, record: dict[str, Any],
                resume: bool = False) -> Path:
    """Train ``model.decoder`` (the encoder frozen) on ``pairs`` with binary cross-entropy (see ``fit``)."""
    import torch
    import torch.nn.functional as F

    if not pairs.masks:
        raise InputError(out, "no training pairs: nothing to train the decoder on")
    size = config.input_size or meta.input_size

    def batch_loss(decoder, replica: Replica, batch: np.ndarray, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, int]:
        crops = [augment_pair(pairs.attention[i], pairs.masks[i], size, config.scale_jitter, rng) for i in batch]
        x = torch.from_numpy(replica.share(np.stack([a for a, _ in crops]))[:, None]).to(replica.device)
        y = torch.from_numpy(replica.share(np.stack([t for _, t in crops]))[:, None]).to(replica.device)
        scored = (y >= 0).float()
        loss = F.binary_cross_entropy_with_logits(decoder(x), y.clamp_min(0), weight=scored, reduction="sum")
        return loss / scored.sum().clamp_min(1), len(x)

    def predictions() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return decoder_predictions(model.decoder, pairs, str(next(model.parameters()).device))

    return fit(model, meta, model.decoder, len(pairs.masks), batch_loss, predictions, out, config,
               "decoder_training", record, resume)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def video_records(masks_dir: Path) -> list[dict[str, Any]]:
    """The per-video records that segment-videos wrote (``<masks>/<video_id>.json`` with intervals)."""
    if not masks_dir.is_dir():
        raise InputError(masks_dir, "masks folder not found")
    records = []
    for path in sorted(masks_dir.glob("*.json")):
        data = read_json(path)
        if isinstance(data, dict) and "intervals" in data and "class" in data:
            records.append({**data, "id": path.stem})
    if not records:
        raise InputError(masks_dir, "holds no segment-videos records (<video_id>.json)")
    return records


def cache_video_attention(source, record: dict[str, Any], masks_dir: Path, attention_model, max_side: int,
                          path: Path) -> None:
    """Attention of the video's class on every masked frame, and those masks, at the downscaled frame size,
    saved to ``path`` (npz: frames, attention float16, masks bool) atomically."""
    import cv2

    from wsvs.runtime.video_masks import downscale
    from wsvs.runtime.video_reader import VideoReader

    class_index = attention_model.class_names.index(record["class"])
    mask_files = {int(p.stem): p for p in (masks_dir / record["id"]).glob("*.png")}
    frames, attention, masks, held = [], [], [], []

    def flush() -> None:
        attention.extend(attention_model.attention(np.stack(held), class_index).astype(np.float16))
        held.clear()

    for index, frame in enumerate(VideoReader(source.path)):
        if index not in mask_files:
            continue
        small = downscale(frame, max_side)
        mask = read_label_png(mask_files[index]) > 127
        masks.append(cv2.resize(mask.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0)
        frames.append(index)
        held.append(small)
        if len(held) == SCORE_BATCH:
            flush()
    if held:
        flush()
    if len(frames) != len(mask_files):
        raise InputError(source.path, f"has {len(frames)} decodable frames with masks, {masks_dir / record['id']} "
                         f"holds {len(mask_files)}")
    empty = np.zeros((0, 1, 1))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, frames=np.asarray(frames, np.int32), attention=np.stack(attention) if attention else empty,
                 masks=np.stack(masks) if masks else empty.astype(bool))


def video_pairs(model_dir: Path, videos_dir: Path, masks_dir: Path, cache_dir: Path,
                config: TrainDecoderConfig) -> tuple[Pairs, dict[str, Any]]:
    """Training pairs from the segmented videos (attention cached in ``cache_dir``) and the counts of
    frames used and skipped."""
    from tqdm import tqdm

    from wsvs.runtime.video_masks import find_videos

    from .cam import FrameAttention
    from .checkpoint import checkpoint_files

    records = video_records(masks_dir)
    sources = {source.relative: source for source in find_videos(videos_dir)}
    weights, _ = checkpoint_files(model_dir)
    if not weights.is_file():
        raise InputError(weights, "weights file not found")
    settings = {"encoder": file_digest(weights), "max_side": config.max_side}
    settings_path = cache_dir / "cache.json"
    if settings_path.is_file() and read_json(settings_path) != settings:
        raise InputError(cache_dir, "holds attention of another encoder or frame size; train into a new --out")
    write_json(settings_path, settings)

    attention_model = None
    pairs = Pairs([], [])
    counts = {"videos": len(records), "masked_frames": 0, "used": 0, "skipped_empty": 0, "skipped_full": 0}
    for record in tqdm(records, desc="attention", unit="video", leave=False):
        if record["video"] not in sources:
            raise InputError(masks_dir / f"{record['id']}.json", f"video {record['video']} is not in {videos_dir}")
        path = cache_dir / f"{record['id']}.npz"
        if not path.is_file():
            if attention_model is None:
                attention_model = FrameAttention.load(model_dir, resolve_device(config.device))
            if record["class"] not in attention_model.class_names:
                raise InputError(masks_dir / f"{record['id']}.json", f"class {record['class']!r} is not one of "
                                 f"the model's classes ({', '.join(attention_model.class_names)})")
            cache_video_attention(sources[record["video"]], record, masks_dir, attention_model,
                                  config.max_side, path)
        with np.load(path) as cached:
            attention, masks = cached["attention"], cached["masks"]
        for att, mask in zip(attention, masks):
            counts["masked_frames"] += 1
            foreground = float(mask.mean())
            if foreground < config.min_foreground:
                counts["skipped_empty"] += 1
            elif foreground > config.max_foreground:
                counts["skipped_full"] += 1
            else:
                counts["used"] += 1
                pairs.attention.append(att)
                pairs.masks.append(mask)
    return pairs, counts


def train_decoder(model_dir: Path, videos_dir: Path, masks_dir: Path, out: Path, config: TrainDecoderConfig,
                  resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train the decoder of the encoder checkpoint ``model_dir`` on the masks of segment-videos; returns the
    new checkpoint folder ``out`` and the frame counts (used, skipped as empty or as full)."""
    from .checkpoint import load_checkpoint

    pairs, counts = video_pairs(model_dir, videos_dir, masks_dir, out / CACHE_DIR, config)
    model, meta = load_checkpoint(model_dir)
    record = {"encoder": str(model_dir.resolve()), "masks": str(masks_dir.resolve()), "frames": counts}
    return fit_decoder(model, meta, pairs, out, config, record, resume), counts


def run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainDecoderConfig)}
    config = load_config(TrainDecoderConfig, args.config, **overrides)
    out, counts = train_decoder(args.model, args.videos, args.masks, args.out, config, resume=args.resume)
    print(f"train-decoder: {counts['used']} of {counts['masked_frames']} masked frames used "
          f"({counts['skipped_empty']} nearly empty, {counts['skipped_full']} nearly full skipped); "
          f"checkpoint: {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-decoder", help="train the decoder on the video masks (paper §3.3, Eq. 6)",
        description="Train f_dec to map the multi-scale attention of a video's class on a frame to that "
        "frame's mask from segment-videos (binary cross-entropy; the encoder is frozen, its attention is "
        "cached in <out>/attention/). Nearly empty or nearly full masks are skipped and counted. Writes a "
        "full checkpoint (model.safetensors + model.json) after every epoch; --resume continues after a kill.")
    p.add_argument("--model", type=Path, required=True, help="encoder checkpoint folder (from train-encoder)")
    p.add_argument("--videos", type=Path, required=True, help="the videos folder given to segment-videos")
    p.add_argument("--masks", type=Path, required=True, help="the --out folder of segment-videos")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--config", type=Path, default=None, help="YAML with TrainDecoderConfig keys")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--input-size", dest="input_size", type=int, default=None, help="training crop side")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the last finished epoch in --out")
    p.set_defaults(func=run)
