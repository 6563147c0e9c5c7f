"""Decoder on video masks (§3.3), inference (§3.4), domain adaptation (§5.2.1) and image evaluation (§5)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wsvs.runtime.cli import main
from wsvs.runtime.contract import ArchConfig, ModelMetadata, labels_from_foreground
from wsvs.runtime.executor import ExecutorConfig
from wsvs.runtime.io import read_label_png, voc_palette, write_binary_png
from wsvs.training.checkpoint import load_checkpoint
from wsvs.training.fit import calibrate_threshold
from wsvs.training.inference import segment_images
from wsvs.training.models import WSVSModel, multiscale_attention
from wsvs.training.train_decoder import Pairs, TrainDecoderConfig, fit_decoder, video_pairs
from wsvs.training.voc import VOCDataset

TINY = ArchConfig(num_classes=3, width=0.125, batch_norm=True)


class AttentionAsProbability(nn.Module):
    """A decoder whose foreground probability is its input attention, for known-answer checks."""

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return torch.logit(attention.clamp(1e-6, 1 - 1e-6))


def test_pixels_take_the_most_probable_class_and_background_below_the_threshold() -> None:
    foreground = np.zeros((1, 3, 2, 3), np.float32)
    foreground[0, 0] = [[0.9, 0.2, 0.49], [0.6, 0.0, 0.5]]
    foreground[0, 2] = [[0.8, 0.3, 0.1], [0.7, 0.0, 0.4]]
    np.testing.assert_array_equal(labels_from_foreground(foreground, 0.5), [[[1, 0, 0], [3, 0, 1]]])
    np.testing.assert_array_equal(labels_from_foreground(foreground, 0.3), [[[1, 3, 1], [3, 0, 1]]])


def test_inference_decodes_only_present_classes_and_takes_the_pixelwise_max() -> None:
    torch.manual_seed(0)
    model = WSVSModel(TINY).eval()
    model.decoder = AttentionAsProbability()
    meta = ModelMetadata(class_names=["ant", "bee", "cat"], arch=TINY, scales=(1.0, 1.5))
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    present = np.array([[True, False, True], [False, True, False]])

    labels, scores, foreground = segment_images(model, meta, images, present)

    from wsvs.runtime.preprocess import normalise

    with torch.no_grad():
        x = torch.from_numpy(normalise(images, meta.mean, meta.std))
        attention = multiscale_attention(model.encoder, x, meta.scales).numpy()
        expected_scores = torch.sigmoid(model.encoder(x)[0]).numpy()
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    np.testing.assert_allclose(foreground, np.where(present[..., None, None], attention, 0), atol=1e-5)
    for n in range(2):
        masked = np.where(present[n][:, None, None], attention[n], -1)
        expected = np.where(masked.max(0) >= 0.5, masked.argmax(0) + 1, 0)
        np.testing.assert_array_equal(labels[n], expected)
    assert set(np.unique(labels[1])) <= {0, 2}

    # Without given classes, the threshold picks them: none pass 1.0, so everything is background.
    meta.class_threshold = 1.0
    labels, _, foreground = segment_images(model, meta, images)
    assert not labels.any() and not foreground.any()


def _make_masks(folder: Path, video_id: str, relative: str, class_name: str, masks: dict[int, np.ndarray]) -> None:
    for index, mask in masks.items():
        write_binary_png(folder / video_id / f"{index:05d}.png", mask)
    record = {"video": relative, "class": class_name, "intervals": [[min(masks), max(masks) + 1]]}
    (folder / f"{video_id}.json").write_text(json.dumps(record))


def _first_video(world_dir: Path) -> tuple[Path, str, str, str, tuple[int, int]]:
    """The world's first web video: videos folder, relative path, class, id and frame size."""
    import av

    videos = world_dir / "web"
    relative = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4"))[0]
    with av.open(str(videos / relative)) as container:
        size = container.streams.video[0].height, container.streams.video[0].width
    return videos, relative, relative.split("/")[0], Path(relative).stem, size


def test_implausible_masks_are_skipped_and_counted(world_dir: Path, encoder_dir: Path, tmp_path: Path) -> None:
    videos, relative, class_name, video_id, (height, width) = _first_video(world_dir)
    plausible = np.zeros((height, width), bool)
    plausible[20:60, 30:90] = True
    nearly_full = np.ones((height, width), bool)
    nearly_full[:5, :5] = False
    masks = {0: plausible, 1: np.zeros((height, width), bool), 2: nearly_full, 3: plausible, 4: plausible}
    masks_dir = tmp_path / "masks"
    _make_masks(masks_dir, video_id, relative, class_name, masks)
    # What a segment-videos killed mid-write leaves beside its outputs: temporaries never renamed into place.
    (masks_dir / f".{video_id}.json.k4q2x.json").write_text('{"video": "')
    (masks_dir / video_id / ".00005.png.w8z1r.png").write_bytes(b"\x89PNG")
    config = TrainDecoderConfig()
    cache = tmp_path / "cache"

    pairs, counts = video_pairs(encoder_dir, videos, masks_dir, cache, config)

    assert counts == {"videos": 1, "masked_frames": 5, "used": 3, "skipped_empty": 1, "skipped_full": 1}
    assert len(pairs.masks) == 3 and pairs.masks[0].shape == (height, width)
    assert np.array_equal(pairs.masks[1], plausible)
    assert 0 <= pairs.attention[0].min() and pairs.attention[0].max() <= 1
    # The cached attention is reused as it is (same bytes) and matches the encoder's attention of the frame.
    cached = (cache / f"{video_id}.npz").read_bytes()
    again, _ = video_pairs(encoder_dir, videos, masks_dir, cache, config)
    assert (cache / f"{video_id}.npz").read_bytes() == cached
    np.testing.assert_array_equal(again.attention[2], pairs.attention[2])
    # Computed in a worker process (the executor's local pool) instead: the same attention, up to one float16
    # step (the float32 sums of another process's kernels round a few pixels across a float16 boundary).
    in_worker, _ = video_pairs(encoder_dir, videos, masks_dir, tmp_path / "cache2", config, ExecutorConfig(workers=2))
    assert len(in_worker.attention) == len(pairs.attention)
    for got, expected in zip(in_worker.attention, pairs.attention, strict=True):
        step = np.spacing(np.maximum(got, expected))
        assert np.all(np.abs(got.astype(np.float32) - expected.astype(np.float32)) <= step)


def test_attention_of_another_cache_is_reused_for_the_frames_it_holds(world_dir: Path, encoder_dir: Path,
                                                                       tmp_path: Path) -> None:
    """The upper bound trains on every frame of the clips; those the decoder was trained on keep its cached
    attention, the others are computed, and a cache of other settings is not read."""
    videos, relative, class_name, video_id, (height, width) = _first_video(world_dir)
    mask = np.zeros((height, width), bool)
    mask[20:60, 30:90] = True
    config = TrainDecoderConfig()
    _make_masks(tmp_path / "interval", video_id, relative, class_name, {1: mask, 2: mask})
    decoder_cache = tmp_path / "decoder_cache"
    video_pairs(encoder_dir, videos, tmp_path / "interval", decoder_cache, config)
    # Marked attention where the decoder's cache has frames 1 and 2, so a reuse is told from a recomputation.
    with np.load(decoder_cache / f"{video_id}.npz") as cached:
        frames, attention, masks = cached["frames"], cached["attention"], cached["masks"]
    np.savez(decoder_cache / f"{video_id}.npz", frames=frames, attention=np.full_like(attention, 0.25), masks=masks)
    _make_masks(tmp_path / "truth", video_id, relative, class_name, {i: mask for i in range(4)})

    fresh, _ = video_pairs(encoder_dir, videos, tmp_path / "truth", tmp_path / "fresh", config)
    reused, _ = video_pairs(encoder_dir, videos, tmp_path / "truth", tmp_path / "reused", config,
                            reuse_dir=decoder_cache)

    def assert_same(got: np.ndarray, expected: np.ndarray) -> None:  # up to one float16 step (batch rounding)
        assert np.all(np.abs(got.astype(np.float32) - expected.astype(np.float32))
                      <= np.spacing(np.maximum(got, expected)))

    assert [float(a.max()) for a in reused.attention[1:3]] == [0.25, 0.25]
    assert np.abs(fresh.attention[1].astype(np.float32) - 0.25).max() > 0.1  # the mark differs from the encoder's
    for i in (0, 3):
        assert_same(reused.attention[i], fresh.attention[i])
    other = tmp_path / "other"
    shutil.copytree(decoder_cache, other)
    (other / "cache.json").write_text('{"encoder": "another", "max_side": 480}')
    ignored, _ = video_pairs(encoder_dir, videos, tmp_path / "truth", tmp_path / "ignored", config, reuse_dir=other)
    assert_same(ignored.attention[1], fresh.attention[1])


def _disc_pairs(count: int, size: int = 32) -> Pairs:
    """Blurry attention blobs and, as masks, the discs under them."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    attention, masks = [], []
    for _ in range(count):
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(4, 7)
        distance = np.hypot(yy - cy, xx - cx)
        attention.append(np.exp(-((distance / (2 * r)) ** 2)).astype(np.float16))
        masks.append(distance < r)
    return Pairs(attention, masks)


def test_resumed_decoder_training_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    pairs = _disc_pairs(12)
    meta = ModelMetadata(class_names=["ant", "bee", "cat"], arch=TINY, input_size=32)

    def train(out: Path, epochs: int, resume: bool) -> None:
        torch.manual_seed(0)
        model = WSVSModel(TINY)
        config = TrainDecoderConfig(epochs=epochs, batch_size=4, device="cpu")
        fit_decoder(model, meta, pairs, out, config, {}, resume)

    train(tmp_path / "straight", 2, False)
    train(tmp_path / "resumed", 1, False)
    train(tmp_path / "resumed", 2, True)
    straight, straight_meta = load_checkpoint(tmp_path / "straight")
    resumed, resumed_meta = load_checkpoint(tmp_path / "resumed")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight_meta.decoder_trained
    assert straight_meta.extra["decoder_training"]["history"] == resumed_meta.extra["decoder_training"]["history"]
    assert straight_meta.foreground_threshold == resumed_meta.foreground_threshold


def test_the_calibrated_threshold_maximises_iou_with_the_masks() -> None:
    # An object whose core the decoder is sure of (0.8) and whose rim it is not (0.3): a 0.5 cut keeps the
    # core only; the calibrated threshold takes the whole object and no background (0.1).
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    probability = np.full((20, 20), 0.1, np.float32)
    probability[mask] = 0.3
    probability[8:12, 8:12] = 0.8
    threshold, iou = calibrate_threshold([(probability, mask), (probability, mask)])
    assert 0.1 < threshold <= 0.3 and iou[str(threshold)] == 1.0
    assert iou["0.5"] == pytest.approx(16 / 100) and iou["0.1"] == pytest.approx(100 / 400)


@pytest.fixture(scope="module")
def table1(world_dir: Path, encoder_dir: Path, decoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Val mIoU of the CAM baseline, the decoder trained on video masks and + domain adaptation."""
    from wsvs.training.cam import EvalCamConfig, evaluate_cam

    data, out = world_dir / "images", tmp_path_factory.mktemp("table1")
    assert main(["adapt", "--model", str(decoder_dir), "--data", str(data), "--out", str(out / "adapted"),
                 "--epochs", "3"]) == 0
    scores = {"cam": evaluate_cam(encoder_dir, data, EvalCamConfig())["miou"], "adapted_dir": out / "adapted"}
    for name, model_dir in (("decoder", decoder_dir), ("adapted", out / "adapted")):
        json_path = out / f"{name}.json"
        assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--json", str(json_path)]) == 0
        report = json.loads(json_path.read_text())
        scores[name], scores[f"{name}_table"] = report["miou"], report["table_text"]
    return scores


def test_table1_in_miniature(world_dir: Path, decoder_dir: Path, table1: dict) -> None:
    """Table 1 on the small world's val split: the decoder trained on video masks beats the CAM baseline by at
    least 10 points, and domain adaptation on the graph-cut-refined labels gains at least one point over it.
    Measured (CAM, decoder, + DA; encoder lr 3e-4): AVX-512 kernels, one thread 33.1, 53.2, 63.1; two threads
    32.3, 50.1, 58.1; AVX2 kernels, one thread 33.7, 52.3, 57.4. On labels the decoder alone made, adaptation's
    sign depended on the kernels (+4.3 and -2.3)."""
    from wsvs.training.train_encoder import evaluate_classifier

    assert table1["decoder"] >= table1["cam"] + 0.10, table1
    assert table1["adapted"] >= table1["decoder"] + 0.01, table1
    assert "bkg" in table1["decoder_table"] and "decoder + DA" in table1["adapted_table"]
    adapted_dir = table1["adapted_dir"]
    # Adaptation fine-tunes the encoder too, and its image-level loss keeps the classification; each stage
    # calibrated its own foreground threshold. Its labels of the training images are viewable.
    decoder, decoder_meta = load_checkpoint(decoder_dir)
    adapted, meta = load_checkpoint(adapted_dir)
    assert any(not torch.equal(a, b) for a, b in zip(decoder.encoder.parameters(), adapted.encoder.parameters()))
    val = VOCDataset(world_dir / "images", "val", class_names=meta.class_names)
    before = evaluate_classifier(decoder, decoder_meta, val, "cpu")["map"]
    assert evaluate_classifier(adapted, meta, val, "cpu")["map"] >= before - 0.05
    assert "adaptation" in meta.extra and "decoder_training" in meta.extra
    check = meta.extra["adaptation"]["check"]  # the held-out judgement accepted it, having kept classification
    assert check["accepted"] and check["map_after"] >= check["map_before"] - 0.02, check
    for stage, stage_meta in (("decoder_training", decoder_meta), ("adaptation", meta)):
        iou = stage_meta.extra[stage]["threshold_iou"]
        assert iou[str(stage_meta.foreground_threshold)] == max(iou.values())
    label_file = next((adapted_dir / "labels").glob("*.png"))
    from PIL import Image

    with Image.open(label_file) as image:
        assert image.mode == "P" and np.array_equal(np.array(image.getpalette()[:6]).reshape(2, 3), voc_palette(2))


def test_refined_labels_take_each_body_whole_from_a_decoder_that_under_segments() -> None:
    """Two bodies of one colour on dark clutter, each of another class. The decoder is sure of the inner half of
    each body and unsure (under its threshold) of a band that holds the body's rim and as much clutter around it,
    as the demo's decoder under-segments. The graph cut's colour term takes each body's rim and leaves the clutter,
    and a pixel both cuts claim goes to the more probable class."""
    from wsvs.training.adapt import refine_labels, still_image_refinement

    rng = np.random.default_rng(0)
    image = rng.integers(0, 90, (128, 128, 3)).astype(np.uint8)
    truth = np.zeros((128, 128), np.uint8)
    yy, xx = np.mgrid[:128, :128]
    foreground = np.full((3, 128, 128), 0.02, np.float32)
    for c, centre in ((0, 36), (2, 92)):
        radius = np.sqrt(((xx - centre) / 16.0) ** 2 + ((yy - 64) / 40.0) ** 2)  # 1 on the body's outline
        body = radius <= 1
        image[body] = np.array([200, 170, 60]) + rng.integers(-12, 12, (body.sum(), 3))
        truth[body] = c + 1
        foreground[c][radius <= 1.3] = 0.3
        foreground[c][radius <= 0.7] = 0.9
    config = dataclasses.replace(still_image_refinement(), attention_threshold=0.5)
    refined = refine_labels(image, foreground, np.array([0, 2]), config)
    decoder = labels_from_foreground(foreground[None], 0.5)[0]

    def iou(labels: np.ndarray, c: int) -> float:
        return ((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum()

    for label in (1, 3):
        assert iou(decoder, label) < 0.55 and iou(refined, label) > 0.9, (iou(decoder, label), iou(refined, label))
    assert not (refined == 2).any()  # a class not present is never labelled


def test_adaptation_trains_the_attention_the_decoder_reads_at_every_scale() -> None:
    """The fine-tuned network's foreground is the inference path's (the decoder on the multi-scale attention), and so
    is its gradient into the encoder: every scale's attention passes it on, not only scale 1's (on a tuning world,
    that doubled adaptation's gain)."""
    from wsvs.training.adapt import adaptation_network

    torch.manual_seed(0)
    model = WSVSModel(TINY).eval()
    scales = (0.75, 1.0, 1.5)
    images = torch.randn(2, 3, 64, 64)
    image_index, class_index = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])

    def encoder_gradient(foreground: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        foreground.square().mean().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.encoder.parameters()]
        return torch.cat([g.flatten() for g in grads])

    _, trained = adaptation_network(model, scales, False)(images, image_index, class_index)
    trained_gradient = encoder_gradient(trained)
    attention = multiscale_attention(model.encoder, images, scales)
    inferred = model.decoder(attention[image_index, class_index][:, None])[:, 0]
    torch.testing.assert_close(trained, inferred)
    # scales other than 1 win the maximum at about half the pixels here, so a gradient through scale 1 alone differs
    wins = multiscale_attention(model.encoder, images, [0.75, 1.5]) > multiscale_attention(model.encoder, images, [1])
    assert wins.float().mean() > 0.25
    torch.testing.assert_close(trained_gradient, encoder_gradient(inferred))
    assert trained_gradient.abs().sum() > 0


def test_holdout_split_is_disjoint_seeded_and_keeps_one_of_each() -> None:
    from wsvs.training.adapt import holdout_split

    ids = [f"{i:04d}" for i in range(100)]
    trained, held = holdout_split(ids, 0.15, seed=3)
    assert len(held) == 15 and sorted([*trained, *held]) == list(range(100))
    assert np.array_equal(held, holdout_split(ids, 0.15, seed=3)[1])
    assert not np.array_equal(held, holdout_split(ids, 0.15, seed=4)[1])
    assert [len(part) for part in holdout_split(ids[:2], 0.01, seed=0)] == [1, 1]
    assert [len(part) for part in holdout_split(ids[:3], 0.99, seed=0)] == [1, 2]


def test_holdout_by_sequence_keeps_each_sequence_on_one_side() -> None:
    """Frames of one video are near-duplicates: held out by sequence, none of a held-out sequence's frames is
    trained on."""
    from wsvs.training.adapt import holdout_split, image_group

    ids = [f"{seq}_{frame:05d}" for seq, frames in (("bear", 12), ("car-turn", 30), ("flamingo", 8), ("goat", 20))
           for frame in range(0, 5 * frames, 5)]
    groups = [image_group(i, by_sequence=True) for i in ids]
    for seed in range(6):
        trained, held = holdout_split(groups, 0.15, seed)
        assert len({groups[k] for k in held}) == 1 and not {groups[k] for k in held} & {groups[k] for k in trained}
        assert sorted([*trained, *held]) == list(range(len(ids)))
    assert image_group("car-turn_00040", by_sequence=False) == "car-turn_00040"


def test_adaptation_that_degrades_is_reported_and_refused(world_dir: Path, decoder_dir: Path, tmp_path: Path,
                                                          capsys) -> None:
    """Fine-tuning at a learning rate 1000x the recipe's wrecks the network. Judged only with image-level labels
    on held-out training images, the adaptation is refused: --out holds the input model with the reason, and the
    refused model, kept in <out>/refused/, is indeed worse on the val masks the check never saw."""
    from wsvs.training.checkpoint import checkpoint_files

    data, out = world_dir / "images", tmp_path / "adapted"
    split = tmp_path / "some_train.txt"  # a quarter of the training images: a wreck shows on any of them
    split.write_text("\n".join(VOCDataset(data, "train").ids[:150]) + "\n")
    assert main(["adapt", "--model", str(decoder_dir), "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--lr", "0.1", "--split", str(split)]) == 0
    assert "adaptation REFUSED" in capsys.readouterr().out
    kept, meta = load_checkpoint(out)
    decoder, decoder_meta = load_checkpoint(decoder_dir)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), decoder.state_dict().values()))
    assert meta.foreground_threshold == decoder_meta.foreground_threshold
    check = meta.extra["adaptation"]["check"]
    assert not check["accepted"] and check["reason"] and check["images"] >= 1
    assert checkpoint_files(out)[0].is_file()
    scores = {}
    for name, model_dir in (("decoder", decoder_dir), ("refused", out / "refused")):
        assert main(["evaluate", "--model", str(model_dir), "--data", str(data),
                     "--json", str(tmp_path / "s.json")]) == 0
        scores[name] = json.loads((tmp_path / "s.json").read_text())["miou"]
    assert scores["refused"] < scores["decoder"] - 0.05, scores
    assert load_checkpoint(out / "refused")[1].extra["adaptation"]["check"] == check


def test_segment_cli_writes_palette_masks_and_overlays(world_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WSVSModel(TINY)
    model.decoder.head.bias.data.fill_(10.0)  # every present class covers the whole image
    meta = ModelMetadata(class_names=["ant", "bee", "cat"], arch=TINY, class_threshold=0.0, decoder_trained=True)
    from wsvs.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "model", model, meta)
    images = sorted((world_dir / "images" / "JPEGImages").glob("*.jpg"))[:2]
    assert main(["segment", *map(str, images), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")]) == 0
    for image in images:
        labels = read_label_png(tmp_path / "out" / f"{image.stem}.png")
        assert labels.min() >= 1  # all classes present: no background anywhere
        assert (tmp_path / "out" / f"{image.stem}_overlay.jpg").is_file()


def test_eval_without_a_trained_decoder_is_an_input_error(encoder_dir: Path, world_dir: Path, capsys) -> None:
    assert main(["evaluate", "--model", str(encoder_dir), "--data", str(world_dir / "images")]) == 2
    assert "no trained decoder" in capsys.readouterr().err
