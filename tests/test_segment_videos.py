"""`wsvs segment-videos`: relevant intervals, inputs (frame folders, mp4, classes), failures, resume, workers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from wsvs.runtime.cli import main
from wsvs.runtime.io import read_image_rgb, read_json, read_label_png, write_image_rgb
from wsvs.runtime.video_masks import (
    SegmentVideosConfig,
    VideoSource,
    find_videos,
    relevant_intervals,
    segment_video,
)
from wsvs.training.eval_video import evaluate_videos

SEQUENCES = {"blackswan": "bird", "cows": "cow"}  # DAVIS sequences used here, with their classes


def encode_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """H.264 mp4 with PyAV (the moov atom is at the end, so a truncated file has none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def davis_frames(shared_data: Path, sequence: str, count: int, size: tuple[int, int] = (160, 90)) -> list:
    folder = shared_data / "davis2016_dev" / "JPEGImages" / "480p" / sequence
    paths = sorted(folder.glob("*.jpg"))[:count]
    return [cv2.resize(read_image_rgb(p), size, interpolation=cv2.INTER_AREA) for p in paths]


def write_davis_videos(root: Path, shared_data: Path, sequences: dict[str, str], count: int) -> Path:
    """``root``/<class>/<sequence>.mp4: the first ``count`` frames of each DAVIS sequence at 160x90."""
    for sequence, class_name in sequences.items():
        encode_mp4(root / class_name / f"{sequence}.mp4", davis_frames(shared_data, sequence, count))
    return root


def segment(videos: Path, out: Path, *extra: str) -> int:
    return main(["segment-videos", "--videos", str(videos), "--out", str(out), "--attention", "none", *extra])


@pytest.fixture(scope="module")
def mp4_videos(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/<class>/<seq>.mp4: 8 frames of two DAVIS sequences at 160x90."""
    return write_davis_videos(tmp_path_factory.mktemp("videos"), shared_data, SEQUENCES, 8)


# -- relevant intervals ----------------------------------------------------------------------------------------


def test_more_than_five_consecutive_frames_make_an_interval() -> None:
    assert relevant_intervals([True] * 5) == []
    assert relevant_intervals([True] * 6) == [(0, 6)]
    flags = [False] + [True] * 6 + [False] + [True] * 5 + [False, False] + [True] * 7
    assert relevant_intervals(flags) == [(1, 7), (15, 22)]
    assert relevant_intervals(flags, min_length=6) == [(15, 22)]
    assert relevant_intervals([False] * 10) == []
    assert relevant_intervals([]) == []


def test_long_runs_are_cut_into_near_equal_pieces() -> None:
    assert relevant_intervals([True] * 13, max_length=6) == [(0, 4), (4, 9), (9, 13)]
    assert relevant_intervals([True] * 12, max_length=6) == [(0, 6), (6, 12)]
    flags = [True] * 3 + [False] + [True] * 20
    assert relevant_intervals(flags, max_length=10) == [(4, 14), (14, 24)]


class BrightnessEncoder:
    """Scores a frame by its mean brightness; attends to white pixels. Stands in for the encoder."""

    def __init__(self) -> None:
        self.class_names = ["dark", "bright"]

    def scores(self, frames: np.ndarray) -> np.ndarray:
        bright = frames.mean(axis=(1, 2, 3)) / 255.0
        return np.stack([1 - bright, bright], axis=1).astype(np.float32)

    def attention(self, frames: np.ndarray, class_index: int) -> np.ndarray:
        assert class_index == 1
        return np.where(frames.min(axis=3) > 200, 0.9, 0.1).astype(np.float32)


def test_only_relevant_intervals_are_segmented(tmp_path: Path) -> None:
    """Frames over the threshold in runs of more than 5 get masks, the others none; the white square that
    the attention points to is what is segmented."""
    relevant = [False] * 2 + [True] * 7 + [False] * 3 + [True] * 5 + [False] * 2 + [True] * 6
    folder = tmp_path / "frames" / "clip"
    objects = []
    for index, is_relevant in enumerate(relevant):
        frame = np.full((60, 80, 3), 200 if is_relevant else 20, np.uint8)
        frame[:, :, 2] = 120  # a yellowish background, away from the white object in colour
        objects.append(np.zeros((60, 80), bool))
        objects[-1][15:45, 20 + 2 * index:50 + 2 * index] = True  # the object moves 2 px a frame
        frame[objects[-1]] = 255
        write_image_rgb(folder / f"{index:05d}.png", frame)
    source = VideoSource("clip", folder, "clip", "bright")
    out = tmp_path / "out"
    record = segment_video(source, out, SegmentVideosConfig(threshold=0.6), BrightnessEncoder())

    assert record["intervals"] == [[2, 9], [19, 25]]
    assert record["frames"] == len(relevant) and record["masked_frames"] == 13
    assert [s > 0.6 for s in record["scores"]] == relevant
    masked = [*range(2, 9), *range(19, 25)]
    assert sorted(p.name for p in (out / "clip").glob("*.png")) == [f"{i:05d}.png" for i in masked]
    assert read_json(out / "clip.json") == record
    for index in masked:
        found = read_label_png(out / "clip" / f"{index:05d}.png") > 0
        assert (found & objects[index]).sum() / (found | objects[index]).sum() > 0.9


# -- inputs ---------------------------------------------------------------------------------------------------


def test_davis_frame_folders_without_attention(shared_data: Path, tmp_path: Path) -> None:
    """A short slice of a real DAVIS sequence, motion + appearance only, scored with eval-video."""
    davis = shared_data / "davis2016_dev"
    videos = tmp_path / "davis"
    for kind, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
        target = videos / kind / "480p" / "blackswan"
        target.mkdir(parents=True)
        for index in range(12):
            shutil.copy(davis / kind / "480p" / "blackswan" / f"{index:05d}.{suffix}", target)
    (videos / "videos.json").write_text(json.dumps({"blackswan": "bird"}))  # frame folders: by sequence name
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text("max_side: 320\n")
    assert segment(videos, out, "--config", str(config)) == 0

    record = read_json(out / "blackswan.json")
    assert record["intervals"] == [[0, 12]] and record["scores"] is None and record["class"] == "bird"
    assert (record["width"], record["height"], record["fps"]) == (854, 480, None)
    assert read_label_png(out / "blackswan" / "00000.png").shape == (480, 854)  # masks at frame size
    report = evaluate_videos(out, videos)
    assert report["per_video"]["blackswan"]["missing_frames"] == 0
    assert report["mean_iou"] > 0.55  # a margin under what 12 frames at 320x180 reach with motion + appearance


def test_mp4_classes_from_folders_and_manifest(mp4_videos: Path, tmp_path: Path) -> None:
    assert [(s.video_id, s.class_name) for s in find_videos(mp4_videos)] == [
        ("blackswan", "bird"), ("cows", "cow")]
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(mp4_videos / "bird" / "blackswan.mp4", flat / "clip_a.mp4")
    (flat / "videos.json").write_text(json.dumps({"clip_a.mp4": "swan"}))
    assert [(s.video_id, s.class_name) for s in find_videos(flat)] == [("clip_a", "swan")]

    out = tmp_path / "out"
    assert segment(flat, out) == 0
    record = read_json(out / "clip_a.json")
    assert (record["class"], record["frames"], record["fps"]) == ("swan", 8, 10.0)
    assert (record["width"], record["height"], record["intervals"]) == (160, 90, [[0, 8]])
    assert len(list((out / "clip_a").glob("*.png"))) == 8


def test_manifest_naming_a_missing_video_is_input_error(mp4_videos: Path, tmp_path: Path, capsys) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(mp4_videos, videos)
    (videos / "videos.json").write_text(json.dumps({"bird/nope.mp4": "bird"}))
    assert segment(videos, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "videos.json" in err[0] and "bird/nope.mp4" in err[0]


def test_missing_videos_folder_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    code = main(["segment-videos", "--videos", str(tmp_path / "absent"), "--out", str(tmp_path / "out"),
                 "--attention", "none"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "absent") in err[0]
    assert main(["segment-videos", "--videos", str(tmp_path), "--out", str(tmp_path / "out")]) == 2  # no --model


# -- failures, resume, workers ---------------------------------------------------------------------------------


def test_corrupt_videos_are_skipped_and_recorded(mp4_videos: Path, tmp_path: Path, capsys) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(mp4_videos, videos)
    data = (videos / "cow" / "cows.mp4").read_bytes()
    (videos / "cow" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (videos / "bird" / "notes.mp4").write_text("this is not a video\n")
    out = tmp_path / "out"
    assert segment(videos, out) == 0

    failures = read_json(out / "failures.json")
    assert sorted(failures) == ["notes", "truncated"]
    assert failures["notes"]["video"] == "bird/notes.mp4" and failures["notes"]["error"]
    assert sorted(p.name for p in out.glob("*.json")) == ["blackswan.json", "cows.json", "failures.json",
                                                          "run.json"]
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 2 and any("notes.mp4" in line for line in skipped)
    assert "2 videos segmented" in captured.out and "2 failed" in captured.out


def test_resume_skips_finished_videos(mp4_videos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert segment(mp4_videos, out) == 0
    stamps = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.*")}
    capsys.readouterr()

    assert segment(mp4_videos, out) == 0
    assert "0 videos segmented, 2 already done" in capsys.readouterr().out
    assert read_json(out / "cows.json")["intervals"] == [[0, 8]]
    assert (out / "cows.json").stat().st_mtime_ns == stamps["cows.json"]

    (out / "cows.json").unlink()  # as if killed before cows finished
    (out / "cows" / "00007.png").unlink()
    assert segment(mp4_videos, out) == 0
    assert "1 videos segmented, 1 already done" in capsys.readouterr().out
    assert (out / "cows" / "00007.png").is_file() and (out / "cows.json").is_file()
    assert (out / "blackswan.json").stat().st_mtime_ns == stamps["blackswan.json"]
    assert (out / "blackswan" / "00000.png").stat().st_mtime_ns == stamps["blackswan/00000.png"]

    # other settings in the same output folder are refused rather than mixed
    assert segment(mp4_videos, out, "--threshold", "0.9") == 2


def test_two_workers_give_byte_identical_results(mp4_videos: Path, tmp_path: Path) -> None:
    assert segment(mp4_videos, tmp_path / "one", "--workers", "1") == 0
    assert segment(mp4_videos, tmp_path / "two", "--workers", "2") == 0
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert one == two and len(one) == 16
    for relative in one:
        assert (tmp_path / "one" / relative).read_bytes() == (tmp_path / "two" / relative).read_bytes()
    for sequence in SEQUENCES:
        records = [read_json(tmp_path / run / f"{sequence}.json") for run in ("one", "two")]
        for record in records:
            record.pop("timings_s")
        assert records[0] == records[1]


def test_without_torch_and_ray_runs_locally_and_the_ray_executor_says_what_to_install(mp4_videos: Path,
                                                                                     tmp_path: Path) -> None:
    """The runtime's install (no torch, no cluster extra): --attention none runs; --executor ray fails in one line."""
    local = ["segment-videos", "--videos", str(mp4_videos), "--out", str(tmp_path / "local"), "--attention", "none"]
    on_ray = [*local[:3], "--out", str(tmp_path / "ray"), "--attention", "none", "--executor", "ray"]
    code = ("import sys; sys.modules['torch'] = None; sys.modules['ray'] = None\n"
            "from wsvs.runtime.cli import main\n"
            f"assert main({local!r}) == 0\n"
            "assert not [k for k, v in sys.modules.items() if v is not None and k.split('.')[0] in ('torch', 'ray')]\n"
            f"sys.exit(main({on_ray!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert (tmp_path / "local" / "cows.json").is_file()
    last = result.stderr.splitlines()[-1]
    assert last == "wsvs segment-videos: error: the ray executor needs Ray: install wsvs[cluster]"


def test_an_address_without_the_ray_executor_is_refused(mp4_videos: Path, tmp_path: Path, capsys) -> None:
    assert segment(mp4_videos, tmp_path / "out", "--address", "127.0.0.1:6379") == 2
    assert capsys.readouterr().err == "wsvs segment-videos: error: --address is the Ray cluster's: add --executor ray\n"
    assert not (tmp_path / "out").exists()


# -- the paper's path: encoder relevance scores and CAM attention ----------------------------------------------


def test_attention_path_on_world_videos(world_dir: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """Three web videos of each class of the synthetic world (two relevant, one misleading): the recorded scores
    are the encoder's, the intervals follow them, and relevance filtering + attention beat motion + appearance
    alone against the ground truth (empty in misleading videos and in irrelevant stretches)."""
    from wsvs.runtime.video_reader import VideoReader
    from wsvs.training.cam import FrameAttention

    listing = read_json(world_dir / "web" / "listing.json")
    videos = tmp_path / "web"
    chosen = {}  # class -> (two relevant entries, one misleading)
    for class_name in sorted(listing):
        relevant = [e for e in listing[class_name] if e["relevant"]][:2]
        chosen[class_name] = relevant + [e for e in listing[class_name] if not e["relevant"]][:1]
        for entry in chosen[class_name]:
            (videos / class_name).mkdir(parents=True, exist_ok=True)
            shutil.copy(world_dir / "web" / entry["video"], videos / class_name)
    cam_out, plain_out = tmp_path / "cam", tmp_path / "plain"
    assert main(["segment-videos", "--videos", str(videos), "--out", str(cam_out), "--model", str(encoder_dir)]) == 0
    assert main(["segment-videos", "--videos", str(videos), "--out", str(plain_out), "--attention", "none"]) == 0

    model = FrameAttention.load(encoder_dir)
    config = SegmentVideosConfig()
    masked_fraction = {}
    for source in find_videos(videos):
        record = read_json(cam_out / f"{source.video_id}.json")
        class_index = model.class_names.index(record["class"])
        expected = model.scores(np.stack(list(VideoReader(source.path))))[:, class_index]
        np.testing.assert_allclose(record["scores"], expected, atol=1e-5)
        flags = np.asarray(record["scores"]) > config.threshold
        assert record["intervals"] == [list(i) for i in relevant_intervals(flags, 5, config.max_interval)]
        masked_fraction[source.video_id] = record["masked_frames"] / record["frames"]
    for relevant_0, relevant_1, misleading in chosen.values():
        assert min(masked_fraction[relevant_0["id"]], masked_fraction[relevant_1["id"]]) > \
            masked_fraction[misleading["id"]]

    ground_truth = world_dir / "davis"
    ids = [entry["id"] for entries in chosen.values() for entry in entries]
    cam_iou = np.mean([evaluate_videos(cam_out, ground_truth)["per_video"][i]["iou"] for i in ids])
    plain_iou = np.mean([evaluate_videos(plain_out, ground_truth)["per_video"][i]["iou"] for i in ids])
    assert cam_iou > plain_iou + 0.1
