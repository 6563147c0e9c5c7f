"""The synthetic world: determinism, the VOC / DAVIS / web layouts, the part-vs-body design, resuming."""

from __future__ import annotations

import colorsys
import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from wsvs.runtime.cli import main
from wsvs.runtime.errors import InputError
from wsvs.runtime.io import VOID, read_image_rgb, read_label_png, voc_palette
from wsvs.training.demo_world import (
    WorldConfig,
    class_colour,
    generate_world,
    plan_images,
    plan_videos,
    render_image,
    render_video,
)
from wsvs.training.voc import VOCDataset

SMALL = {
    "classes": ["ant", "bee", "cat"],
    "image_size": 96,
    "train_images": 30,
    "val_images": 10,
    "videos_per_class": 2,
    "misleading_per_class": 1,
    "video_frames": [24, 24],
    "video_size": [96, 72],
    "gop": 8,
}


def small_config(**changes) -> WorldConfig:
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in SMALL.items()}
    return WorldConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    """The small world twice: by the API with 2 worker processes, and by the CLI in one process."""
    root = tmp_path_factory.mktemp("worlds")
    first = generate_world(small_config(), root / "api", workers=2)
    config_file = root / "small.yaml"
    config_file.write_text(yaml.safe_dump(SMALL))
    assert main(["world", "--out", str(root / "cli"), "--config", str(config_file), "--workers", "1"]) == 0
    return first, root / "cli"


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / error))


def hue_matches(pixels: np.ndarray, colour: np.ndarray, tolerance: float = 0.04) -> np.ndarray:
    """Saturated pixels whose hue is within ``tolerance`` (fraction of the circle) of ``colour``'s hue."""
    hsv = cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3)
    target = colorsys.rgb_to_hsv(*(colour / 255))[0]
    distance = np.abs((hsv[:, 0] / 256.0 - target + 0.5) % 1.0 - 0.5)
    return ((distance < tolerance) & (hsv[:, 1] > 150) & (hsv[:, 2] > 60)).reshape(pixels.shape[:-1])


def test_same_seed_gives_identical_files_whatever_the_worker_count(worlds):
    api, cli = worlds
    first, second = all_files(api), all_files(cli)
    assert first.keys() == second.keys()
    assert len([name for name in first if name.endswith(".mp4")]) == 6
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_another_seed_gives_another_world():
    config, other = small_config(), small_config(seed=1)
    a, b = render_image(config, plan_images(config)[0]), render_image(other, plan_images(other)[0])
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 10
    video_a = render_video(config, plan_videos(config)[0]).frames
    video_b = render_video(other, plan_videos(other)[0]).frames
    assert np.abs(video_a.astype(int) - video_b.astype(int)).mean() > 10


def test_voc_layout_is_read_by_the_voc_loader(worlds):
    root = worlds[0] / "images"
    config = small_config()
    assert (root / "classes.txt").read_text().split() == list(config.classes)
    train = VOCDataset(root, "train")
    val = VOCDataset(root, "val")
    assert (len(train), len(val)) == (30, 10) and not set(train.ids) & set(val.ids)
    for dataset in (train, val):
        for i, image_id in enumerate(dataset.ids):
            with Image.open(root / "SegmentationClass" / f"{image_id}.png") as png:
                assert png.mode == "P"
                assert np.array_equal(np.array(png.getpalette()).reshape(-1, 3)[:256], voc_palette())
            mask = dataset.mask(i)
            assert dataset.image(i).shape == (96, 96, 3) and mask.shape == (96, 96)
            present = set(np.unique(mask).tolist())
            assert present <= {0, VOID, 1, 2, 3} and VOID in present
            objects = present - {0, VOID}
            # The image-level labels come from the XML; they name exactly the classes in the mask.
            assert set((np.nonzero(dataset.labels(i))[0] + 1).tolist()) == objects
            # Void separates every object from the background: they never touch.
            object_pixels, background = np.isin(mask, list(objects)), mask == 0
            assert not (object_pixels[:, 1:] & background[:, :-1]).any()
            assert not (object_pixels[1:, :] & background[:-1, :]).any()
            # Each box holds its object: VOC boxes are 1-based and inclusive.
            for node in ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().findall("object"):
                box = [int(node.find(f"bndbox/{tag}").text) - 1 for tag in ("xmin", "ymin", "xmax", "ymax")]
                ys, xs = np.nonzero(mask == 1 + config.classes.index(node.find("name").text))
                assert box[0] <= xs.min() and box[1] <= ys.min() and xs.max() <= box[2] and ys.max() <= box[3]


def test_files_hold_the_rendered_samples(worlds):
    config = small_config()
    for plan in plan_images(config)[:5]:
        sample = render_image(config, plan)
        root = worlds[0] / "images"
        assert np.array_equal(
            read_label_png(root / "SegmentationClass" / f"{plan.image_id}.png"), sample.labels
        )
        jpeg = read_image_rgb(root / "JPEGImages" / f"{plan.image_id}.jpg")
        assert psnr(jpeg, sample.image) > 30


def labelled_objects(config: WorldConfig, images: int):
    """(image sample, class index, object mask, part mask) of every object in the first ``images`` images."""
    for plan in plan_images(config)[:images]:
        sample = render_image(config, plan)
        for class_index, _ in sample.objects:
            obj = sample.labels == 1 + class_index
            yield sample, class_index, obj, sample.parts & obj


def test_classes_differ_only_by_a_small_part():
    config = WorldConfig()
    k = len(config.classes)
    fractions = []
    for sample, class_index, obj, part in labelled_objects(config, 60):
        fractions.append(part.sum() / obj.sum())
        # The part shows its class colour; the shared body shows none of the class colours.
        part_hits = [hue_matches(sample.image[part], class_colour(c, k)).mean() for c in range(k)]
        assert int(np.argmax(part_hits)) == class_index and part_hits[class_index] > 0.5
        body = obj & ~part
        assert max(hue_matches(sample.image[body], class_colour(c, k)).mean() for c in range(k)) < 0.05
    assert max(fractions) < 0.25
    assert 0.06 < np.mean(fractions) < 0.12  # drawn at 8-11 %; overlaps, occluders and borders trim some


def test_world_look_parameters_change_what_they_name():
    """Classes of a shared-colour pair show the same part colour (only the pattern differs), and the part-size
    range is what is drawn (with bodies leaning up to 1.2 rad)."""
    config = WorldConfig(classes=("owl", "yak", "elk"), shared_colour_pairs=1, part_fraction=(0.14, 0.17),
                         tilt=1.2, train_images=40, val_images=1)
    assert np.array_equal(class_colour(0, 3, 1), class_colour(1, 3, 1))
    assert not np.array_equal(class_colour(0, 3, 1), class_colour(2, 3, 1))
    fractions, seen = [], set()
    for sample, class_index, obj, part in labelled_objects(config, 40):
        fractions.append(part.sum() / obj.sum())
        if class_index < 2:
            seen.add(class_index)
            assert hue_matches(sample.image[part], class_colour(0, 3)).mean() > 0.5
    assert seen == {0, 1}
    assert np.mean(fractions) > 0.12  # drawn at 14-17 % (the default world's mean is under 0.12)
    with pytest.raises(ValueError, match="shared_colour_pairs"):
        WorldConfig(classes=("owl", "yak", "elk"), shared_colour_pairs=2)
    with pytest.raises(ValueError, match="part_fraction"):
        WorldConfig(part_fraction=(0.2, 0.1))


def test_image_plans_mix_classes_and_stay_balanced():
    config = WorldConfig()
    plans = plan_images(config)
    assert [p.split for p in plans].count("val") == 150 and len(plans) == 750
    multi = np.mean([len(p.classes) > 1 for p in plans])
    assert 0.18 < multi < 0.32
    images_per_class = np.bincount([c for p in plans for c in p.classes], minlength=6)
    assert images_per_class.min() > 0.85 * images_per_class.max()
    assert 0.3 < np.mean([p.distractors > 0 for p in plans]) < 0.5


def test_videos_decode_with_regular_i_frames_and_match_the_davis_copy(worlds):
    root = worlds[0]
    listing = json.loads((root / "web" / "listing.json").read_text())
    assert sorted(listing) == ["ant", "bee", "cat"]
    for name, results in listing.items():
        assert sum(not r["relevant"] for r in results) == 1
        for result in results:
            assert result["id"].startswith(f"{name}_") and name in result["title"]
            frames = sorted((root / "davis" / "JPEGImages" / "480p" / result["id"]).glob("*.jpg"))
            masks = sorted((root / "davis" / "Annotations" / "480p" / result["id"]).glob("*.png"))
            assert [p.stem for p in frames] == [p.stem for p in masks] == [f"{t:05d}" for t in range(24)]
            assert result["duration"] == pytest.approx(24 / 10)
            with av.open(str(root / "web" / result["video"])) as container:
                stream = container.streams.video[0]
                assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 96, 72)
                decoded = list(container.decode(stream))
            assert len(decoded) == 24
            assert [t for t, frame in enumerate(decoded) if frame.key_frame] == [0, 8, 16]
            with av.open(str(root / "web" / result["video"])) as container:
                container.streams.video[0].codec_context.skip_frame = "NONKEY"
                assert len(list(container.decode(video=0))) == 3
            for t in (0, 12, 23):
                assert psnr(decoded[t].to_ndarray(format="rgb24"), read_image_rgb(frames[t])) > 30
            thumbnail = read_image_rgb(root / "web" / result["thumbnail"])
            assert thumbnail.shape == (72, 96, 3)


def test_video_masks_follow_the_queried_object_only():
    config = small_config(video_frames=(40, 40), videos_per_class=3, misleading_per_class=2, seed=3)
    k = len(config.classes)
    kinds = set()
    for plan in plan_videos(config):
        video = render_video(config, plan)
        start, stop = plan.object_frames
        shown = plan.shown_class
        kinds.add("relevant" if plan.relevant else "other" if shown is not None else "none")
        assert 0 < start and stop < plan.n_frames
        assert not video.masks[:start].any() and not video.masks[stop:].any()
        query_colour = class_colour(plan.query_class, k)
        if not plan.relevant:
            assert not video.masks.any()
            assert hue_matches(video.thumbnail, query_colour).sum() == 0
            continue
        assert hue_matches(video.thumbnail, query_colour).sum() > 10
        areas, centres = [], []
        for t in range(start, stop):
            mask = video.masks[t]
            coloured = hue_matches(video.frames[t], query_colour)
            # The class-coloured part lies inside the mask and is a small share of it.
            near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            assert (coloured & near).sum() >= 0.9 * coloured.sum()
            assert 0.02 < (coloured & mask).sum() / mask.sum() < 0.25
            ys, xs = np.nonzero(mask)
            areas.append(mask.sum())
            centres.append((xs.mean(), ys.mean()))
        assert max(areas) / min(areas) > 1.2  # the object changes scale
        assert np.hypot(*np.subtract(centres[-1], centres[0])) > 8  # and travels
    assert kinds == {"relevant", "other", "none"}


def test_a_complete_world_is_returned_without_rewriting(worlds, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(worlds[0], world)
    stamps = {p: p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    begin = time.perf_counter()
    assert generate_world(small_config(), world) == world
    assert time.perf_counter() - begin < 0.5
    assert {p: p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()} == stamps


def test_an_interrupted_world_resumes_with_only_the_missing_items(worlds, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(worlds[0], world)
    manifest = json.loads((world / "world.json").read_text())
    (world / "world.json").write_text(json.dumps({"config": manifest["config"], "complete": False}))
    (world / "images" / "Annotations" / "img_00007.xml").unlink()  # the file written last for an image
    (world / "web" / "bee" / "bee_001.mp4").unlink()  # the file written last for a video
    before = {str(p.relative_to(world)): p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    generate_world(small_config(), world, workers=1)
    after = {str(p.relative_to(world)): p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    rewritten = {name for name, stamp in after.items() if before.get(name) != stamp}
    image = {f"images/{folder}/img_00007.{ext}" for folder, ext in
             (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("Annotations", "xml"))}  # fmt: skip
    video = {"web/bee/bee_001.mp4", "web/bee/bee_001.jpg"}
    video |= {name for name in after if "/480p/bee_001/" in name}
    summaries = {"images/classes.txt", "web/listing.json", "world.json"}
    summaries |= {f"images/ImageSets/Segmentation/{split}.txt" for split in ("train", "val")}
    assert image | video <= rewritten <= image | video | summaries
    assert all_files(world) == all_files(worlds[0])


def test_a_world_of_another_config_is_not_overwritten(worlds, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(worlds[0], world)
    with pytest.raises(InputError, match="another config"):
        generate_world(small_config(seed=5), world)


def test_bad_configs_are_input_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [ant, Bee]\n")
    assert main(["world", "--out", str(tmp_path / "w"), "--config", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert main(["world", "--out", str(tmp_path / "w"), "--seed", "-1"]) == 2
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="misleading"):
        WorldConfig(videos_per_class=2, misleading_per_class=3)
