"""The crawl (paper §4) end to end through yt-dlp against a loopback web server, and key-frame extraction."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from wsvs.runtime.errors import InputError
from wsvs.runtime.keyframes import cut_clip, iter_keyframes, merge_windows, window_times
from wsvs.training import crawl as crawl_module
from wsvs.training.crawl import CrawlConfig, crawl, load_scorer, read_manifest
from wsvs.training.demo_world.loopback_site import LoopbackServer, serve_world_videos

CLIPS = ("realshort", "bikes", "cockatoo", "carphone_pristine", "bigbuckbunny")
RELEVANT = ("realshort", "bikes", "cockatoo")  # the others get a thumbnail the scorer rejects
CLASSES = ["bird", "plant"]


def brightness_scorer(images: np.ndarray) -> np.ndarray:
    """A stand-in encoder: every class's probability is 1.5 x the mean brightness (clipped to 1)."""
    p = np.clip(1.5 * images.reshape(len(images), -1).mean(1) / 255.0, 0.0, 1.0)
    return np.repeat(p[:, None], len(CLASSES), axis=1).astype(np.float32)


def load_brightness_scorer() -> Callable[[np.ndarray], np.ndarray]:
    """What each worker process of the crawl calls to build its scorer."""
    return brightness_scorer


def jpeg(value: int) -> bytes:
    return cv2.imencode(".jpg", np.full((48, 64, 3), value, np.uint8))[1].tobytes()


BRIGHT, DARK = jpeg(255), jpeg(40)  # scores 1.0 and ~0.24


def small_config(out: Path, pages: Path, **overrides) -> CrawlConfig:
    """Threshold 0.5 so that some key-frames of the real clips pass; short windows give several clips."""
    values = dict(classes=("bird",), out=out, source="pages", pages=pages, threshold=0.5, max_keyframes=2,
                  window=0.5, workers=2, timeout_s=1.0, retries=0, score_max_side=4096)
    return CrawlConfig(**{**values, **overrides})


def serve_clips(server: LoopbackServer, videos: Path, names: tuple[str, ...]) -> list[str]:
    pages = []
    for name in names:
        server.add(f"/v/{name}.mp4", videos / f"{name}.mp4", "video/mp4")
        server.add(f"/t/{name}.jpg", BRIGHT if name in RELEVANT else DARK, "image/jpeg")
        pages.append(server.add_video_page(f"/p/{name}.html", f"A {name} video", f"/v/{name}.mp4",
                                           f"/t/{name}.jpg"))
    return pages


def write_pages(path: Path, pages: dict[str, list[str]]) -> Path:
    path.write_text(json.dumps(pages))
    return path


def full_decode(
    path: Path, keep: Callable[[float], bool] = lambda t: False
) -> tuple[list[float], list[float], dict[float, np.ndarray]]:
    """Every frame time, the key-frame times (frame.key_frame and an I picture), and by time the
    key-frames and the frames for which ``keep(time)`` holds."""
    times, keys, frames = [], [], {}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            t = float(frame.time)
            times.append(t)
            if frame.key_frame or keep(t):
                frames[t] = frame.to_ndarray(format="rgb24")
            if frame.key_frame:
                assert frame.pict_type == av.video.frame.PictureType.I
                keys.append(t)
    return times, keys, frames


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def manifest_without_times(out: Path) -> dict:
    return {key: {k: v for k, v in r.items() if k != "updated"} for key, r in read_manifest(
        out / "manifest.jsonl").items()}


# ---------------------------------------------------------------- key-frames (runtime)


@pytest.mark.parametrize("name", CLIPS)
def test_keyframes_match_full_decode(shared_data: Path, name: str) -> None:
    path = shared_data / "videos" / f"{name}.mp4"
    times, keys, frames = full_decode(path)
    keyframes = list(iter_keyframes(path))
    assert [t for t, _ in keyframes] == keys
    for t, image in keyframes:
        np.testing.assert_array_equal(image, frames[t])
    for window in (0.5, 2.0):
        windows = merge_windows(keys, window)
        got = [t for start, end in windows for t in window_times(path, start, end)]
        assert got == [t for t in times if any(abs(t - k) <= window for k in keys)]


def test_merge_windows() -> None:
    assert merge_windows([5.0, 0.0, 1.0], 0.6) == [(-0.6, 1.6), (4.4, 5.6)]
    assert merge_windows([0.0, 1.2], 0.6) == [(-0.6, 1.7999999999999998)]  # touching windows merge
    assert merge_windows([], 2.0) == []


def test_cut_clip_holds_the_window_frames(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "videos" / "bikes.mp4"
    times, _, frames = full_decode(path, keep=lambda t: 5.0 <= t <= 6.0)
    count = cut_clip(path, 5.0, 6.0, tmp_path / "clip.mp4")
    expected = [frames[t] for t in times if 5.0 <= t <= 6.0]
    clip = decode_all(tmp_path / "clip.mp4")
    assert count == len(expected) == len(clip) == 26
    assert min(psnr(a, b) for a, b in zip(clip, expected, strict=True)) > 30
    with av.open(str(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 25


def test_cut_clip_gives_the_same_bytes_every_time(world_dir: Path, tmp_path: Path) -> None:
    """Clips feed the video segmentation and the decoder: a rerun must see the same frames (with libx264's
    macroblock-tree rate control, cuts of the world's videos differed from run to run)."""
    path = next((world_dir / "web").glob("*/*.mp4"))
    digests = set()
    for i in range(6):
        cut_clip(path, 0.5, 2.5, tmp_path / f"clip{i}.mp4")
        digests.add(hashlib.sha256((tmp_path / f"clip{i}.mp4").read_bytes()).hexdigest())
    assert len(digests) == 1


def test_keyframes_of_bad_files_are_input_errors(shared_data: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    data = (shared_data / "videos" / "bikes.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "text.mp4"
    text.write_text("not a video\n" * 100)
    for bad in (truncated, text, tmp_path / "missing.mp4"):
        with pytest.raises(InputError, match=bad.name):
            list(iter_keyframes(bad))


# ---------------------------------------------------------------- the crawl


def test_crawl_end_to_end_filters_by_thumbnail_and_keyframes(shared_data: Path, tmp_path: Path) -> None:
    videos = shared_data / "videos"
    with LoopbackServer() as server:
        pages = serve_clips(server, videos, CLIPS)
        config = small_config(tmp_path / "out", write_pages(tmp_path / "pages.json", {"bird": pages}))
        summary = crawl(config, load_brightness_scorer, CLASSES)
    # Misleading thumbnails: their videos are never fetched; every thumbnail is.
    for name in CLIPS:
        assert f"/t/{name}.jpg" in server.requests
        assert server.requests.count(f"/v/{name}.mp4") == (1 if name in RELEVANT else 0)
    assert summary["bird"] == {"listed": 5, "passed_thumbnail": 3, "downloaded": 3, "kept": 3, "rejected": 2,
                               "keyframes": 6, "clips": 5, "clip_frames": summary["bird"]["clip_frames"]}
    assert json.loads((config.out / "summary.json").read_text()) == summary
    records = read_manifest(config.out / "manifest.jsonl")
    clip_frames = 0
    for name in CLIPS:
        record = records["bird", name]
        if name not in RELEVANT:
            assert record["state"] == "rejected" and record["reason"].startswith("thumbnail score 0.2")
            continue
        assert record["state"] == "done" and record["thumbnail_score"] == 1.0
        # Expected key-frames from a full decode: the best 2 over the threshold, in time order.
        times, keys, frames = full_decode(videos / f"{name}.mp4")
        scores = brightness_scorer(np.stack([frames[k] for k in keys]))[:, 0]
        best = sorted(sorted(((k, float(s)) for k, s in zip(keys, scores, strict=True) if s > 0.5),
                             key=lambda ks: -ks[1])[:2])
        assert [tuple(k) for k in record["keyframes"]] == best
        assert record["keyframes_total"] == len(keys)
        kept = [k for k, _ in best]
        windows = merge_windows(kept, 0.5)
        frames = full_decode(videos / f"{name}.mp4", keep=lambda t, w=windows: any(s <= t <= e for s, e in w))[2]
        in_windows = [t for start, end in windows for t in times if start <= t <= end]
        assert in_windows == [t for t in times if any(abs(t - k) <= 0.5 for k in kept)]
        assert [c["path"] for c in record["clips"]] == [f"clips/bird/{name}_{i}.mp4" for i in range(len(windows))]
        for clip, (start, end) in zip(record["clips"], windows, strict=True):
            expected = [frames[t] for t in times if start <= t <= end]
            decoded = decode_all(config.out / clip["path"])
            assert clip["frames"] == len(decoded) == len(expected)
            assert min(psnr(a, b[: a.shape[0], : a.shape[1]]) for a, b in zip(decoded, expected, strict=True)) > 30
            clip_frames += clip["frames"]
    assert records["bird", "bikes"]["keyframes"] == [[0.0, pytest.approx(0.79, abs=0.01)],
                                                    [7.48, pytest.approx(0.62, abs=0.01)]]
    assert summary["bird"]["clip_frames"] == clip_frames
    assert not list((config.out / "downloads").rglob("*.mp4"))  # downloads are deleted once cut


def black_video(path: Path) -> Path:
    """24 black frames, GOP 12: key-frames exist but none scores above any threshold."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 12
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 12)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_crawl_rejects_bad_videos_with_reasons_and_goes_on(shared_data: Path, tmp_path: Path) -> None:
    bikes = (shared_data / "videos" / "bikes.mp4").read_bytes()
    with LoopbackServer() as server:
        good = serve_clips(server, shared_data / "videos", ("realshort",))
        server.add("/t/bright.jpg", BRIGHT, "image/jpeg")
        bodies = {"truncated": bikes[: len(bikes) // 2], "text": b"<html>no video here</html>\n" * 50,
                  "black": black_video(tmp_path / "black.mp4").read_bytes(), "stall": bikes}
        pages = []
        for name, body in bodies.items():
            server.add(f"/v/{name}.mp4", body, "video/mp4")
            pages.append(server.add_video_page(f"/p/{name}.html", name, f"/v/{name}.mp4", "/t/bright.jpg"))
        server.stalled.add("/v/stall.mp4")
        pages += [server.url("/p/missing.html"), *good]
        config = small_config(tmp_path / "out", write_pages(tmp_path / "pages.json", {"bird": pages}))
        start = time.monotonic()
        summary = crawl(config, load_brightness_scorer, CLASSES)
        elapsed = time.monotonic() - start
    assert elapsed < 20  # the stalled download times out after 1 s
    records = read_manifest(config.out / "manifest.jsonl")
    reasons = {video_id: r.get("reason") for (_, video_id), r in records.items()}
    assert records["bird", "realshort"]["state"] == "done"
    assert "not a readable video" in reasons["truncated"] and "truncated.mp4" in reasons["truncated"]
    assert "not a readable video" in reasons["text"]
    assert reasons["black"] == "no key-frame scores above 0.5"
    assert records["bird", "black"]["keyframes_total"] == 2
    assert "timed out" in reasons["stall"]
    assert reasons["missing"].startswith("page:") and "404" in reasons["missing"]
    assert summary["bird"]["kept"] == 1 and summary["bird"]["rejected"] == 5
    assert not [p for p in config.out.rglob("*") if p.is_file() and p.suffix == ".mp4" and "clips" not in p.parts]


def test_youtube_search_offline_fails_fast_with_one_line(tmp_path: Path, monkeypatch) -> None:
    # A closed local port as the proxy: no request can leave this machine, and refusal is immediate.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, closed)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    config = CrawlConfig(classes=("bird",), out=tmp_path / "out", source="youtube", max_videos=5)
    start = time.monotonic()
    with pytest.raises(InputError) as error:
        crawl(config, load_brightness_scorer, CLASSES)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message and message.startswith("YouTube search for 'bird' failed")


def test_crawl_checks_its_input(tmp_path: Path) -> None:
    pages = write_pages(tmp_path / "pages.json", {"bird": []})
    with pytest.raises(InputError, match="no class cow"):
        crawl(small_config(tmp_path / "out", pages, classes=("cow",)), load_brightness_scorer, CLASSES)
    with pytest.raises(InputError, match=r"pages.json: no pages for class\(es\) plant"):
        crawl(small_config(tmp_path / "out", pages, classes=("plant",)), load_brightness_scorer, CLASSES)
    (tmp_path / "bad.json").write_text('["http://127.0.0.1/"]')
    with pytest.raises(InputError, match=r"bad\.json: must be a JSON object"):
        crawl(small_config(tmp_path / "out", tmp_path / "bad.json"), load_brightness_scorer, CLASSES)


def test_command_line_errors_are_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from wsvs.runtime.cli import main

    assert main(["crawl", "--classes", "bird", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == "wsvs crawl: error: --model is required (on the command line or in the config)\n"
    (tmp_path / "crawl.yaml").write_text("max_video: 3\n")
    assert main(["crawl", "--config", str(tmp_path / "crawl.yaml"), "--model", "m", "--out", "o"]) == 2
    assert "unknown key 'max_video'" in capsys.readouterr().err


def test_killed_crawl_resumes_to_the_same_result(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    names = ("realshort", "bikes", "carphone_pristine", "cockatoo")
    with LoopbackServer() as server:
        pages = write_pages(tmp_path / "pages.json", {"bird": serve_clips(server, shared_data / "videos", names)})
        crawl(small_config(tmp_path / "whole", pages, workers=1), load_brightness_scorer, CLASSES)
        server.requests.clear()

        # Die while cutting the second clip (the first of bikes, after realshort is done).
        cuts = []

        def dying_cut(*args, **kwargs):
            cuts.append(args)
            if len(cuts) == 2:
                raise KeyboardInterrupt
            return cut_clip(*args, **kwargs)

        monkeypatch.setattr(crawl_module, "cut_clip", dying_cut)
        config = small_config(tmp_path / "killed", pages, workers=1)
        with pytest.raises(KeyboardInterrupt):
            crawl(config, load_brightness_scorer, CLASSES)
        monkeypatch.setattr(crawl_module, "cut_clip", cut_clip)
        assert read_manifest(config.out / "manifest.jsonl")["bird", "bikes"]["state"] == "keyframes_selected"
        # What a hard kill leaves: a torn manifest line and a temporary file of an atomic write.
        with open(config.out / "manifest.jsonl", "a") as f:
            f.write('{"class": "bird", "id": "cock')
        (config.out / "clips" / "bird" / ".bikes_0.mp4.abc123.mp4").write_bytes(b"half")
        crawl(config, load_brightness_scorer, CLASSES)
    # No video was fetched twice: realshort and bikes were downloaded before the kill only.
    for name in names:
        assert server.requests.count(f"/v/{name}.mp4") == (0 if name == "carphone_pristine" else 1)
    assert manifest_without_times(config.out) == manifest_without_times(tmp_path / "whole")
    whole = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole" / "clips").rglob("*"))
    resumed = sorted(p.relative_to(config.out) for p in (config.out / "clips").rglob("*"))
    assert whole == resumed and len([p for p in whole if p.suffix == ".mp4"]) == 5
    for rel in whole:
        if rel.suffix == ".mp4":
            assert (config.out / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes()
    lines = (config.out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len(names)  # compacted: one line per video


@pytest.mark.model
def test_crawl_of_the_synthetic_world(request, tmp_path: Path) -> None:
    """With the encoder trained on the world: misleading videos are not downloaded, relevant ones kept."""
    try:
        world, encoder = request.getfixturevalue("world_dir"), request.getfixturevalue("encoder_dir")
    except pytest.FixtureLookupError:
        pytest.skip("the world_dir / encoder_dir fixtures are not defined")
    from wsvs.runtime.cli import main
    from wsvs.training.cam import FrameAttention

    attention = FrameAttention.load(encoder)
    web = world / "web"
    listing = json.loads((web / "listing.json").read_text())
    with LoopbackServer() as server:
        pages = serve_world_videos(server, web)
        config = CrawlConfig(classes=tuple(listing), out=tmp_path / "out", source="pages",
                             pages=write_pages(tmp_path / "pages.json", pages), window=1.0, timeout_s=5.0)
        summary = crawl(config, functools.partial(load_scorer, encoder, 1), attention.class_names)
    records = read_manifest(config.out / "manifest.jsonl")
    relevant = [(c, v["id"]) for c, videos in listing.items() for v in videos if v["relevant"]]
    misleading = [(c, v["id"]) for c, videos in listing.items() for v in videos if not v["relevant"]]
    assert misleading and all(f"/v/{i}.mp4" not in server.requests for _, i in misleading)
    kept = [key for key in relevant if records[key]["state"] == "done"]
    assert len(kept) >= 0.5 * len(relevant)
    for key in kept:
        for clip in records[key]["clips"]:
            assert (config.out / clip["path"]).is_file() and clip["frames"] > 0
    assert sum(row["kept"] for row in summary.values()) == len(kept)
    # The command line refuses a class the model does not know, on one line with exit status 2.
    assert main(["crawl", "--classes", "no_such_class", "--model", str(encoder), "--out", str(tmp_path / "x"),
                 "--source", "pages", "--pages", str(tmp_path / "pages.json")]) == 2
