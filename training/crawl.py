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

Only the paper's criteria (thumbnail and key-frame scores, duration, size, unreadable media) reject a video.
A network failure (a server error, a timeout) leaves it undecided, retried by the next run; a block (HTTP 429, a
"confirm you're not a bot" page) or a spent request budget stops the crawl after backing off, and the run ends
with ``IncompleteError`` (``wsvs crawl`` exits 3): rerun the same command to resume. Every request goes through
one gate that spaces them (``sleep_requests_s``) and counts them against ``max_requests``. A site limits an IP
address, so the gate is the machine's: its state is a file that every worker process of the crawl on this machine
locks in turn (on a Ray cluster, each node paces its own address).
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import fcntl
import functools
import hashlib
import http.client
import http.cookiejar
import importlib.util
import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlparse

import cv2
import numpy as np

from wsvs.runtime.errors import IncompleteError, InputError
from wsvs.runtime.executor import ExecutorConfig, add_executor_arguments, executor_from_args, map_unordered
from wsvs.runtime.io import atomic_path, read_json, write_json
from wsvs.runtime.keyframes import cut_clip, iter_keyframes, merge_windows
from wsvs.runtime.progress import progress_bar

# images (N, H, W, 3) uint8 RGB -> (N, C) class probabilities
Scorer = Callable[[np.ndarray], np.ndarray]

T = TypeVar("T")

SOURCES = ("youtube", "pages")
KEYFRAME_BATCH = 8  # key-frames scored together (bounded memory for long videos)
# YouTube's answer to a guest it takes for a bot, as yt-dlp reports it or as a page in place of the content.
BOT_CHECK = re.compile(r"confirm you.re not a bot", re.IGNORECASE)
# Network failures yt-dlp reports only as text (its downloader gives no exception object once it gives up).
TRANSIENT_TEXT = re.compile(r"timed out|Connection (?:refused|reset|aborted)|Failed to establish a new connection|"
                            r"Remote end closed|IncompleteRead", re.IGNORECASE)
DENO_MIN_VERSION = (2, 3)  # the oldest Deno yt-dlp runs YouTube's player JavaScript with
CRAWL_EXTRA_HINT = "install the crawl extra: pip install 'wsvs[crawl]'"
# CrawlConfig fields of how the crawl uses the network, not of what it keeps: a rerun with other values resumes.
NETWORK_SETTINGS = ("max_wait_s", "sleep_requests_s", "min_sleep_download_s", "max_sleep_download_s",
                    "max_requests", "cookies", "proxy", "js_runtime")


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
    retries: int = 3  # per request, after a wait: Retry-After when the site gives one, else exponential backoff
    max_wait_s: float = 300.0  # the longest wait before a retry (a longer Retry-After is cut to this)
    # Pacing, yt-dlp's maintainers' advice for YouTube (`yt-dlp -t sleep`): guests get about 300 videos an hour.
    sleep_requests_s: float = 0.75  # between two requests of the crawl (all workers of a machine together)
    min_sleep_download_s: float = 10.0  # between two downloads (all workers of a machine together), in [min, max]
    max_sleep_download_s: float = 20.0
    max_requests: int | None = None  # requests of one run (per machine); when spent the crawl stops (rerun to go on)
    cookies: Path | None = None  # Netscape cookies file for yt-dlp and thumbnails (an account risks a ban)
    proxy: str | None = None  # http://, https:// or socks5:// proxy for every request
    js_runtime: Path | None = None  # Deno for YouTube; default: the `deno` package's, else deno on PATH


class RejectionError(Exception):
    """A video leaves the crawl; the message is the reason recorded in the manifest."""


class TransientError(Exception):
    """A failure that says nothing about the video (server error, timeout): it stays undecided for the next run."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked to wait, if it did


class CrawlStopError(Exception):
    """The crawl cannot go on in this run (blocked, budget spent); the message is the cause."""


class BlockedError(CrawlStopError):
    """The site refuses the crawler (HTTP 429, a bot check): back off and retry, then stop the crawl."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _one_line(text: object) -> str:
    return " ".join(str(text).split()).removeprefix("ERROR: ")


def _backoff(n: int) -> float:  # n: retries so far
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
        self.records[record["class"], record["id"]] = record
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return record

    def compact(self) -> None:
        """Rewrite the file with one line per video, sorted by class and id."""
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


def find_js_runtime(path: Path | None) -> Path:
    """The Deno executable yt-dlp runs YouTube's player JavaScript with (its signature and n challenges):
    ``path``, else the `deno` package's, else deno on PATH; checked to run and to be recent enough, and
    yt-dlp's challenge solver scripts (yt-dlp-ejs) to be installed. One-line InputError otherwise."""
    if path is None:
        try:
            import deno

            path = Path(deno.find_deno_bin())
        except (ImportError, FileNotFoundError):
            found = shutil.which("deno")
            if found is None:
                raise InputError(None, f"YouTube needs the JavaScript runtime Deno, not found; {CRAWL_EXTRA_HINT} "
                                       "or give --js-runtime") from None
            path = Path(found)
    try:
        version = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60,
                                 check=True).stdout
    except (OSError, subprocess.SubprocessError):
        raise InputError(path, f"not a working Deno executable; {CRAWL_EXTRA_HINT}") from None
    found_version = re.match(r"deno (\d+)\.(\d+)", version)
    if found_version is None or tuple(map(int, found_version.groups())) < DENO_MIN_VERSION:
        raise InputError(path, f"yt-dlp needs Deno {'.'.join(map(str, DENO_MIN_VERSION))} or newer, this is "
                               f"{_one_line(version)[:40] or 'unknown'}; {CRAWL_EXTRA_HINT}")
    if importlib.util.find_spec("yt_dlp_ejs") is None:
        raise InputError(None, f"YouTube needs yt-dlp's challenge solver scripts (yt-dlp-ejs); {CRAWL_EXTRA_HINT}")
    return path


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _failure(message: str, status: int | None = None, retry_after: float | None = None,
             network_error: bool = False) -> Exception:
    """What a failed request means for the video: a block, a transient failure, or else a rejection."""
    if status == 429 or BOT_CHECK.search(message):
        return BlockedError(message, retry_after)
    if network_error or status == 408 or (status or 0) >= 500:
        return TransientError(message, retry_after)
    return RejectionError(message)


class _Pace:
    """The gate's state, shared by every worker process of one crawl run on this machine: when the next request
    and the next video download may start, the requests made, and why the crawl stopped (None while it goes on).

    A site limits an IP address, that is a machine: the state is a small JSON file in this machine's temporary
    folder, named after the crawl's output folder, read and written under an exclusive ``flock`` (which holds
    between threads, local processes and Ray tasks alike, each opening the file itself). A record of another
    run (another ``run_id``) is started afresh: the budget and a stop are one run's.
    """

    def __init__(self, out: Path, run_id: str) -> None:
        key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"wsvs-crawl-{key}.json"
        self.run_id = run_id

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The state, for this process alone until the block ends; what the block changes in it is saved."""
        with os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            try:
                state = json.loads(f.read())
            except json.JSONDecodeError:  # new, or torn by a kill
                state = {}
            if state.get("run") != self.run_id:
                state = {"run": self.run_id, "next_request": 0.0, "next_download": 0.0, "requests": 0, "stop": None}
            yield state
            f.seek(0)
            f.truncate()
            f.write(json.dumps(state))


class _Network:
    """Every request of the crawl, yt-dlp's included: at most one every ``sleep_requests_s`` and one video download
    every ``min..max_sleep_download_s`` (all workers of this machine together, as one yt-dlp with the maintainers'
    pacing would go), counted against ``max_requests``, through ``proxy``, with ``cookies``. Each worker process
    has its own, all of one run share their state (``_Pace``): a turn is reserved under its lock and waited for
    outside it.

    Once the crawl stops (``stop``), no step starts and no request is retried.
    """

    def __init__(self, config: CrawlConfig, js_runtime: Path | None, run_id: str) -> None:
        import yt_dlp

        self.config = config
        self._pace = _Pace(config.out, run_id)
        self._cookies = _read_cookies(config.cookies) if config.cookies is not None else None
        self._options = {
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "noplaylist": True,
            "socket_timeout": config.timeout_s,
            # Retried by _retrying, which honours Retry-After and holds every worker.
            "retries": 0,
            "fragment_retries": 0,
            "extractor_retries": 0,
            **({"proxy": config.proxy} if config.proxy else {}),
            **({"js_runtimes": {"deno": {"path": str(js_runtime)}}} if js_runtime is not None else {}),
        }
        network = self

        class GatedYoutubeDL(yt_dlp.YoutubeDL):
            def urlopen(self, req: Any) -> Any:  # every request yt-dlp makes: pages, APIs, media
                network._wait_turn()
                return super().urlopen(req)

        self._ytdlp_class = GatedYoutubeDL

    def ytdlp(self, log: _YtdlpLog, **options: Any) -> Any:
        """A yt-dlp downloader whose requests go through this gate."""
        # A fresh copy of the cookies for each: yt-dlp writes its cookie jar back when it closes.
        cookies = {"cookiefile": io.StringIO(self._cookies)} if self._cookies is not None else {}
        return self._ytdlp_class({**self._options, **cookies, "logger": log, **options})

    def _wait_turn(self) -> None:
        self._take_turn("next_request", self.config.sleep_requests_s, requests=1)

    def wait_download_turn(self) -> None:
        self._take_turn("next_download", random.uniform(self.config.min_sleep_download_s,
                                                        self.config.max_sleep_download_s))

    def _take_turn(self, turn: str, gap: float, requests: int = 0) -> None:
        """Reserve the next ``turn`` of the shared state under its lock (the one after it ``gap`` seconds later,
        ``requests`` counted), then wait for it outside the lock."""
        with self._pace.locked() as state:
            now = time.time()  # the processes' common clock
            start = max(now, state[turn])
            state[turn] = start + gap
            state["requests"] += requests
        time.sleep(start - now)

    def hold(self, seconds: float) -> None:
        """Start no request in the next ``seconds`` (a site that asks to wait asks every worker)."""
        with self._pace.locked() as state:
            state["next_request"] = max(state["next_request"], time.time() + seconds)

    def requests(self) -> int:
        """Requests of this run on this machine."""
        with self._pace.locked() as state:
            return state["requests"]

    def stop(self, cause: str) -> str:
        """Stop the crawl on this machine; the cause kept (the first one given)."""
        with self._pace.locked() as state:
            state["stop"] = state["stop"] or cause
            return state["stop"]

    def stopped(self) -> bool:
        with self._pace.locked() as state:
            return state["stop"] is not None

    def check_go_on(self) -> None:
        """Raise CrawlStopError when the crawl has stopped or the request budget is spent."""
        with self._pace.locked() as state:
            stop, requests = state["stop"], state["requests"]
        if stop is not None:
            raise CrawlStopError(stop)
        if self.config.max_requests is not None and requests >= self.config.max_requests:
            raise CrawlStopError(f"the request budget (max_requests {self.config.max_requests}) is spent")

    def shows_bot_check(self, url: str) -> bool:
        """Whether ``url`` is a bot-check page (yt-dlp's generic extractor says only "Unsupported URL")."""
        from yt_dlp.networking.exceptions import RequestError

        try:
            with self.ytdlp(_YtdlpLog()) as ydl, ydl.urlopen(url) as response:
                return bool(BOT_CHECK.search(response.read(1_000_000).decode("utf-8", "replace")))
        except (RequestError, OSError):  # the page does not answer either: no bot check seen
            return False


def _read_cookies(path: Path) -> str:
    from yt_dlp.cookies import YoutubeDLCookieJar

    try:
        text = path.read_text()
        YoutubeDLCookieJar().load(io.StringIO(text))
    except (OSError, UnicodeDecodeError, http.cookiejar.LoadError) as exc:
        raise InputError(path, f"not a readable Netscape cookies file ({_one_line(exc)})") from None
    return text


def _retrying(request: Callable[[], T], network: _Network) -> T:
    """``request()``, tried again ``retries`` times after a transient failure or a block: after the wait the server
    asked for (Retry-After, at most ``max_wait_s``), else an exponential backoff; every worker waits."""
    attempt = 0
    while True:
        try:
            return request()
        except (TransientError, BlockedError) as exc:
            if attempt >= network.config.retries or network.stopped():
                raise
            wait = _backoff(attempt) if exc.retry_after is None else exc.retry_after
            network.hold(min(wait, network.config.max_wait_s))
            attempt += 1


def _ytdlp_failure(step: str, exc: Exception, network: _Network, page: str | None = None) -> Exception:
    """Classify a yt-dlp DownloadError by its cause (an HTTP or transport error) or, where yt-dlp gives only text,
    its message; a page in which yt-dlp finds no video is looked at for a bot check."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError

    message = f"{step}: {_one_line(exc)}"
    cause = exc.exc_info[1] if getattr(exc, "exc_info", None) else None
    if isinstance(cause, HTTPError):
        return _failure(message, cause.status, _retry_after(cause.response.headers.get("Retry-After")))
    if page is not None and "Unsupported URL" in message and network.shows_bot_check(page):
        return BlockedError(f"{step}: a bot check ('Sign in to confirm you're not a bot') in place of {page}")
    status = re.search(r"HTTP Error (\d{3})", message)
    return _failure(message, int(status[1]) if status else None,
                    network_error=isinstance(cause, TransportError) or bool(TRANSIENT_TEXT.search(message)))


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


def search_youtube(class_name: str, network: _Network) -> list[dict[str, Any]]:
    """``ytsearchN:<class name>`` listed flat (ids, titles, durations, thumbnails), nothing downloaded."""
    import yt_dlp

    def request() -> dict[str, Any] | None:
        try:
            with network.ytdlp(_YtdlpLog(), extract_flat="in_playlist") as ydl:
                return ydl.extract_info(f"ytsearch{network.config.max_videos}:{class_name}", download=False)
        except yt_dlp.utils.DownloadError as exc:
            failure = _ytdlp_failure("search", exc, network)
            if isinstance(failure, BlockedError):
                raise failure from None
            raise InputError(None, f"YouTube search for {class_name!r} failed (no network?): "
                                   f"{_one_line(exc)}") from None

    entries = [entry for entry in (_retrying(request, network) or {}).get("entries") or [] if entry]
    return [_candidate(entry, entry.get("webpage_url") or entry["url"]) for entry in entries]


def resolve_page(page: str, network: _Network) -> dict[str, Any]:
    """A web page's video and thumbnail (og:video / og:image, <video poster>, ...) via yt-dlp, no download.

    A page that cannot be resolved gives an entry with a ``reason``, so that the crawl records and skips it.
    """
    import yt_dlp

    def request() -> dict[str, Any]:
        try:
            with network.ytdlp(_YtdlpLog()) as ydl:
                return ydl.extract_info(page, download=False)
        except yt_dlp.utils.DownloadError as exc:
            raise _ytdlp_failure("page", exc, network, page) from None

    try:
        info = _retrying(request, network)
    except RejectionError as exc:
        stem = Path(urlparse(page).path).stem or urlparse(page).netloc
        return {"id": safe_id(stem), "title": None, "page": page, "reason": str(exc)}
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
    class_name: str, config: CrawlConfig, pages: list[str], pool: ThreadPoolExecutor, network: _Network
) -> list[dict[str, Any]]:
    """The class's candidate videos, from the saved listing when the same search was done before.

    A listing that a network failure leaves incomplete stops the crawl (and is not saved): the rerun lists again.
    """
    path = config.out / "listings" / f"{class_name}.json"
    query = {"source": config.source, "max_videos": config.max_videos, "pages": pages}
    if path.exists():
        saved = read_json(path)
        if saved.get("query") == query:
            return saved["videos"]
    try:
        if config.source == "youtube":
            videos = search_youtube(class_name, network)
        else:
            videos = list(pool.map(lambda page: resolve_page(page, network), pages[: config.max_videos]))
    except TransientError as exc:
        raise CrawlStopError(f"listing failed: {_one_line(exc)}") from None
    videos = _unique_ids(videos)
    write_json(path, {"query": query, "videos": videos})
    return videos


def fetch_image(url: str, network: _Network) -> np.ndarray:
    """Download an image (bounded size, timeout, retries) as (H, W, 3) uint8 RGB."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError

    limit = network.config.max_thumbnail_bytes
    if urlparse(url).scheme not in ("http", "https"):
        raise RejectionError(f"thumbnail: not an http(s) URL: {url}")

    def request() -> np.ndarray:
        try:
            with network.ytdlp(_YtdlpLog()) as ydl, ydl.urlopen(url) as response:
                data = response.read(limit + 1)
        except HTTPError as exc:
            raise _failure(f"thumbnail: HTTP {exc.status}", exc.status,
                           _retry_after(exc.response.headers.get("Retry-After"))) from None
        except (TransportError, OSError, http.client.HTTPException) as exc:
            raise TransientError(f"thumbnail: {_one_line(exc) or type(exc).__name__}") from None
        if len(data) > limit:
            raise RejectionError(f"thumbnail: larger than {limit} bytes")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise _failure(f"thumbnail: not a readable image{_bot_check_note(data)}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    return _retrying(request, network)


def _bot_check_note(data: bytes) -> str:
    """A note naming the bot check when ``data`` (what came in place of an image or a video) is that page."""
    return " ('Sign in to confirm you're not a bot')" if BOT_CHECK.search(data.decode("utf-8", "replace")) else ""


def download_video(page: str, video_id: str, folder: Path, network: _Network) -> Path:
    """Download a page's video with yt-dlp (bounded height, size, duration) to ``folder/<id>.<ext>``.

    yt-dlp writes into ``folder/.partial``; the file is moved into place only once complete.
    """
    import yt_dlp

    config = network.config
    partial = folder / ".partial"
    log = _YtdlpLog()
    options = {
        # Single-file formats only: merging separate audio/video streams would need ffmpeg.
        "format": f"best[height<=?{config.max_height}][ext=mp4]/best[height<=?{config.max_height}]",
        "outtmpl": str(partial / f"{video_id}.%(ext)s"),
        "max_filesize": int(config.max_filesize_mb * 1e6),
        "match_filter": yt_dlp.utils.match_filter_func(f"duration <=? {config.max_duration_s}"),
        "continuedl": False,
    }

    def request() -> Path:
        for stale in partial.glob(f"{video_id}.*"):  # ids hold no dots: this matches this video only
            stale.unlink()
        network.wait_download_turn()
        try:
            with network.ytdlp(log, **options) as ydl:
                info = ydl.extract_info(page, download=True)
        except yt_dlp.utils.DownloadError as exc:
            raise _ytdlp_failure("download", exc, network, page) from None
        files = [Path(d["filepath"]) for d in (info or {}).get("requested_downloads") or [] if d.get("filepath")]
        if not files or not files[0].is_file():
            raise RejectionError(f"not downloaded: {_one_line(log.last)}")
        with open(files[0], "rb") as f:
            if note := _bot_check_note(f.read(1_000_000)):
                raise BlockedError(f"download: a web page, not a video{note}")
        return files[0]

    downloaded = _retrying(request, network)
    final = folder / f"{video_id}{downloaded.suffix}"
    os.replace(downloaded, final)
    return final


class _ClassScorer:
    """One class's probability for images, shrunk for speed."""

    def __init__(self, scorer: Scorer, class_names: Sequence[str], max_side: int) -> None:
        self._scorer = scorer
        self._index = {name: i for i, name in enumerate(class_names)}
        self._max_side = max_side

    def __call__(self, images: list[np.ndarray], class_name: str) -> list[float]:
        height, width = images[0].shape[:2]
        scale = self._max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            images = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images]
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
    class_name: str, entry: dict[str, Any], manifest: Manifest, score: _ClassScorer, config: CrawlConfig,
    network: _Network,
) -> str | None:
    """Advance one video through listed -> thumbnail_passed -> downloaded -> keyframes_selected -> done.

    Each step is saved before the next starts; a failing step records ``rejected`` with its reason. A transient
    network failure leaves the video at its step and is returned; a block or a spent budget raises CrawlStopError.
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
            network.check_go_on()
            thumbnail_score = score([fetch_image(entry["thumbnail"], network)], class_name)[0]
            record = {**record, "thumbnail_score": thumbnail_score}
            if thumbnail_score <= config.threshold:
                raise RejectionError(f"thumbnail score {thumbnail_score:.3f} <= {config.threshold}")
            record = manifest.put({**record, "state": "thumbnail_passed"})
        if record["state"] == "thumbnail_passed":
            network.check_go_on()
            video = download_video(entry["page"], entry["id"], downloads, network)
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
    except TransientError as exc:
        return f"{entry['id']}: {_one_line(exc)}"
    return None


def _stop_cause(class_name: str, exc: CrawlStopError) -> str:
    cause = "blocked by the site (wait until it lifts, or use --proxy): " if isinstance(exc, BlockedError) else ""
    return f"stopped at class {class_name!r}: {cause}{_one_line(exc)}"


@dataclass(frozen=True)
class _Outcome:
    """What a worker tells the crawl of one video, beyond the manifest lines it appended."""

    record: dict[str, Any] | None  # the video's last record (None: stopped before its first step)
    failure: str | None = None  # a transient network failure, "<video id>: <reason>": the video waits for a rerun
    stop: str | None = None  # why the crawl stops (blocked, budget spent)


def _worker(load_scorer: Callable[[], Scorer], class_names: Sequence[str], config: CrawlConfig,
            run_id: str) -> tuple[_ClassScorer, _Network]:
    """A worker process's scorer and its gate to the network (sharing this machine's pace of the run)."""
    network = _Network(config, _js_runtime(config), run_id)
    return _ClassScorer(load_scorer(), class_names, config.score_max_side), network


def _crawl_video(worker: tuple[_ClassScorer, _Network], item: tuple[str, dict[str, Any], dict[str, Any] | None],
                 config: CrawlConfig) -> _Outcome:
    """One video in a worker: from the record the crawl started it with, appending its steps to the manifest."""
    score, network = worker
    class_name, entry, record = item
    manifest = Manifest(config.out / "manifest.jsonl", [] if record is None else [record])
    try:
        failure = _process_video(class_name, entry, manifest, score, config, network)
    except CrawlStopError as exc:  # every worker on this machine stops at its next step; the crawl cancels the rest
        return _Outcome(manifest.get(class_name, entry["id"]), stop=network.stop(_stop_cause(class_name, exc)))
    return _Outcome(manifest.get(class_name, entry["id"]), failure)


def _js_runtime(config: CrawlConfig) -> Path | None:
    return find_js_runtime(config.js_runtime) if config.source == "youtube" else None


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of atomic writes interrupted by a kill: dot-files in the folders the crawl writes."""
    stale = [*out.glob(".manifest.jsonl.*"), *out.glob(".summary.json.*")]
    for folder in ("clips", "listings"):
        stale += (out / folder).rglob(".*")
    for path in stale:
        if path.is_file():
            path.unlink()


def summarise(manifest: Manifest, listed: dict[str, int], threshold: float) -> dict[str, dict[str, Any]]:
    """Per class: videos listed / passed thumbnail / downloaded / kept / rejected / undecided (left for a rerun),
    kept key-frames, clip frames."""
    summary = {}
    for class_name, count in listed.items():
        records = [r for (c, _), r in manifest.records.items() if c == class_name]
        done = [r for r in records if r["state"] == "done"]
        rejected = sum(r["state"] == "rejected" for r in records)
        summary[class_name] = {
            "listed": count,
            "passed_thumbnail": sum(r.get("thumbnail_score", 0.0) > threshold for r in records),
            "downloaded": sum("video" in r for r in records),
            "kept": len(done),
            "rejected": rejected,
            "undecided": count - len(done) - rejected,
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
    ``config.workers`` local processes; one: this process). A crawl that stops early (blocked, budget spent) or
    leaves videos undecided (network errors) saves its work and the summary, then raises IncompleteError: run it
    again to resume.
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
    if config.max_sleep_download_s < config.min_sleep_download_s:
        raise InputError(None, "max_sleep_download_s must be at least min_sleep_download_s")
    pages = _read_pages(config.pages, config.classes) if config.source == "pages" else {}
    run_id = uuid.uuid4().hex
    network = _Network(config, _js_runtime(config), run_id)
    config.out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(config.out)
    manifest = Manifest(config.out / "manifest.jsonl")
    listed: dict[str, int] = {}
    failures: list[str] = []  # transient failures of this run, "<video id>: <reason>"
    stop = None
    todo = []  # every class's videos in one batch: the workers load the scorer once, with no wait between classes
    try:
        with ThreadPoolExecutor(max(1, config.workers)) as pool:  # resolves web pages
            for class_name in config.classes:
                network.check_go_on()
                videos = list_videos(class_name, config, pages.get(class_name, []), pool, network)
                listed[class_name] = len(videos)
                todo += [(class_name, v, manifest.get(class_name, v["id"])) for v in videos
                         if (manifest.get(class_name, v["id"]) or {}).get("state") not in ("done", "rejected")]
    except CrawlStopError as exc:  # a block is on the address, not the class: the classes after it would meet it too
        stop = network.stop(_stop_cause(class_name, exc))
        todo = []
    setup = functools.partial(_worker, load_scorer, class_names, config, run_id)
    work = functools.partial(_crawl_video, config=config)
    # Closing the results on a stop, an error or Ctrl-C cancels the videos not started: the next run's.
    with (contextlib.closing(map_unordered(work, todo, executor or ExecutorConfig(workers=config.workers), setup))
          as results, progress_bar(results, total=len(todo), desc="crawl", unit="video") as progress):
        for outcome in progress:  # the bar's remaining time is the crawl's ETA, paced requests included
            if outcome.record is not None:
                manifest.put(outcome.record)  # the worker appended it too: a line lost on a shared filesystem is not
            if outcome.failure:
                failures.append(outcome.failure)
            if outcome.stop:
                stop = outcome.stop
                break
            progress.set_postfix(requests=network.requests(), refresh=False)
    manifest = Manifest(config.out / "manifest.jsonl")  # with the steps of workers whose outcome was not awaited
    summary = summarise(manifest, listed, config.threshold)
    write_json(config.out / "summary.json", summary)
    unfinished = [c for c in config.classes if c not in summary or summary[c]["undecided"]]
    if unfinished:
        undecided = sum(row["undecided"] for row in summary.values())
        raise IncompleteError(f"{stop or 'network errors'}; {undecided} listed video(s) undecided, class(es) "
                              f"{', '.join(unfinished)} unfinished" + (f" (last error: {failures[-1]})" if failures
                                                                        else ""))
    return summary


def load_scorer(model: Path, threads: int | None, device: str = "cpu") -> Scorer:
    """The encoder's class probabilities in a worker process, on ``device`` and ``threads`` CPU threads."""
    from .cam import FrameAttention

    return FrameAttention.load_in_worker(model, device, threads).scores


def run(args: argparse.Namespace) -> int:
    from wsvs.runtime.config import load_config

    from .cam import FrameAttention

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    config = load_config(
        CrawlConfig, args.config, classes=classes, model=args.model, out=args.out, source=args.source,
        pages=args.pages, max_videos=args.max_videos, max_keyframes=args.max_keyframes,
        threshold=args.threshold, window=args.window, workers=args.workers, sleep_requests_s=args.sleep_requests,
        max_requests=args.max_requests, cookies=args.cookies, proxy=args.proxy, js_runtime=args.js_runtime,
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
        "<out>/manifest.jsonl: rerun the same command to resume after an interruption. Videos are processed "
        "by --workers local processes (or Ray tasks with --executor ray). Requests are paced, all the workers of a "
        "machine together (a site limits an address); network errors leave a video for the next run, and a rate "
        "limit or a bot check (YouTube gives a guest about 300 videos an hour) stops the crawl after backing off: "
        "exit status 3 means incomplete, rerun the same command to resume.",
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
    parser.add_argument("--workers", type=int, help="videos processed at once (default 4): local processes, each "
                        "loading the model once, or Ray tasks in flight; all of them on one machine share its pace")
    add_executor_arguments(parser)
    parser.add_argument("--sleep-requests", type=float, help="seconds between two requests of all the machine's "
                        "workers together (default 0.75); the wait between two downloads is min/max_sleep_download_s "
                        "in --config (default 10-20)")
    parser.add_argument("--max-requests", type=int, help="request budget of this run (per machine on a Ray "
                        "cluster): stop when spent (resumable)")
    parser.add_argument("--cookies", type=Path, help="Netscape cookies file for yt-dlp and thumbnails "
                        "(an account's cookies risk a ban of the account)")
    parser.add_argument("--proxy", help="proxy URL for every request (http://, https://, socks5://)")
    parser.add_argument("--js-runtime", type=Path, help="Deno executable for YouTube (default: the deno package's, "
                        "else deno on PATH)")
    parser.add_argument("--config", type=Path, help="YAML with CrawlConfig keys (command-line values win)")
    parser.set_defaults(func=run)
