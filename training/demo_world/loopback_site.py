"""A small HTTP server on 127.0.0.1: serves the synthetic world's videos as web pages for the crawl (the demo
and the tests), with a request log and, for failure tests, routes that stall and outages (a rate limit, a bot
check, a server error) that start after a number of requests."""

from __future__ import annotations

import html
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

# How long a stalled route holds its connection at most (the server's close releases it sooner).
STALL_S = 30.0
# What YouTube shows a guest it takes for a bot (in place of the video, from the extractor or a page).
BOT_CHECK_PAGE = ("<!DOCTYPE html><html><head><title>YouTube</title></head><body><p>Sign in to confirm you\u2019re "
                  "not a bot</p><p>This helps protect our community.</p></body></html>\n").encode()


@dataclass(frozen=True)
class Outage:
    """The answer to every request once the outage has started: ``status`` with ``body`` and ``headers``."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class LoopbackServer:
    """Serve ``routes`` (path -> (body, content type)) on an ephemeral port of 127.0.0.1 in a thread.

    ``requests`` logs the path of every request in arrival order, ``times`` its arrival (time.monotonic()),
    ``cookies`` its Cookie header ("" without). As a
    proxy (absolute URLs in requests) it serves its routes for any host. A path in ``stalled`` gets its
    status line and headers, then nothing until the server closes, as a server that hangs mid-transfer.
    ``fail_after`` starts an outage after a number of requests, ``recover`` ends it. Use as a context manager.
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.stalled: set[str] = set()
        self.requests: list[str] = []
        self.times: list[float] = []
        self.cookies: list[str] = []
        self._outage: tuple[int, Outage] | None = None  # (requests served normally before it, the outage)
        self._log_lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server naming
                self._respond(with_body=True)

            def do_HEAD(self) -> None:
                self._respond(with_body=False)

            def _respond(self, with_body: bool) -> None:
                path = urlsplit(self.path).path
                with server._log_lock:
                    server.times.append(time.monotonic())
                    server.cookies.append(self.headers.get("Cookie", ""))
                    server.requests.append(path)
                outage = server._outage
                if outage is not None and len(server.requests) > outage[0]:
                    self._answer_outage(outage[1], with_body)
                    return
                if path not in server.routes:
                    self.send_error(404)
                    return
                body, content_type = server.routes[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.stalled:
                    self.wfile.flush()
                    server._closing.wait(STALL_S)
                    return
                if with_body:
                    self.wfile.write(body)

            def _answer_outage(self, outage: Outage, with_body: bool) -> None:
                self.send_response(outage.status)
                for name, value in (("Content-Type", "text/html; charset=utf-8"), *outage.headers):
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(outage.body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(outage.body)

            def log_message(self, format: str, *args: object) -> None:  # quiet: the log is `requests`
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except ConnectionError:  # a client that gives up (size limit, timeout) is expected here
                    pass

        return Handler

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def fail_after(self, requests: int, outage: Outage) -> None:
        """Serve the next ``requests`` requests normally, then answer every one with ``outage``."""
        self._outage = (len(self.requests) + requests, outage)

    def recover(self) -> None:
        self._outage = None

    def add(self, path: str, body: bytes | Path, content_type: str) -> str:
        """Serve ``body`` (bytes or a file's contents) at ``path``; return its URL."""
        self.routes[path] = (Path(body).read_bytes() if isinstance(body, Path) else body, content_type)
        return self.url(path)

    def add_video_page(self, path: str, title: str, video: str, image: str) -> str:
        """Serve a page whose Open Graph tags point at ``video`` and ``image`` (paths on this server)."""
        page = (
            f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title>\n"
            f'<meta property="og:title" content="{html.escape(title)}">\n'
            f'<meta property="og:video" content="{html.escape(video)}">\n'
            f'<meta property="og:image" content="{html.escape(image)}">\n'
            "</head><body></body></html>\n"
        )
        return self.add(path, page.encode(), "text/html; charset=utf-8")

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_world_videos(server: LoopbackServer, web: Path) -> dict[str, list[str]]:
    """Serve every video of a world's ``web/`` folder (``listing.json``) as a page with its video and thumbnail;
    return the page URLs per class, the input of ``wsvs crawl --source pages``."""
    listing = json.loads((web / "listing.json").read_text())
    pages: dict[str, list[str]] = {}
    for class_name, videos in listing.items():
        for v in videos:
            server.add(f"/v/{v['id']}.mp4", web / v["video"], "video/mp4")
            server.add(f"/t/{v['id']}.jpg", web / v["thumbnail"], "image/jpeg")
            pages.setdefault(class_name, []).append(server.add_video_page(
                f"/p/{v['id']}.html", v["title"], f"/v/{v['id']}.mp4", f"/t/{v['id']}.jpg"))
    return pages
