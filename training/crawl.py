"""`wsvs crawl`: collect weakly labelled videos from the web, filtered by thumbnails and key-frames (paper §4).

For each class name: search (yt-dlp: YouTube search, or given web pages resolved by yt-dlp's generic
extractor), score each result's thumbnail with the encoder and download only videos whose thumbnail scores
above the threshold, score the video's key-frames (decoded alone, not the whole video), keep the best few
above the threshold and cut the frames within +-window s of each into H.264 clips
``<out>/clips/<class>/<video>_<k>.mp4`` for the video segmentation stage.

Every step of every video is recorded in ``<out>/manifest.jsonl``; a rerun after a kill continues where
each video stopped. Search results are kept in ``<out>/listings/<class>.json``; downloads go to
``<out>/downloads/<class>/.partial/`` and are renamed when complete, then deleted once the clips are cut.
Videos are processed through ``wsvs.runtime.executor``: in this process, in local worker processes, or as Ray
tasks on a cluster whose workers share ``<out>``; each worker process loads the scorer once.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import itertools
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import cv2
import numpy as np
from tqdm import tqdm

from wsvs.runtime.errors import InputError
from wsvs.runtime.executor import ExecutorConfig, add_executor_arguments, executor_from_args, map_unordered
from wsvs.runtime.io import atomic_path, read_json, write_json
from wsvs.runtime.keyframes import cut_clip, iter_keyframes, merge_windows

# images (N, H, W, 3) uint8 RGB -> (N, C) class probabilities
Scorer = Callable[[np.ndarray], np.ndarray]

SOURCES = ("youtube", "pages")
KEYFRAME_BATCH = 8  # key-frames scored together (bounded memory for long videos)


@dataclass
class CrawlConfig:
    classes: tuple[str, ...] = ()
    model: Path | None = None  # encoder checkpoint folder (FrameAttention.load)
    out: Path | None = None
    source: str = "youtube"  # "youtube": yt-dlp search by class name; "pages": the URLs in `pages`
    pages: Path | None = None  # JSON {class: [page URL, ...]} for source "pages"
    max_videos: int = 300  # search results per class (paper: 300)
    max_keyframes: int = 15  # key-frames kept per video (paper: 15)
    threshold: float = 0.8  # class probability a thumbnail / key-frame must exceed (paper: 0.8)
    window: float = 2.0  # seconds kept on each side of a kept key-frame (paper: 2)
    workers: int = 4  # videos processed at once (network-bound): local processes or Ray tasks in flight
    score_max_side: int = 480  # images are shrunk to this longer side before scoring (speed)
    max_height: int = 480  # download the best format no taller than this
    max_filesize_mb: float = 200.0
    max_duration_s: float = 1200.0  # longer videos are not downloaded (when the site reports a duration)
    max_thumbnail_bytes: int = 2_000_000
    timeout_s: float = 20.0  # socket timeout of every request
    retries: int = 3  # per request, with exponential backoff


class RejectionError(Exception):
    """A video leaves the crawl; the message is the reason recorded in the manifest."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split()).removeprefix("ERROR: ")


def _backoff(n: int) -> float:  # n: retries so far (yt-dlp passes it by keyword)
    return min(2.0**n, 30.0)


def safe_id(raw: str) -> str:
    """A file-name-safe id (letters, digits, _ and -); never derived from titles."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")[:80]


class Manifest:
    """Each video's crawl state as JSON lines: one line per change, the last line of a video wins.

    Appends are single small writes followed by fsync, so a kill loses at most the line being
    written; opening drops such a torn line by rewriting the file atomically, as ``compact`` does.
    A worker process opens it with the ``records`` of its video instead: it appends, never reads or rewrites.
    """

    def __init__(self, path: Path, records: Sequence[dict[str, Any]] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        if records is not None:
            self.records = {(record["class"], record["id"]): record for record in records}
            return
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the torn last line of a killed crawl
                    continue
                self.records[record["class"], record["id"]] = record
        self.compact()

    def get(self, class_name: str, video_id: str) -> dict[str, Any] | None:
        return self.records.get((class_name, video_id))

    def put(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "updated": time.time()}
        line = json.dumps(record) + "\n"
        with self._lock:
            self.records[record["class"], record["id"]] = record
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return record

    def compact(self) -> None:
        """Rewrite the file with one line per video, sorted by class and id."""
        with self._lock:
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(self.records[key]) + "\n" for key in sorted(self.records)))


def read_manifest(path: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The last record of each video in a crawl manifest, keyed by (class, id)."""
    records = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        records[record["class"], record["id"]] = record
    return records


class _YtdlpLog:
    """Keeps yt-dlp's last message, so that a download it skips (size, duration) can say why."""

    def __init__(self) -> None:
        self.last = ""

    def debug(self, message: str) -> None:
        if not message.startswith("[debug]"):
            self.last = message

    info = warning = error = debug


def _ytdlp_options(config: CrawlConfig, log: _YtdlpLog) -> dict[str, Any]:
    return {
        "logger": log,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": True,
        "socket_timeout": config.timeout_s,
        "extractor_retries": config.retries,
    }


def _candidate(info: dict[str, Any], page: str) -> dict[str, Any]:
    """The listing entry of one search result: what is needed to judge and fetch it."""
    thumbnail = info.get("thumbnail") or (info.get("thumbnails") or [{}])[-1].get("url")
    return {
        "id": safe_id(str(info.get("id") or "")),
        "title": info.get("title"),
        "page": page,
        "thumbnail": urljoin(page, thumbnail) if thumbnail else None,
        "duration": info.get("duration"),
    }


def search_youtube(class_name: str, config: CrawlConfig) -> list[dict[str, Any]]:
    """``ytsearchN:<class name>`` listed flat (ids, titles, durations, thumbnails), nothing downloaded."""
    import yt_dlp

    log = _YtdlpLog()
    options = {**_ytdlp_options(config, log), "extract_flat": "in_playlist"}
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            result = ydl.extract_info(f"ytsearch{config.max_videos}:{class_name}", download=False)
    except yt_dlp.utils.DownloadError as exc:
        raise InputError(None, f"YouTube search for {class_name!r} failed (no network?): {_one_line(exc)}") from None
    entries = [entry for entry in (result or {}).get("entries") or [] if entry]
    return [_candidate(entry, entry.get("webpage_url") or entry["url"]) for entry in entries]


def resolve_page(page: str, config: CrawlConfig) -> dict[str, Any]:
    """A web page's video and thumbnail (og:video / og:image, <video poster>, ...) via yt-dlp, no download.

    A page that cannot be resolved gives an entry with a ``reason``, so that the crawl records and skips it.
    """
    import yt_dlp

    try:
        with yt_dlp.YoutubeDL(_ytdlp_options(config, _YtdlpLog())) as ydl:
            info = ydl.extract_info(page, download=False)
    except yt_dlp.utils.DownloadError as exc:
        stem = Path(urlparse(page).path).stem or urlparse(page).netloc
        return {"id": safe_id(stem), "title": None, "page": page, "reason": f"page: {_one_line(exc)}"}
    return _candidate(info, info.get("webpage_url") or page)


def _unique_ids(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeated pages; give distinct pages that share an id (or have none) a suffix from their URL."""
    seen_pages, seen_ids, unique = set(), set(), []
    for entry in entries:
        if entry["page"] in seen_pages:
            continue
        seen_pages.add(entry["page"])
        if not entry["id"] or entry["id"] in seen_ids:
            suffix = hashlib.sha1(entry["page"].encode()).hexdigest()[:8]
            entry = {**entry, "id": f"{entry['id']}_{suffix}".lstrip("_")}
        seen_ids.add(entry["id"])
        unique.append(entry)
    return unique


def list_videos(
    class_name: str, config: CrawlConfig, pages: list[str], pool: ThreadPoolExecutor
) -> list[dict[str, Any]]:
    """The class's candidate videos, from the saved listing when the same search was done before."""
    path = config.out / "listings" / f"{class_name}.json"
    query = {"source": config.source, "max_videos": config.max_videos, "pages": pages}
    if path.exists():
        saved = read_json(path)
        if saved.get("query") == query:
            return saved["videos"]
    if config.source == "youtube":
        videos = search_youtube(class_name, config)
    else:
        videos = list(pool.map(lambda page: resolve_page(page, config), pages[: config.max_videos]))
    videos = _unique_ids(videos)
    write_json(path, {"query": query, "videos": videos})
    return videos


def fetch_image(url: str, config: CrawlConfig) -> np.ndarray:
    """Download an image (bounded size, timeout, retries with backoff) as (H, W, 3) uint8 RGB."""
    if urlparse(url).scheme not in ("http", "https"):
        raise RejectionError(f"thumbnail: not an http(s) URL: {url}")
    for attempt in range(config.retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=config.timeout_s) as response:
                data = response.read(config.max_thumbnail_bytes + 1)
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == config.retries:
                raise RejectionError(f"thumbnail: HTTP {exc.code}") from None
        except (OSError, http.client.HTTPException) as exc:
            if attempt == config.retries:
                raise RejectionError(f"thumbnail: {_one_line(exc) or type(exc).__name__}") from None
        time.sleep(_backoff(attempt))
    if len(data) > config.max_thumbnail_bytes:
        raise RejectionError(f"thumbnail: larger than {config.max_thumbnail_bytes} bytes")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RejectionError("thumbnail: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def download_video(page: str, video_id: str, folder: Path, config: CrawlConfig) -> Path:
    """Download a page's video with yt-dlp (bounded height, size, duration) to ``folder/<id>.<ext>``.

    yt-dlp writes into ``folder/.partial``; the file is moved into place only once complete.
    """
    import yt_dlp

    partial = folder / ".partial"
    for stale in partial.glob(f"{video_id}.*"):  # ids hold no dots: this matches this video only
        stale.unlink()
    log = _YtdlpLog()
    options = {
        **_ytdlp_options(config, log),
        # Single-file formats only: merging separate audio/video streams would need ffmpeg.
        "format": f"best[height<=?{config.max_height}][ext=mp4]/best[height<=?{config.max_height}]",
        "outtmpl": str(partial / f"{video_id}.%(ext)s"),
        "max_filesize": int(config.max_filesize_mb * 1e6),
        "match_filter": yt_dlp.utils.match_filter_func(f"duration <=? {config.max_duration_s}"),
        "retries": config.retries,
        "fragment_retries": config.retries,
        "retry_sleep_functions": {"http": _backoff, "fragment": _backoff},
        "continuedl": False,
    }
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(page, download=True)
    except yt_dlp.utils.DownloadError as exc:
        raise RejectionError(f"download: {_one_line(exc)}") from None
    files = [Path(d["filepath"]) for d in (info or {}).get("requested_downloads") or [] if d.get("filepath")]
    if not files or not files[0].is_file():
        raise RejectionError(f"not downloaded: {_one_line(log.last)}")
    final = folder / f"{video_id}{files[0].suffix}"
    os.replace(files[0], final)
    return final


class _ClassScorer:
    """One class's probability for images, shrunk for speed; one call at a time (the model is shared)."""

    def __init__(self, scorer: Scorer, class_names: Sequence[str], max_side: int) -> None:
        self._scorer = scorer
        self._index = {name: i for i, name in enumerate(class_names)}
        self._max_side = max_side
        self._lock = threading.Lock()

    def __call__(self, images: list[np.ndarray], class_name: str) -> list[float]:
        height, width = images[0].shape[:2]
        scale = self._max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            images = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images]
        with self._lock:
            probabilities = self._scorer(np.stack(images))
        return [float(p) for p in probabilities[:, self._index[class_name]]]


def select_keyframes(video: Path, class_name: str, score: _ClassScorer, config: CrawlConfig) -> dict[str, Any]:
    """Score every key-frame; keep the best ``max_keyframes`` above the threshold, in time order."""
    scored: list[tuple[float, float]] = []
    keyframes = iter_keyframes(video)
    while batch := list(itertools.islice(keyframes, KEYFRAME_BATCH)):
        scored += zip([t for t, _ in batch], score([image for _, image in batch], class_name), strict=True)
    passing = sorted((s for s in scored if s[1] > config.threshold), key=lambda s: (-s[1], s[0]))
    kept = sorted(passing[: config.max_keyframes])
    return {"keyframes_total": len(scored), "keyframes": [list(s) for s in kept]}


def _process_video(
    class_name: str, entry: dict[str, Any], manifest: Manifest, score: _ClassScorer, config: CrawlConfig
) -> dict[str, Any]:
    """Advance one video through listed -> thumbnail_passed -> downloaded -> keyframes_selected -> done.

    Each step is saved before the next starts; a failing step records ``rejected`` with its reason.
    Returns the video's last record.
    """
    record = manifest.get(class_name, entry["id"]) or {"class": class_name, **entry, "state": "listed"}
    downloads = config.out / "downloads" / class_name
    try:
        if "reason" in entry:  # the page itself could not be resolved
            raise RejectionError(entry["reason"])
        if record["state"] == "listed":
            if (entry["duration"] or 0) > config.max_duration_s:
                raise RejectionError(f"longer than {config.max_duration_s} s")
            if not entry["thumbnail"]:
                raise RejectionError("no thumbnail")
            thumbnail_score = score([fetch_image(entry["thumbnail"], config)], class_name)[0]
            record = {**record, "thumbnail_score": thumbnail_score}
            if thumbnail_score <= config.threshold:
                raise RejectionError(f"thumbnail score {thumbnail_score:.3f} <= {config.threshold}")
            record = manifest.put({**record, "state": "thumbnail_passed"})
        if record["state"] == "thumbnail_passed":
            video = download_video(entry["page"], entry["id"], downloads, config)
            record = manifest.put({**record, "state": "downloaded", "video": video.name})
        video = downloads / record.get("video", "")
        if record["state"] == "downloaded":
            record = {**record, **select_keyframes(video, class_name, score, config)}
            if not record["keyframes"]:
                raise RejectionError(f"no key-frame scores above {config.threshold}")
            record = manifest.put({**record, "state": "keyframes_selected"})
        if record["state"] == "keyframes_selected":
            clips = []
            windows = merge_windows([t for t, _ in record["keyframes"]], config.window)
            for k, (start, end) in enumerate(windows):
                clip = Path("clips") / class_name / f"{entry['id']}_{k}.mp4"
                frames = cut_clip(video, start, end, config.out / clip)
                clips.append({"path": clip.as_posix(), "start": start, "end": end, "frames": frames})
            manifest.put({**record, "state": "done", "clips": clips})
            video.unlink(missing_ok=True)  # the clips are what is kept (disk space, paper §4)
    except (RejectionError, InputError) as exc:
        manifest.put({**record, "state": "rejected", "reason": _one_line(exc)})
        if record.get("video"):
            (downloads / record["video"]).unlink(missing_ok=True)
    return manifest.get(class_name, entry["id"])


def _class_scorer(load_scorer: Callable[[], Scorer], class_names: Sequence[str], max_side: int) -> _ClassScorer:
    return _ClassScorer(load_scorer(), class_names, max_side)


def _crawl_video(score: _ClassScorer, item: tuple[str, dict[str, Any], dict[str, Any] | None],
                 config: CrawlConfig) -> dict[str, Any]:
    """One video in a worker: from the record the crawl started it with, appending its steps to the manifest."""
    class_name, entry, record = item
    manifest = Manifest(config.out / "manifest.jsonl", [] if record is None else [record])
    return _process_video(class_name, entry, manifest, score, config)


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of atomic writes interrupted by a kill: dot-files in the folders the crawl writes."""
    stale = [*out.glob(".manifest.jsonl.*"), *out.glob(".summary.json.*")]
    for folder in ("clips", "listings"):
        stale += (out / folder).rglob(".*")
    for path in stale:
        if path.is_file():
            path.unlink()


def summarise(manifest: Manifest, listed: dict[str, int], threshold: float) -> dict[str, dict[str, Any]]:
    """Per class: videos listed / passed thumbnail / downloaded / kept, kept key-frames, clip frames."""
    summary = {}
    for class_name, count in listed.items():
        records = [r for (c, _), r in manifest.records.items() if c == class_name]
        done = [r for r in records if r["state"] == "done"]
        summary[class_name] = {
            "listed": count,
            "passed_thumbnail": sum(r.get("thumbnail_score", 0.0) > threshold for r in records),
            "downloaded": sum("video" in r for r in records),
            "kept": len(done),
            "rejected": sum(r["state"] == "rejected" for r in records),
            "keyframes": sum(len(r["keyframes"]) for r in done),
            "clips": sum(len(r["clips"]) for r in done),
            "clip_frames": sum(c["frames"] for r in done for c in r["clips"]),
        }
    return summary


def _read_pages(path: Path, classes: Sequence[str]) -> dict[str, list[str]]:
    pages = read_json(path)
    if not isinstance(pages, dict) or not all(
        isinstance(urls, list) and all(isinstance(u, str) for u in urls) for urls in pages.values()
    ):
        raise InputError(path, "must be a JSON object {class: [page URL, ...]}")
    missing = [c for c in classes if c not in pages]
    if missing:
        raise InputError(path, f"no pages for class(es) {', '.join(missing)}")
    return pages


def crawl(config: CrawlConfig, load_scorer: Callable[[], Scorer], class_names: Sequence[str],
          executor: ExecutorConfig | None = None) -> dict[str, dict[str, Any]]:
    """Run (or resume) the crawl of ``config.classes`` into ``config.out``; return the per-class summary.

    ``load_scorer`` (picklable) builds, once in each worker process, the scorer: it maps (N, H, W, 3) uint8 RGB
    images to (N, len(class_names)) class probabilities. ``executor``: where videos are processed (default:
    ``config.workers`` local processes; one: this process).
    """
    if config.source not in SOURCES:
        raise InputError(None, f"unknown source {config.source!r} (choose from {', '.join(SOURCES)})")
    if not config.classes:
        raise InputError(None, "no classes to crawl (--classes)")
    unknown = [c for c in config.classes if c not in class_names]
    if unknown:
        raise InputError(config.model, f"the model has no class {', '.join(unknown)} "
                                       f"(it knows {', '.join(class_names)})")
    if config.source == "pages" and config.pages is None:
        raise InputError(None, "source 'pages' needs a pages file (--pages)")
    pages = _read_pages(config.pages, config.classes) if config.source == "pages" else {}
    config.out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(config.out)
    manifest = Manifest(config.out / "manifest.jsonl")
    setup = functools.partial(_class_scorer, load_scorer, class_names, config.score_max_side)
    work = functools.partial(_crawl_video, config=config)
    listed: dict[str, int] = {}
    todo = []  # every class's videos in one batch: the workers load the scorer once, with no wait between classes
    with ThreadPoolExecutor(max(1, config.workers)) as pool:  # resolves web pages
        for class_name in config.classes:
            videos = list_videos(class_name, config, pages.get(class_name, []), pool)
            listed[class_name] = len(videos)
            todo += [(class_name, v, manifest.get(class_name, v["id"])) for v in videos
                     if (manifest.get(class_name, v["id"]) or {}).get("state") not in ("done", "rejected")]
    results = map_unordered(work, todo, executor or ExecutorConfig(workers=config.workers), setup)
    for record in tqdm(results, total=len(todo), desc="crawl", unit="video"):
        manifest.put(record)  # the worker appended it too; this process's view is what is summarised
    manifest.compact()
    summary = summarise(manifest, listed, config.threshold)
    write_json(config.out / "summary.json", summary)
    return summary


def load_scorer(model: Path, threads: int | None, device: str = "cpu") -> Scorer:
    """The encoder's class probabilities in a worker process, on ``device`` and ``threads`` CPU threads."""
    import torch

    from .cam import FrameAttention

    if threads is not None:  # None: this process's own setting
        torch.set_num_threads(threads)
    return FrameAttention.load(model, device).scores


def run(args: argparse.Namespace) -> int:
    from wsvs.runtime.config import load_config

    from .cam import FrameAttention

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    config = load_config(
        CrawlConfig, args.config, classes=classes, model=args.model, out=args.out, source=args.source,
        pages=args.pages, max_videos=args.max_videos, max_keyframes=args.max_keyframes,
        threshold=args.threshold, window=args.window, workers=args.workers,
    )
    for name in ("model", "out"):
        if getattr(config, name) is None:
            raise InputError(args.config, f"--{name} is required (on the command line or in the config)")
    class_names = FrameAttention.load(config.model).class_names
    executor = executor_from_args(args, config.workers)
    load = functools.partial(load_scorer, config.model, executor.threads_per_task(), executor.device())
    summary = crawl(config, load, class_names, executor)
    columns = ("listed", "passed_thumbnail", "downloaded", "kept", "keyframes", "clips", "clip_frames")
    print(f"{'class':<16}" + "".join(f"{c:>18}" for c in columns))
    for class_name, row in summary.items():
        print(f"{class_name:<16}" + "".join(f"{row[c]:>18}" for c in columns))
    print(f"clips in {config.out / 'clips'}; manifest {config.out / 'manifest.jsonl'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crawl", help="collect class videos from the web, filtered by thumbnails and key-frames (paper §4)",
        description="For each class: search videos (YouTube search by class name, or the web pages listed in "
        "--pages, resolved by yt-dlp), download a video only when the encoder scores its thumbnail above "
        "--threshold, score its key-frames (I-frames, decoded alone), keep the best --max-keyframes above the "
        "threshold and cut the frames within +-WINDOW s of each into H.264 clips "
        "<out>/clips/<class>/<video>_<k>.mp4, the input of segment-videos. Progress is kept in "
        "<out>/manifest.jsonl: rerun the same command to resume after an interruption.",
    )
    parser.add_argument("--classes", help="comma-separated class names, among the model's classes")
    parser.add_argument("--model", type=Path, help="encoder checkpoint folder (from train-encoder)")
    parser.add_argument("--out", type=Path, help="output folder (clips, manifest.jsonl, summary.json)")
    parser.add_argument("--source", choices=SOURCES, help="where to search (default youtube)")
    parser.add_argument("--pages", type=Path, help='JSON {"class": ["page URL", ...]} for --source pages')
    parser.add_argument("--max-videos", type=int, help="search results per class (default 300)")
    parser.add_argument("--max-keyframes", type=int, help="key-frames kept per video (default 15)")
    parser.add_argument("--threshold", type=float, help="class probability to pass a thumbnail or key-frame "
                        "(default 0.8: precision over recall)")
    parser.add_argument("--window", type=float, help="seconds kept on each side of a key-frame (default 2)")
    parser.add_argument("--workers", type=int,
                        help="videos processed at once: local processes or Ray tasks in flight (default 4)")
    add_executor_arguments(parser)
    parser.add_argument("--config", type=Path, help="YAML with CrawlConfig keys (command-line values win)")
    parser.set_defaults(func=run)
