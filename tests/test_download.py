"""Stage "download" against a local HTTP server that misbehaves on purpose, and local files."""

from __future__ import annotations

import gzip
import importlib.util
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest
from warc_factory import Capture, article, build_warc

from fineflow.config import CommonCrawlConfig, DownloadConfig
from storage.artifacts import verify
from tasks.download import (
    DownloadError,
    describe_sources,
    download_warc,
    fetch,
    list_common_crawl,
    resolve_common_crawl,
)

FAST = DownloadConfig(retries=2, backoff_s=0.01, timeout_s=5, chunk_bytes=4096)
CRAWL = "CC-MAIN-2024-10"


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    hits: defaultdict[str, list[str | None]]  # path -> Range header of each request


class _Handler(BaseHTTPRequestHandler):
    """Routes: /files/<p> (honours Range), /flaky/<p> (first response cut off mid-body),
    /norange/<p> (cut off once, then ignores Range), /drop/<p> (always cut off),
    /busy/<p> (503 once), anything else 404."""

    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.hits[self.path].append(self.headers.get("Range"))
        route, _, name = self.path.lstrip("/").partition("/")
        data = srv.files.get(name)
        first = len(srv.hits[self.path]) == 1
        if data is None or route not in {"files", "flaky", "norange", "drop", "busy"}:
            self.send_error(404)
        elif route == "busy" and first:
            self.send_error(503)
        elif route == "drop" or (route in {"flaky", "norange"} and first):
            self._send(200, data, cut=len(data) // 2)
        else:
            self._send_ranged(data, honour_range=route != "norange")

    def _send_ranged(self, data: bytes, honour_range: bool) -> None:
        rng = self.headers.get("Range")
        if not (rng and honour_range):
            return self._send(200, data)
        start = int(rng.removeprefix("bytes=").split("-")[0])
        if start >= len(data):
            return self.send_error(416)
        part = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206, data[start:], headers={"Content-Range": part})

    def _send(self, code: int, body: bytes, cut: int | None = None, headers=None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()  # HTTP/1.0: the connection closes when the handler returns


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.hits = {}, defaultdict(list)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server, route: str, name: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{route}/{name}"


@pytest.fixture
def warc_bytes(tmp_path: Path) -> bytes:
    caps = [Capture(f"https://s{i}.example/{i}", article(i).encode()) for i in range(6)]
    path = tmp_path / "src" / "CC-MAIN-x-00000.warc.gz"
    path.parent.mkdir()
    build_warc(path, caps)
    return path.read_bytes()


def test_plain_http_download_task(tmp_path: Path, server: _Server, warc_bytes: bytes) -> None:
    server.files["a.warc.gz"] = warc_bytes
    [source] = describe_sources([_url(server, "files", "a.warc.gz")])
    assert source.content_sha256 is None and source.name == "a.warc.gz"

    m = download_warc.fn(str(tmp_path / "data"), source, FAST)

    assert m.warc == "a.warc.gz" and m.stage == "download"
    assert m.path(tmp_path / "data", "a.warc.gz").read_bytes() == warc_bytes
    assert m.counts == {"bytes": len(warc_bytes), "members": 13, "corrupt_members": 0}
    assert verify(tmp_path / "data", m) is None
    assert [f.path for f in m.files] == ["a.warc.gz"]  # no .part left behind


@pytest.mark.parametrize("route", ["flaky", "norange", "busy"])
def test_interrupted_download_completes(
    tmp_path: Path, server: _Server, warc_bytes: bytes, route: str
) -> None:
    server.files["a.warc.gz"] = warc_bytes
    url = _url(server, route, "a.warc.gz")

    out = tmp_path / "out"
    out.mkdir()
    report = fetch(url, out / "a.warc.gz", FAST)

    assert (out / "a.warc.gz").read_bytes() == warc_bytes
    assert report.members == 13 and not report.truncated
    ranges = server.hits[f"/{route}/a.warc.gz"]
    assert len(ranges) == 2
    if route != "busy":  # the second request resumes where the first stopped
        assert ranges[1] == f"bytes={len(warc_bytes) // 2}-"
    assert list(out.iterdir()) == [out / "a.warc.gz"]  # no .part left behind


def test_404_fails_fast_naming_the_url(tmp_path: Path, server: _Server) -> None:
    url = _url(server, "files", "nope.warc.gz")
    with pytest.raises(DownloadError, match=f"{url}.*404"):
        fetch(url, tmp_path / "nope.warc.gz", FAST)
    assert len(server.hits["/files/nope.warc.gz"]) == 1  # a 404 will not heal by retrying
    assert not list(tmp_path.iterdir())


def test_connection_always_dropped_fails_after_retries(
    tmp_path: Path, server: _Server, warc_bytes: bytes
) -> None:
    server.files["a.warc.gz"] = warc_bytes
    url = _url(server, "drop", "a.warc.gz")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match=f"{url}: failed after 3 attempts"):
        fetch(url, out / "a.warc.gz", FAST)
    assert len(server.hits["/drop/a.warc.gz"]) == 3
    assert not list(out.iterdir())


def test_server_with_truncated_file_fails(
    tmp_path: Path, server: _Server, warc_bytes: bytes
) -> None:
    """A body that matches its Content-Length but whose gzip ends mid-member."""
    server.files["cut.warc.gz"] = warc_bytes[:-30]
    url = _url(server, "files", "cut.warc.gz")
    with pytest.raises(DownloadError, match=f"{url}.*truncated"):
        fetch(url, tmp_path / "cut.warc.gz", FAST)
    assert len(server.hits["/files/cut.warc.gz"]) == 3


def test_local_path_and_file_uri(tmp_path: Path, warc_bytes: bytes) -> None:
    src = tmp_path / "src" / "CC-MAIN-x-00000.warc.gz"
    for uri in (str(src), src.as_uri()):
        [source] = describe_sources([uri])
        assert source.content_sha256 is not None and source.name == src.name
        root = tmp_path / "data"
        m = download_warc.fn(str(root), source, FAST)
        assert m.path(root, src.name).read_bytes() == warc_bytes
        assert verify(root, m) is None and m.counts["members"] == 13


def test_local_changes_change_the_key(tmp_path: Path, warc_bytes: bytes) -> None:
    src = tmp_path / "src" / "CC-MAIN-x-00000.warc.gz"
    before = download_warc.fn(str(tmp_path / "d"), describe_sources([str(src)])[0], FAST)
    build_warc(src, [Capture("https://other.example/", article(3).encode())])
    after = download_warc.fn(str(tmp_path / "d"), describe_sources([str(src)])[0], FAST)
    assert before.key != after.key and before.fingerprint != after.fingerprint


def test_local_truncated_or_missing_file_is_a_clear_error(tmp_path: Path, warc_bytes) -> None:
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(warc_bytes[:-30])
    with pytest.raises(DownloadError, match=r"cut\.warc\.gz.*truncated"):
        fetch(str(cut), tmp_path / "out.warc.gz", FAST)
    not_warc = tmp_path / "notes.warc.gz"
    not_warc.write_text("hello")
    with pytest.raises(DownloadError, match=r"notes\.warc\.gz.*not a WARC"):
        fetch(str(not_warc), tmp_path / "out.warc.gz", FAST)
    with pytest.raises(ValueError, match="missing.warc.gz: no such file"):
        describe_sources([str(tmp_path / "missing.warc.gz")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.warc.gz", "notes.warc.gz", "src"]


def test_source_names_are_unique_and_safe(tmp_path: Path) -> None:
    one, two = describe_sources(["https://x.example/1/a.warc.gz", "https://x.example/2/a.warc.gz"])
    assert one.name == "a.warc.gz" and two.name.startswith("a-") and two.name != one.name
    (s,) = describe_sources(["https://x.example/a%20b.warc.gz"])
    assert s.name.startswith("a_b-") and s.name.endswith(".warc.gz")  # tests/test_names.py


def test_fsspec_sources(tmp_path: Path, warc_bytes: bytes) -> None:
    with fsspec.open("memory://fineflow-test/m.warc.gz", "wb") as f:
        f.write(warc_bytes)
    fetch("memory://fineflow-test/m.warc.gz", tmp_path / "m.warc.gz", FAST)
    assert (tmp_path / "m.warc.gz").read_bytes() == warc_bytes
    with pytest.raises(DownloadError, match="memory://fineflow-test/none.warc.gz"):
        fetch("memory://fineflow-test/none.warc.gz", tmp_path / "n.warc.gz", FAST)
    with pytest.raises(DownloadError, match="nosuchproto://"):
        fetch("nosuchproto://bucket/x.warc.gz", tmp_path / "x.warc.gz", FAST)
    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(DownloadError, match="s3://commoncrawl/.*s3fs"):
            fetch("s3://commoncrawl/crawl-data/x.warc.gz", tmp_path / "x.warc.gz", FAST)


def test_resolve_common_crawl(tmp_path: Path, server: _Server) -> None:
    lines = [f"crawl-data/{CRAWL}/segments/1/warc/CC-MAIN-{i:05d}.warc.gz" for i in range(5)]
    server.files[f"crawl-data/{CRAWL}/warc.paths.gz"] = gzip.compress(
        ("\n".join(lines) + "\n").encode()
    )
    base = f"http://127.0.0.1:{server.server_address[1]}/files/"

    cfg = CommonCrawlConfig(crawl=CRAWL, num_warcs=2, offset=1, base_url=base)
    assert resolve_common_crawl(cfg, FAST) == [base + lines[1], base + lines[2]]
    assert list_common_crawl.fn(str(tmp_path), cfg) == [base + lines[1], base + lines[2]]
    assert resolve_common_crawl(cfg.model_copy(update={"base_url": base.rstrip("/")}), FAST)[0] == (
        base + lines[1]
    )

    with pytest.raises(ValueError, match=f"{CRAWL} lists only 5 WARCs"):
        resolve_common_crawl(cfg.model_copy(update={"num_warcs": 5}), FAST)
    with pytest.raises(DownloadError, match="CC-MAIN-2023-50.*404"):
        resolve_common_crawl(cfg.model_copy(update={"crawl": "CC-MAIN-2023-50"}), FAST)

    local = tmp_path / "mirror" / "crawl-data" / CRAWL
    local.mkdir(parents=True)
    (local / "warc.paths.gz").write_bytes(server.files[f"crawl-data/{CRAWL}/warc.paths.gz"])
    mirror = (tmp_path / "mirror").as_uri() + "/"
    from_disk = cfg.model_copy(update={"base_url": mirror, "offset": 4, "num_warcs": 1})
    assert resolve_common_crawl(from_disk, FAST) == [mirror + lines[4]]
