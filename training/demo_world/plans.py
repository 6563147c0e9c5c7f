"""The world's plan: which classes each image shows, and each search result's class, length and title."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import IMAGE_PLAN, VIDEO_PLAN, WorldConfig

_TITLES = ("{} close-up", "funny {} clip", "{} in the wild", "my {} at home", "{} compilation", "{} live")


@dataclass(frozen=True)
class ImagePlan:
    """What one image shows: class indices (0-based, distinct, drawing order) and its extras."""

    index: int
    image_id: str
    split: str
    classes: tuple[int, ...]
    distractors: int
    occluded: bool


@dataclass(frozen=True)
class VideoPlan:
    """One search result: the queried class, and which object (if any) the video really shows."""

    index: int
    video_id: str
    query_class: int
    shown_class: int | None  # the object in the video: the query class, another class, or none
    n_frames: int
    object_frames: tuple[int, int]  # [start, stop): the frames of the main scene (object present)
    title: str

    @property
    def relevant(self) -> bool:
        return self.shown_class == self.query_class


def plan_images(config: WorldConfig) -> list[ImagePlan]:
    """Image ids, splits and contents; each class is the primary class of an equal share of each split."""
    rng = np.random.default_rng([config.seed, IMAGE_PLAN])
    k = len(config.classes)
    plans = []
    for split, count in (("train", config.train_images), ("val", config.val_images)):
        primaries = rng.permutation(np.resize(np.arange(k), count))
        for primary in primaries:
            classes = [int(primary)]
            if rng.random() < config.multi_class_fraction:
                extra = 1 if k == 2 or rng.random() < 0.8 else 2
                others = [c for c in range(k) if c != primary]
                classes += [int(c) for c in rng.choice(others, size=extra, replace=False)]
            distractors = (1 + int(rng.random() < 0.3)) if rng.random() < config.distractor_fraction else 0
            index = len(plans)
            plans.append(
                ImagePlan(
                    index=index,
                    image_id=f"img_{index:05d}",
                    split=split,
                    classes=tuple(int(c) for c in rng.permutation(classes)),
                    distractors=distractors,
                    occluded=bool(rng.random() < config.occlusion_fraction),
                )
            )
    return plans


def plan_videos(config: WorldConfig) -> list[VideoPlan]:
    """The search results of every class; misleading ones show another class (or nothing) throughout."""
    rng = np.random.default_rng([config.seed, VIDEO_PLAN])
    k = len(config.classes)
    plans = []
    for query, name in enumerate(config.classes):
        misleading = set(rng.choice(config.videos_per_class, size=config.misleading_per_class, replace=False))
        for number in range(config.videos_per_class):
            shown: int | None = query
            if number in misleading:
                shown = int(rng.choice([c for c in range(k) if c != query])) if rng.random() < 0.5 else None
            n_frames = int(rng.integers(config.video_frames[0], config.video_frames[1] + 1))
            start = round(n_frames * rng.uniform(0.12, 0.18))
            stop = n_frames - round(n_frames * rng.uniform(0.12, 0.18))
            plans.append(
                VideoPlan(
                    index=len(plans),
                    video_id=f"{name}_{number:03d}",
                    query_class=query,
                    shown_class=shown,
                    n_frames=n_frames,
                    object_frames=(start, stop),
                    title=str(rng.choice(_TITLES)).format(name) + f" #{number + 1}",
                )
            )
    return plans
