"""The crawl (paper §4) end to end through yt-dlp against a loopback web server, and key-frame extraction."""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import socket
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from wsvs.runtime.errors import IncompleteError, InputError
from wsvs.runtime.keyframes import cut_clip, iter_keyframes, merge_windows, window_times
from wsvs.training import crawl as crawl_module
from wsvs.training.crawl import CrawlConfig, crawl, find_js_runtime, load_scorer, read_manifest
from wsvs.training.demo_world.loopback_site import BOT_CHECK_PAGE, LoopbackServer, Outage, serve_world_videos

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
    """Threshold 0.5 so that some key-frames of the real clips pass; short windows give several clips; no pacing."""
    values = dict(classes=("bird",), out=out, source="pages", pages=pages, threshold=0.5, max_keyframes=2,
                  window=0.5, workers=2, timeout_s=1.0, retries=0, score_max_side=4096, sleep_requests_s=0.0,
                  min_sleep_download_s=0.0, max_sleep_download_s=0.0)
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
                               "undecided": 0, "keyframes": 6, "clips": 5,
                               "clip_frames": summary["bird"]["clip_frames"]}
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
                  "black": black_video(tmp_path / "black.mp4").read_bytes()}
        pages = []
        for name, body in bodies.items():
            server.add(f"/v/{name}.mp4", body, "video/mp4")
            pages.append(server.add_video_page(f"/p/{name}.html", name, f"/v/{name}.mp4", "/t/bright.jpg"))
        pages += [server.url("/p/missing.html"), *good]
        config = small_config(tmp_path / "out", write_pages(tmp_path / "pages.json", {"bird": pages}))
        summary = crawl(config, load_brightness_scorer, CLASSES)
    records = read_manifest(config.out / "manifest.jsonl")
    reasons = {video_id: r.get("reason") for (_, video_id), r in records.items()}
    assert records["bird", "realshort"]["state"] == "done"
    assert "not a readable video" in reasons["truncated"] and "truncated.mp4" in reasons["truncated"]
    assert "not a readable video" in reasons["text"]
    assert reasons["black"] == "no key-frame scores above 0.5"
    assert records["bird", "black"]["keyframes_total"] == 2
    assert reasons["missing"].startswith("page:") and "404" in reasons["missing"]
    assert summary["bird"]["kept"] == 1 and summary["bird"]["rejected"] == 4
    assert not [p for p in config.out.rglob("*") if p.is_file() and p.suffix == ".mp4" and "clips" not in p.parts]


# ---------------------------------------------------------------- the crawl against a site that blocks or fails

RATE_LIMIT = Outage(429, b"", (("Retry-After", "1"),))


def crawl_incomplete(config: CrawlConfig) -> str:
    """Run a crawl that must stop early; its one-line message."""
    with pytest.raises(IncompleteError) as stopped:
        crawl(config, load_brightness_scorer, CLASSES)
    message = str(stopped.value)
    assert "\n" not in message
    return message


def network_rejections(out: Path) -> dict[str, str]:
    """Videos rejected for any reason but the paper's criteria (here: the dark thumbnails' scores)."""
    return {video_id: r["reason"] for (_, video_id), r in read_manifest(out / "manifest.jsonl").items()
            if r["state"] == "rejected" and not r["reason"].startswith("thumbnail score")}


def test_a_rate_limit_and_a_bot_check_lose_nothing(shared_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """429s, then a bot-check page, then recovery: the crawl backs off, stops (exit 3 on the command line),
    rejects nothing for it, and the reruns end with the unblocked crawl's decisions, key-frames and clips."""
    from types import SimpleNamespace

    from wsvs.runtime.cli import main
    from wsvs.training.cam import FrameAttention

    with LoopbackServer() as server:
        pages = write_pages(tmp_path / "pages.json", {"bird": serve_clips(server, shared_data / "videos", CLIPS)})
        whole = crawl(small_config(tmp_path / "whole", pages), load_brightness_scorer, CLASSES)
        config = small_config(tmp_path / "blocked", pages, retries=1)

        # 429 after 8 requests (the listing takes 5): one retry after Retry-After's 1 s, then the crawl stops.
        server.requests.clear()
        server.fail_after(8, RATE_LIMIT)
        start = time.monotonic()
        message = crawl_incomplete(config)
        assert time.monotonic() - start >= 1.0
        assert message.startswith("stopped at class 'bird': blocked by the site") and "429" in message
        blocked_requests = len(server.requests) - 8
        assert 2 <= blocked_requests <= 6  # the first refusal, its retry, and the other worker's: then it stops
        assert network_rejections(config.out) == {}
        assert read_manifest(config.out / "manifest.jsonl")  # the work done before the block is kept

        # A bot-check page in place of everything, through the command line: exit 3, one line, the resume command.
        server.fail_after(0, Outage(200, BOT_CHECK_PAGE))
        # One worker: the videos are processed in this process, which sees the stand-in model.
        monkeypatch.setattr(FrameAttention, "load", lambda *args: SimpleNamespace(scores=brightness_scorer,
                                                                                  class_names=CLASSES))
        settings = tmp_path / "crawl.yaml"
        settings.write_text("threshold: 0.5\nmax_keyframes: 2\nwindow: 0.5\nworkers: 1\ntimeout_s: 1.0\n"
                            "retries: 0\nscore_max_side: 4096\nmin_sleep_download_s: 0\nmax_sleep_download_s: 0\n")
        argv = ["crawl", "--classes", "bird", "--model", "encoder", "--out", str(config.out), "--source", "pages",
                "--pages", str(pages), "--sleep-requests", "0", "--config", str(settings)]
        capsys.readouterr()
        assert main(argv) == 3
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith("wsvs crawl: incomplete: stopped at class 'bird': blocked") and "not a bot" in error
        assert error.endswith("finished work is kept, resume with: wsvs " + " ".join(argv))
        assert network_rejections(config.out) == {}

        server.recover()
        assert main(argv) == 0
    assert json.loads((config.out / "summary.json").read_text()) == whole
    assert manifest_without_times(config.out) == manifest_without_times(tmp_path / "whole")
    for clip in (tmp_path / "whole" / "clips").rglob("*.mp4"):
        assert (config.out / clip.relative_to(tmp_path / "whole")).read_bytes() == clip.read_bytes()


def test_server_errors_and_timeouts_leave_videos_undecided(shared_data: Path, tmp_path: Path) -> None:
    with LoopbackServer() as server:
        pages = write_pages(tmp_path / "pages.json", {"bird": serve_clips(server, shared_data / "videos", CLIPS)})
        whole = crawl(small_config(tmp_path / "whole", pages), load_brightness_scorer, CLASSES)
        config = small_config(tmp_path / "flaky", pages)

        server.fail_after(8, Outage(503))
        message = crawl_incomplete(config)
        assert message.startswith("network errors; ") and "503" in message
        assert network_rejections(config.out) == {}
        summary = json.loads((config.out / "summary.json").read_text())["bird"]
        assert summary["undecided"] >= 1 and summary["undecided"] + summary["kept"] + summary["rejected"] == 5

        server.recover()
        server.stalled.add("/v/bikes.mp4")  # headers, then nothing: the download times out after 1 s
        message = crawl_incomplete(config)
        assert "bikes: download: " in message and "timed out" in message
        assert read_manifest(config.out / "manifest.jsonl")["bird", "bikes"]["state"] == "thumbnail_passed"

        server.stalled.clear()
        assert crawl(config, load_brightness_scorer, CLASSES) == whole
    assert manifest_without_times(config.out) == manifest_without_times(tmp_path / "whole")


def test_request_budget_stops_cleanly_and_resumes_without_repeating(shared_data: Path, tmp_path: Path) -> None:
    with LoopbackServer() as server:
        pages = write_pages(tmp_path / "pages.json", {"bird": serve_clips(server, shared_data / "videos", CLIPS)})
        crawl(small_config(tmp_path / "whole", pages, workers=1), load_brightness_scorer, CLASSES)
        requests_whole = len(server.requests)
        server.requests.clear()
        config = small_config(tmp_path / "budget", pages, workers=1, max_requests=8)
        message = crawl_incomplete(config)
        assert "request budget (max_requests 8) is spent" in message
        spent = len(server.requests)
        assert 8 <= spent <= 8 + 1  # checked before each step; a download step is 2 requests (page, video)
        crawl(small_config(tmp_path / "budget", pages, workers=1), load_brightness_scorer, CLASSES)
    assert len(server.requests) == requests_whole  # the rerun fetched nothing the first run had
    assert manifest_without_times(config.out) == manifest_without_times(tmp_path / "whole")


def test_requests_are_paced_and_go_through_the_proxy_with_the_cookies(shared_data: Path, tmp_path: Path) -> None:
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\nvideos.example\tFALSE\t/\tFALSE\t0\tsession\tabc123\n")
    with LoopbackServer() as server:
        serve_clips(server, shared_data / "videos", CLIPS)
        # Pages on a host only the proxy (the loopback server) serves: nothing is resolved or fetched directly.
        pages = write_pages(tmp_path / "pages.json", {"bird": [f"http://videos.example/p/{n}.html" for n in CLIPS]})
        config = small_config(tmp_path / "out", pages, sleep_requests_s=0.25, min_sleep_download_s=2.0,
                              max_sleep_download_s=2.0, proxy=server.url(""), cookies=cookies)
        summary = crawl(config, load_brightness_scorer, CLASSES)
    assert summary["bird"]["kept"] == 3 and len(server.requests) == 16
    # Two worker processes, one pace: requests start at least 0.25 s apart (the server sees them a connection set-up
    # later: 0.05 s of slack). Unpaced, the 16 requests span about 2 s. (The spacing of downloads is checked at the
    # gate, below: the server sees a download a worker process's first yt-dlp extraction after its turn, ~0.4 s.)
    assert server.times[-1] - server.times[0] >= 0.25 * 15 - 0.05
    videos = [path for path in server.requests if path.startswith("/v/")]
    assert len(videos) == 3
    assert server.cookies == ["session=abc123"] * 16  # yt-dlp's requests and the thumbnails'
    cookies.write_text("not a cookies file\n")
    with pytest.raises(InputError, match=r"cookies\.txt: not a readable Netscape cookies file"):
        crawl(config, load_brightness_scorer, CLASSES)


def take_turns(config: CrawlConfig, run_id: str, turns: int) -> list[float]:
    """In a worker process: wait for ``turns`` download turns, each followed by a request turn; when each began."""
    network = crawl_module._Network(config, None, run_id)
    began = []
    for _ in range(turns):
        network.wait_download_turn()
        began.append(time.time())
        network._wait_turn()
    return began


def test_worker_processes_share_the_machines_pace_and_budget(tmp_path: Path) -> None:
    """Three processes of one run take download turns 0.5 s apart all together, and count their requests together;
    another run starts afresh."""
    config = small_config(tmp_path / "out", tmp_path / "pages.json", min_sleep_download_s=0.5,
                          max_sleep_download_s=0.5)
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        began = sorted(t for turns in pool.map(take_turns, [config] * 3, ["run"] * 3, [2] * 3) for t in turns)
    # The first turn is taken at once; each next one is reserved 0.5 s after the one before (a process's wake-up
    # after its reservation: 0.02 s of slack). Paced in each process alone, the six would span about 0.5 s.
    assert began[-1] - began[0] >= 0.5 * 5 - 0.02
    assert crawl_module._Network(config, None, "run").requests() == 6
    assert crawl_module._Network(config, None, "next run").requests() == 0


@pytest.mark.parametrize(("message", "kind"), [
    # yt-dlp's YouTube extractor, relaying YouTube's playability status to a guest it takes for a bot
    ("download: [youtube] dQw4w9WgXcQ: Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or "
     "--cookies for the authentication.", crawl_module.BlockedError),
    ("download: unable to download video data: HTTP Error 429: Too Many Requests", crawl_module.BlockedError),
    ("download: [download] Got error: HTTP Error 503: Service Unavailable", crawl_module.TransientError),
    ("download: [download] Got error: HTTPConnectionPool(host='x', port=1): Read timed out.",
     crawl_module.TransientError),
    ("download: [generic] x: Unable to download webpage: HTTP Error 404: Not Found", crawl_module.RejectionError),
    ("download: [youtube] x: Video unavailable. This video is private", crawl_module.RejectionError),
])
def test_yt_dlp_messages_are_classified(tmp_path: Path, message: str, kind: type) -> None:
    """yt-dlp reports some failures only as text (its downloader keeps no exception once it gives up)."""
    network = crawl_module._Network(small_config(tmp_path, tmp_path / "pages.json"), None, "run")
    failure = crawl_module._ytdlp_failure("download", Exception(message.removeprefix("download: ")), network)
    assert type(failure) is kind and str(failure) == message


def test_youtube_needs_a_recent_deno(tmp_path: Path) -> None:
    deno = find_js_runtime(None)  # the `deno` package of the crawl extra
    network = crawl_module._Network(CrawlConfig(out=tmp_path), deno, "run")
    with network.ytdlp(crawl_module._YtdlpLog()) as ydl:
        runtime = ydl._js_runtimes["deno"].info  # what yt-dlp's YouTube extractor runs its challenges with
    assert runtime.path == str(deno) and runtime.supported and runtime.version_tuple >= (2, 3)
    old = tmp_path / "deno"
    old.write_text("#!/bin/sh\necho 'deno 1.46.3 (stable, release, x86_64-unknown-linux-gnu)'\n")
    old.chmod(0o755)
    with pytest.raises(InputError, match=r"deno: yt-dlp needs Deno 2\.3 or newer, this is deno 1\.46\.3"):
        find_js_runtime(old)
    config = CrawlConfig(classes=("bird",), out=tmp_path / "out", js_runtime=tmp_path / "missing")
    with pytest.raises(InputError, match=r"missing: not a working Deno executable; install the crawl extra"):
        crawl(config, load_brightness_scorer, CLASSES)
    assert not (tmp_path / "out").exists()  # checked before anything is written or requested


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
def test_crawl_of_the_synthetic_world(world_dir: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """With the encoder trained on the world: misleading videos are not downloaded, relevant ones kept."""
    world, encoder = world_dir, encoder_dir
    from wsvs.runtime.cli import main
    from wsvs.training.cam import FrameAttention

    attention = FrameAttention.load(encoder)
    web = world / "web"
    listing = json.loads((web / "listing.json").read_text())
    with LoopbackServer() as server:
        pages = serve_world_videos(server, web)
        config = CrawlConfig(classes=tuple(listing), out=tmp_path / "out", source="pages",
                             pages=write_pages(tmp_path / "pages.json", pages), window=1.0, timeout_s=5.0,
                             sleep_requests_s=0.0, min_sleep_download_s=0.0, max_sleep_download_s=0.0,
                             workers=1)  # in this process: no worker to start and load the encoder in
        summary = crawl(config, functools.partial(load_scorer, encoder, None), attention.class_names)
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
