"""Stage "download" against a local HTTP server that misbehaves on purpose, and local files."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest

from fineflow.config import CommonCrawlConfig, DownloadConfig
from fineflow.errors import FineflowError
from fineflow.storage.artifacts import verify
from fineflow.tasks.download import (
    DownloadError,
    describe_sources,
    download_warc,
    fetch,
    list_common_crawl,
    resolve_common_crawl,
)
from tests.helpers.warc_factory import Capture, article, build_warc

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
    assert m.counts == {
        "bytes": len(warc_bytes),
        "total": 13,
        "kept": 13,
        "dropped_corrupt_member": 0,
        "dropped_truncated_tail": 0,
    }
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
    with pytest.raises(DownloadError, match=f"^HTTP 404 Not Found for {url}$") as info:
        fetch(url, tmp_path / "nope.warc.gz", FAST)
    assert info.value.stage == "download" and "check" in info.value.hint
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


def test_server_with_truncated_file_is_accepted(
    tmp_path: Path, server: _Server, warc_bytes: bytes
) -> None:
    """A body that matches its Content-Length but whose gzip ends mid-member is the
    server's own file: taken once, with its complete records, the half one counted."""
    server.files["cut.warc.gz"] = warc_bytes[:-30]
    url = _url(server, "files", "cut.warc.gz")
    [source] = describe_sources([url])
    m = download_warc.fn(str(tmp_path / "data"), source, FAST)
    assert m.counts["dropped_truncated_tail"] == 1 and m.counts["kept"] == 12
    assert m.path(tmp_path / "data", "cut.warc.gz").read_bytes() == warc_bytes[:-30]
    assert len(server.hits["/files/cut.warc.gz"]) == 1  # not fetched again and again


def test_a_short_read_of_a_truncated_file_is_still_resumed(
    tmp_path: Path, server: _Server, warc_bytes: bytes
) -> None:
    server.files["cut.warc.gz"] = warc_bytes[:-30]
    url = _url(server, "flaky", "cut.warc.gz")  # the first answer stops half way
    report = fetch(url, tmp_path / "cut.warc.gz", FAST)
    assert (tmp_path / "cut.warc.gz").read_bytes() == warc_bytes[:-30]
    assert report.truncated_tail == 1 and report.members == 12
    assert server.hits["/flaky/cut.warc.gz"] == [None, f"bytes={(len(warc_bytes) - 30) // 2}-"]


def test_no_complete_record_is_refused(tmp_path: Path, server: _Server, warc_bytes) -> None:
    """Cut inside its first record: nothing to keep, so the file is refused, once."""
    server.files["stub.warc.gz"] = warc_bytes[:80]
    url = _url(server, "files", "stub.warc.gz")
    with pytest.raises(DownloadError, match=f"^{url}: no complete WARC record") as info:
        fetch(url, tmp_path / "stub.warc.gz", FAST)
    assert info.value.hint and len(server.hits["/files/stub.warc.gz"]) == 1
    local = tmp_path / "stub.warc.gz"
    local.write_bytes(warc_bytes[:80])
    [source] = describe_sources([str(local)])
    with pytest.raises(DownloadError, match="stub.warc.gz: no complete WARC record") as info:
        download_warc.fn(str(tmp_path / "data"), source, FAST)
    assert (info.value.stage, info.value.warc) == ("download", "stub.warc.gz")


def test_local_path_and_file_uri(tmp_path: Path, warc_bytes: bytes) -> None:
    src = tmp_path / "src" / "CC-MAIN-x-00000.warc.gz"
    for uri in (str(src), src.as_uri()):
        [source] = describe_sources([uri])
        assert source.content_sha256 is not None and source.name == src.name
        root = tmp_path / "data"
        m = download_warc.fn(str(root), source, FAST)
        assert m.path(root, src.name).read_bytes() == warc_bytes
        assert verify(root, m) is None and m.counts["kept"] == 13


def test_local_changes_change_the_key(tmp_path: Path, warc_bytes: bytes) -> None:
    src = tmp_path / "src" / "CC-MAIN-x-00000.warc.gz"
    before = download_warc.fn(str(tmp_path / "d"), describe_sources([str(src)])[0], FAST)
    build_warc(src, [Capture("https://other.example/", article(3).encode())])
    after = download_warc.fn(str(tmp_path / "d"), describe_sources([str(src)])[0], FAST)
    assert before.key != after.key and before.fingerprint != after.fingerprint


def test_local_truncated_file_is_taken_and_others_are_clear_errors(
    tmp_path: Path, warc_bytes
) -> None:
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(warc_bytes[:-30])
    [source] = describe_sources([str(cut)])
    assert source.content_sha256 is not None
    m = download_warc.fn(str(tmp_path / "data"), source, FAST)
    assert (m.counts["kept"], m.counts["dropped_truncated_tail"]) == (12, 1)
    not_warc = tmp_path / "notes.warc.gz"
    not_warc.write_text("hello")
    with pytest.raises(
        DownloadError, match=r"notes\.warc\.gz: not a WARC file: it looks like text"
    ):
        fetch(str(not_warc), tmp_path / "out.warc.gz", FAST)
    with pytest.raises(ValueError, match="missing.warc.gz: no such file"):
        describe_sources([str(tmp_path / "missing.warc.gz")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.warc.gz",
        "data",
        "notes.warc.gz",
        "src",
    ]


def test_source_names_are_unique_and_safe(tmp_path: Path) -> None:
    one, two = describe_sources(["https://x.example/1/a.warc.gz", "https://x.example/2/a.warc.gz"])
    assert one.name == "a.warc.gz" and two.name.startswith("a-") and two.name != one.name
    (s,) = describe_sources(["https://x.example/a%20b.warc.gz"])
    assert s.name.startswith("a_b-") and s.name.endswith(".warc.gz")  # tests/storage/test_names.py


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


# --- cheap refusals and errors that name the URL --------------------------------------

HTML = b"<!DOCTYPE html><html><body>" + b"<p>secret session token</p>" * 40_000 + b"</body></html>"


def _full_part(dest: Path) -> Path:
    """Make the download's .part for `dest` a link to /dev/full: any byte written to it
    fails with ENOSPC, so a refusal that comes first proves nothing was written."""
    part = dest.with_name(f".{dest.name}.part")
    part.symlink_to("/dev/full")
    return part


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


def _refused_as_html(exc: DownloadError, where: str) -> None:
    assert exc.reason.startswith(f"{where}: not a WARC file: it looks like an HTML page")
    assert "(starts with 3c21444f43545950)" in exc.reason
    assert "secret" not in exc.reason + exc.hint and exc.stage == "download" and exc.hint


@needs_dev_full
def test_a_non_warc_is_refused_from_its_first_bytes(tmp_path: Path, server: _Server) -> None:
    """A 1 MB HTML page under a WARC's name: refused from its first bytes, before one
    byte is written (the .part is /dev/full) and before the local one is hashed."""
    page = tmp_path / "page.warc.gz"
    page.write_bytes(HTML)
    out = tmp_path / "out"
    out.mkdir()

    [source] = describe_sources([str(page)])  # never raises for one bad file
    assert source.content_sha256 is None
    with pytest.raises(DownloadError) as info:
        download_warc.fn(str(tmp_path / "data"), source, FAST)
    _refused_as_html(info.value, str(page))
    assert info.value.warc == "page.warc.gz"

    _full_part(out / "a.warc.gz")
    with pytest.raises(DownloadError) as info:
        fetch(str(page), out / "a.warc.gz", FAST)
    _refused_as_html(info.value, str(page))

    server.files["page.warc.gz"] = HTML
    url = _url(server, "files", "page.warc.gz")
    _full_part(out / "b.warc.gz")
    with pytest.raises(DownloadError) as info:
        fetch(url, out / "b.warc.gz", FAST)
    _refused_as_html(info.value, url)
    assert len(server.hits["/files/page.warc.gz"]) == 1  # not retried

    with fsspec.open("memory://fineflow-test/page.warc.gz", "wb") as f:
        f.write(HTML)
    _full_part(out / "c.warc.gz")
    with pytest.raises(DownloadError) as info:
        fetch("memory://fineflow-test/page.warc.gz", out / "c.warc.gz", FAST)
    _refused_as_html(info.value, "memory://fineflow-test/page.warc.gz")
    assert not list(out.iterdir())  # the .part links are gone too


@needs_dev_full
def test_a_full_disk_names_the_path_and_is_not_retried(
    tmp_path: Path, server: _Server, warc_bytes: bytes
) -> None:
    src = tmp_path / "src" / "CC-MAIN-x-00000.warc.gz"
    server.files["a.warc.gz"] = warc_bytes
    for n, uri in enumerate([str(src), _url(server, "files", "a.warc.gz")]):
        dest = tmp_path / f"{n}.warc.gz"
        _full_part(dest)
        with pytest.raises(FineflowError, match=f"^disk full while writing {dest} ") as info:
            fetch(uri, dest, FAST)
        assert info.value.stage == "download" and "data_root" in info.value.hint
    assert len(server.hits["/files/a.warc.gz"]) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_names_host_and_port(tmp_path: Path) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/crawl/x.warc.gz"
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "x.warc.gz", FAST)
    assert info.value.reason == (
        f"{url}: failed after 3 attempts: connection refused by 127.0.0.1:{port}"
    )
    assert "port" in info.value.hint and info.value.stage == "download"
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), again.reason, again.hint) == (
        DownloadError,
        info.value.reason,
        info.value.hint,
    )


def test_a_host_that_never_answers_times_out_in_words(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the backlog), answers nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        url = f"http://127.0.0.1:{port}/x.warc.gz"
        cfg = DownloadConfig(retries=1, backoff_s=0.01, timeout_s=0.2)
        with pytest.raises(DownloadError) as info:
            fetch(url, tmp_path / "x.warc.gz", cfg)
    assert info.value.reason.endswith(f"no answer from 127.0.0.1:{port} (timed out)")
    assert "download.timeout_s" in info.value.hint


def test_unknown_host_in_words() -> None:
    from urllib.error import URLError

    from fineflow.tasks.download import _in_words

    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    words = _in_words(URLError(lookup), "https://nowhere.invalid/x.warc.gz")
    assert words.startswith("host not found: nowhere.invalid")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is None, reason="s3fs not installed")
def test_s3_without_credentials_says_how_to_give_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3fs pointed at a local endpoint (a closed port: nothing leaves this machine) with
    every credential source unset: botocore's NoCredentialsError, in words."""
    import s3fs

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    s3fs.S3FileSystem.clear_instance_cache()
    uri = "s3://fineflow-test/crawl-data/x.warc.gz"
    try:
        with pytest.raises(DownloadError, match=f"^no AWS credentials to read {uri}$") as info:
            fetch(uri, tmp_path / "x.warc.gz", FAST)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    hint = info.value.hint
    assert "AWS_ACCESS_KEY_ID" in hint and "AWS_PROFILE" in hint and '"anon": true' in hint
