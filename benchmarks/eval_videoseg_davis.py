"""Mean J per DAVIS-2016 sequence of the §3.2 video segmentation without attention (motion + appearance).

Each sequence is segmented as one interval (one graph over all its frames) with ``segment_frames(frames, None,
config)``, and J (the region IoU) is averaged over its frames. Splits (../shared/data, see its README):
  train  davis2016_train: 30 DAVIS-2016 train sequences (H.264 videos + masks): tune settings here only
  dev    davis2016_dev: 4 DAVIS-2016 val sequences (JPEG frames + masks): report, never tune

    python benchmarks/eval_videoseg_davis.py --split train --set pairwise_weight=2.0 --set num_superpixels=1200
    python benchmarks/eval_videoseg_davis.py --split dev

Long runs belong under the shared lock: flock /tmp/wsvs-heavy.lock nice -n 19 python benchmarks/...
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from wsvs.runtime.config import load_config
from wsvs.runtime.io import read_image_rgb
from wsvs.runtime.metrics import binary_iou
from wsvs.runtime.progress import progress_bar
from wsvs.runtime.video_reader import VideoReader
from wsvs.runtime.videoseg import VideoSegConfig, segment_frames

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = {"train": DATA / "davis2016_train", "dev": DATA / "davis2016_dev"}


def sequences(split: str) -> list[str]:
    return sorted(p.name for p in (SPLITS[split] / "Annotations" / "480p").iterdir() if p.is_dir())


def load_sequence(split: str, name: str, frame_step: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames (T, H, W, 3) uint8 and masks of every ``frame_step``-th frame of a sequence."""
    root = SPLITS[split]
    annotations = sorted((root / "Annotations" / "480p" / name).glob("*.png"))
    if split == "train":
        frames = list(VideoReader(root / "videos" / f"{name}.mp4"))
    else:
        frames = [read_image_rgb(p) for p in sorted((root / "JPEGImages" / "480p" / name).glob("*.jpg"))]
    if len(frames) != len(annotations):
        raise ValueError(f"{name}: {len(frames)} frames but {len(annotations)} masks")
    keep = range(0, len(frames), frame_step)
    # masks are 0/255; one (bear/00077.png) is stored as grayscale + alpha, which read_label_png refuses
    masks = [np.asarray(Image.open(annotations[i]).convert("L")) > 0 for i in keep]
    return np.stack([frames[i] for i in keep]), masks


def evaluate_sequence(split: str, name: str, config: VideoSegConfig, frame_step: int) -> dict:
    cv2.setNumThreads(1)  # one process per core
    frames, truth = load_sequence(split, name, frame_step)
    start = time.perf_counter()
    masks, _ = segment_frames(frames, None, config)
    seconds = time.perf_counter() - start
    return {"J": float(np.mean([binary_iou(m, g) for m, g in zip(masks, truth)])), "frames": len(frames),
            "seconds": seconds}


def evaluate(split: str, config: VideoSegConfig, frame_step: int = 1, workers: int = 2) -> dict[str, dict]:
    names = sequences(split)
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(evaluate_sequence, split, name, config, frame_step) for name in names]
        done = progress_bar(zip(names, futures), total=len(names), desc=split, unit="sequence")
        return {name: future.result() for name, future in done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a VideoSegConfig field (YAML value), e.g. pairwise_weight=2.0; repeatable")
    parser.add_argument("--frame-step", type=int, default=1, help="segment every n-th frame only (faster tuning)")
    parser.add_argument("--workers", type=int, default=2, help="sequences segmented in parallel")
    parser.add_argument("--json", type=Path, help="also write the per-sequence results here")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_config(VideoSegConfig, None, **overrides)
    results = evaluate(args.split, config, args.frame_step, args.workers)
    frames = sum(r["frames"] for r in results.values())
    seconds = sum(r["seconds"] for r in results.values())
    print(f"split {args.split}, frame step {args.frame_step}, overrides {overrides or 'none'}")
    print("| sequence | frames | J |\n|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['frames']} | {result['J']:.3f} |")
    print(f"| mean over {len(results)} sequences | {frames} | {np.mean([r['J'] for r in results.values()]):.3f} |")
    print(f"segmentation {frames / seconds:.1f} frames/s per worker (decoding not counted)")
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "frame_step": args.frame_step, "overrides": overrides,
                                         "sequences": results}, indent=2))


if __name__ == "__main__":
    main()
