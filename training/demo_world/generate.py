"""`wsvs world`: write a whole world (resumable, the same files whatever the number of worker processes)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
from functools import partial
from pathlib import Path

import cv2

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import read_json, write_json
from wsvs.runtime.progress import progress_bar

from .config import WorldConfig
from .layouts import annotation_path, video_path, web_listing, write_image, write_text, write_video
from .plans import ImagePlan, VideoPlan, plan_images, plan_videos


def generate_world(config: WorldConfig, out: Path, workers: int | None = None) -> Path:
    """Write the world under ``out`` and return ``out``; a complete world of the same config is kept as is.

    ``workers`` processes render images and videos (default: all cores); the output does not depend on it.
    An interrupted run resumes: finished images and videos are skipped. A folder holding a world of a
    different config is an InputError (nothing is overwritten).
    """
    out = Path(out)
    manifest = out / "world.json"
    config_dict = dump_config(config)
    if _is_complete(manifest, config_dict):
        return out
    write_json(manifest, {"config": config_dict, "complete": False})

    image_plans = plan_images(config)
    video_plans = plan_videos(config)
    # Videos first: they are the long tasks, so the pool ends with short ones and finishes together.
    pending = [p for p in video_plans if not video_path(out, config, p).is_file()]
    pending += [p for p in image_plans if not annotation_path(out, p).is_file()]
    _write_items(config, out, pending, len(image_plans) + len(video_plans), workers)
    _write_lists(config, out, image_plans, video_plans)
    counts = _counts(config, image_plans, video_plans)
    summary = {"config": config_dict, "classes": list(config.classes), "counts": counts, "complete": True}
    write_json(manifest, summary)
    return out


def _is_complete(manifest: Path, config_dict: dict) -> bool:
    """Whether ``manifest`` records a complete world of this config; one of another config is an InputError."""
    if not manifest.is_file():
        return False
    previous = read_json(manifest)
    if previous.get("config") != config_dict:
        raise InputError(manifest, "holds a world of another config; choose another --out or delete it")
    return bool(previous.get("complete"))


def _write_items(config: WorldConfig, out: Path, pending: list[ImagePlan | VideoPlan], total: int,
                 workers: int | None) -> None:
    """Render and write the ``pending`` items in ``workers`` processes, with progress over all ``total``."""
    write_item = partial(_write_item, config=config, out=out)
    workers = min(workers or os.cpu_count() or 1, max(len(pending), 1))
    with progress_bar(total=total, initial=total - len(pending), desc="world", unit="item") as progress:
        if workers == 1:
            for plan in pending:
                write_item(plan)
                progress.update()
        else:
            # spawn: no inherited threads or locks (tqdm's monitor, OpenCV's pool) in the workers.
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
                for _ in pool.imap_unordered(write_item, pending):
                    progress.update()


def _write_lists(config: WorldConfig, out: Path, image_plans: list[ImagePlan], video_plans: list[VideoPlan]) -> None:
    """The class names, the image splits and the web search listing."""
    images = out / "images"
    write_text(images / "classes.txt", "".join(f"{name}\n" for name in config.classes))
    for split in ("train", "val"):
        ids = "".join(f"{p.image_id}\n" for p in image_plans if p.split == split)
        write_text(images / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    write_json(out / "web" / "listing.json", web_listing(config, video_plans))


def _counts(config: WorldConfig, image_plans: list[ImagePlan], video_plans: list[VideoPlan]) -> dict:
    """What the world holds, for world.json."""
    return {
        "train_images": config.train_images,
        "val_images": config.val_images,
        "multi_class_images": sum(len(p.classes) > 1 for p in image_plans),
        "images_per_class": {
            name: sum(c in p.classes for p in image_plans) for c, name in enumerate(config.classes)
        },
        "videos": len(video_plans),
        "relevant_videos": sum(p.relevant for p in video_plans),
        "video_frames": sum(p.n_frames for p in video_plans),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "world",
        help="generate the synthetic benchmark world (images, web videos, ground truth)",
        description="Generate the seeded synthetic world: VOC-layout images whose classes differ only by a "
        "small part on a shared body, web videos with thumbnails and a search listing, and DAVIS-layout "
        "ground truth. A complete world of the same config in --out is kept; an interrupted one resumes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="YAML of WorldConfig keys (default: the demo world)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument("--workers", type=int, help="worker processes (default: all cores); same output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(WorldConfig, args.config, seed=args.seed)
    except ValueError as exc:  # a bad override: the file itself was checked by load_config
        raise InputError(args.config, str(exc)) from None
    out = generate_world(config, args.out, workers=args.workers)
    print(f"world: {out} ({len(config.classes)} classes)")
    return 0


def _write_item(plan: ImagePlan | VideoPlan, config: WorldConfig, out: Path) -> None:
    if isinstance(plan, ImagePlan):
        write_image(config, plan, out)
    else:
        write_video(config, plan, out)
