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
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsvs.runtime.config import load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.executor import ExecutorConfig, add_executor_arguments, executor_from_args, map_unordered
from wsvs.runtime.io import atomic_path, is_hidden, read_json, read_label_png, write_json

from .augment import augment_pair
from .distributed import Replica
from .fit import fit

if TYPE_CHECKING:
    from .cam import FrameAttention

CACHE_DIR = "attention"
SCORE_BATCH = 32  # frames per encoder or decoder call while caching attention or calibrating


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


@dataclass
class Pairs:
    """Decoder training pairs: attention maps in [0, 1] (float16) and binary masks, each (H, W)."""

    attention: list[np.ndarray]
    masks: list[np.ndarray]


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
    for path in sorted(p for p in masks_dir.glob("*.json") if not is_hidden(p)):
        data = read_json(path)
        if isinstance(data, dict) and "intervals" in data and "class" in data:
            records.append({**data, "id": path.stem})
    if not records:
        raise InputError(masks_dir, "holds no segment-videos records (<video_id>.json)")
    return records


def cache_video_attention(source, record: dict[str, Any], masks_dir: Path, attention_model, max_side: int,
                          path: Path, reuse: Path | None = None) -> None:
    """Attention of the video's class on every masked frame, and those masks, at the downscaled frame size,
    saved to ``path`` (npz: frames, attention float16, masks bool) atomically. Frames that the cache file
    ``reuse`` (same encoder and frame size) holds take their attention from it instead of the encoder."""
    import cv2

    from wsvs.runtime.video_masks import downscale
    from wsvs.runtime.video_reader import VideoReader

    class_index = attention_model.class_names.index(record["class"])
    mask_files = {int(p.stem): p for p in (masks_dir / record["id"]).glob("*.png") if not is_hidden(p)}
    known: dict[int, np.ndarray] = {}
    if reuse is not None and reuse.is_file():
        with np.load(reuse) as cached:
            known = dict(zip(cached["frames"].tolist(), cached["attention"]))
    frames, attention, masks, held, slots = [], [], [], [], []

    def flush() -> None:
        for slot, computed in zip(slots, attention_model.attention(np.stack(held), class_index)):
            attention[slot] = computed.astype(np.float16)
        held.clear()
        slots.clear()

    for index, frame in enumerate(VideoReader(source.path)):
        if index not in mask_files:
            continue
        small = downscale(frame, max_side)
        mask = read_label_png(mask_files[index]) > 127
        masks.append(cv2.resize(mask.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0)
        frames.append(index)
        attention.append(known.get(index))
        if index not in known:
            slots.append(len(attention) - 1)
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


def _cache_in_worker(attention_model: FrameAttention, item: tuple[Any, dict[str, Any], Path, Path | None],
                     masks_dir: Path, max_side: int) -> None:
    source, record, path, reuse = item
    cache_video_attention(source, record, masks_dir, attention_model, max_side, path, reuse)


def video_pairs(model_dir: Path, videos_dir: Path, masks_dir: Path, cache_dir: Path, config: TrainDecoderConfig,
                executor: ExecutorConfig | None = None,
                reuse_dir: Path | None = None) -> tuple[Pairs, dict[str, Any]]:
    """Training pairs from the segmented videos (attention cached in ``cache_dir``, the missing videos'
    computed through ``executor``: by default in this process) and the counts of frames used and skipped.
    ``reuse_dir``: another cache of the same videos (the decoder's, for the upper bound's masks of the same
    clips), whose attention is taken where it holds the frame and was computed with the same settings."""
    from wsvs.runtime.progress import progress_bar
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

    for record in records:
        if record["video"] not in sources:
            raise InputError(masks_dir / f"{record['id']}.json", f"video {record['video']} is not in {videos_dir}")
    if reuse_dir is not None and not ((reuse_dir / "cache.json").is_file()
                                      and read_json(reuse_dir / "cache.json") == settings):
        reuse_dir = None
    missing = [(sources[r["video"]], r, cache_dir / f"{r['id']}.npz", reuse_dir and reuse_dir / f"{r['id']}.npz")
               for r in records if not (cache_dir / f"{r['id']}.npz").is_file()]
    if missing:
        class_names = FrameAttention.load(model_dir).class_names
        for _, record, _, _ in missing:
            if record["class"] not in class_names:
                raise InputError(masks_dir / f"{record['id']}.json", f"class {record['class']!r} is not one of "
                                 f"the model's classes ({', '.join(class_names)})")
        executor = executor or ExecutorConfig()
        setup = functools.partial(FrameAttention.load_in_worker, model_dir, config.device,
                                  executor.threads_per_task())
        work = functools.partial(_cache_in_worker, masks_dir=masks_dir, max_side=config.max_side)
        for _ in progress_bar(map_unordered(work, missing, executor, setup), total=len(missing), desc="attention",
                              unit="video", leave=False):
            pass

    pairs = Pairs([], [])
    counts = {"videos": len(records), "masked_frames": 0, "used": 0, "skipped_empty": 0, "skipped_full": 0}
    for record in records:
        with np.load(cache_dir / f"{record['id']}.npz") as cached:
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
                  resume: bool = False, executor: ExecutorConfig | None = None,
                  reuse_attention: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Train the decoder of the encoder checkpoint ``model_dir`` on the masks of segment-videos; returns the
    new checkpoint folder ``out`` and the frame counts (used, skipped as empty or as full). ``executor``: where
    the attention of the videos is computed (default: in this process); ``reuse_attention``: another decoder
    folder of the same encoder and videos whose cached attention is reused."""
    from .checkpoint import load_checkpoint

    reuse_dir = None if reuse_attention is None else reuse_attention / CACHE_DIR
    pairs, counts = video_pairs(model_dir, videos_dir, masks_dir, out / CACHE_DIR, config, executor, reuse_dir)
    model, meta = load_checkpoint(model_dir)
    record = {"encoder": str(model_dir.resolve()), "masks": str(masks_dir.resolve()), "frames": counts}
    return fit_decoder(model, meta, pairs, out, config, record, resume), counts


def run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainDecoderConfig)}
    config = load_config(TrainDecoderConfig, args.config, **overrides)
    executor = executor_from_args(args, args.workers)
    from .checkpoint import finish_training, training_folder

    folder, counts = train_decoder(args.model, args.videos, args.masks, training_folder(args.out), config,
                                   args.resume, executor)
    out = finish_training(folder, args.out)
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
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write, or X.pt for one file")
    p.add_argument("--config", type=Path, default=None, help="YAML with TrainDecoderConfig keys")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--input-size", dest="input_size", type=int, default=None, help="training crop side")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from the last finished epoch in --out")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="videos whose attention is cached at once: local processes or Ray tasks in flight "
                   "(default 1)")
    add_executor_arguments(p)
    p.set_defaults(func=run)
