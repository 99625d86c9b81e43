"""A local HTTP server on 127.0.0.1 laid out like data.commoncrawl.org, with faults on demand.

    crawl-data/<crawl>/warc.paths.gz                       the list of WARC paths, gzipped
    crawl-data/<crawl>/segments/<seg>/warc/<name>          each WARC, Range requests honoured

`missing` names answer 404 (until removed from the set), `slow` names trickle out in
small pieces with pauses, `drop` names are cut off halfway on their first request.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SEGMENT = "1707947473347.0"


@dataclass
class Crawl:
    crawl: str
    warcs: list[Path]
    missing: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)
    drop: set[str] = field(default_factory=set)
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range, code

    def warc_path(self, name: str) -> str:
        return f"crawl-data/{self.crawl}/segments/{SEGMENT}/warc/{name}"

    def listing(self) -> bytes:
        return gzip.compress("".join(self.warc_path(p.name) + "\n" for p in self.warcs).encode())


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        crawl = self.server.crawl
        path = self.path.lstrip("/")
        rng = self.headers.get("Range")
        by_path = {crawl.warc_path(p.name): p for p in crawl.warcs}
        if path == f"crawl-data/{crawl.crawl}/warc.paths.gz":
            body, name = crawl.listing(), None
        elif path in by_path and by_path[path].name not in crawl.missing:
            body, name = by_path[path].read_bytes(), by_path[path].name
        else:
            crawl.requests.append((path, rng, 404))
            self.send_error(404, "Not Found")
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        code = 206 if start else 200
        crawl.requests.append((path, rng, code))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"v1"')
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        body = body[start:]
        if name in crawl.drop:
            crawl.drop.discard(name)  # only the first request is cut off
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        step = 16 * 1024 if name in crawl.slow else len(body) or 1
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if name in crawl.slow:
                time.sleep(0.05)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    crawl: Crawl


@contextmanager
def serve(crawl: Crawl) -> Iterator[str]:
    """The base URL (ending in '/') of a server for `crawl`, stopped on exit."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.crawl = crawl
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
