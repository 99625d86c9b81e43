"""Containment: no input text becomes a path, and nothing is written outside the data root."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from fineflow.config import DownloadConfig
from fineflow.sources import source_name, source_names
from fineflow.storage.artifacts import ArtifactWriter, FileEntry
from fineflow.storage.layout import artifact_dir
from fineflow.storage.names import MAX_NAME, PathEscape, inside, safe_name
from fineflow.tasks.download import describe_sources, download_warc
from tests.helpers.warc_factory import Capture, article, build_warc

HOSTILE = [
    "a%2F..%2F..%2Fescape.warc.gz",  # encoded separators and dot-dot
    "%2Fsome%2Fabsolute%2Fpath.warc.gz",  # an absolute path once decoded
    "..%5C..%5Cwin.warc.gz",  # backslashes
    "nul%00byte.warc.gz",
    "%2E%2E",  # ".." itself
    ".hidden.warc.gz",
    "x" * 10_000 + ".warc.gz",
    "%E2%80%AEcod.gz",  # right-to-left override
]


def _plain(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME
        and not name.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "._-+=@,") for c in name)
    )


@pytest.mark.parametrize("segment", HOSTILE)
def test_every_hostile_url_segment_becomes_one_plain_name(segment: str) -> None:
    name = source_name(f"http://host.example/{segment}")
    assert _plain(name), name
    assert Path(name).name == name and name not in (".", "..")


def test_safe_names_keep_good_names_and_keep_bad_ones_apart() -> None:
    good = "CC-MAIN-20240301000000-20240301010000-00000.warc.gz"
    assert safe_name(good) == good
    a, b = safe_name("a/b.warc.gz"), safe_name("a\\b.warc.gz")
    assert a != b and a.endswith(".warc.gz") and b.endswith(".warc.gz")
    assert safe_name("") != "" and _plain(safe_name(""))
    long = safe_name("y" * 10_000 + ".warc.gz")
    assert len(long) <= MAX_NAME and long.endswith(".warc.gz")
    assert safe_name("y" * 10_000 + ".warc.gz") != safe_name("y" * 9_999 + ".warc.gz")


def test_two_sources_with_one_name_get_two_names_and_the_first_keeps_its_own() -> None:
    uris = ["https://a.example/x.warc.gz", "https://b.example/x.warc.gz"]
    first, second = source_names(uris)
    assert first == "x.warc.gz" and second != first and second.endswith(".warc.gz")
    assert source_names(uris + ["https://c.example/x.warc.gz"])[:2] == [first, second]
    # two hostile segments that sanitise alike still differ
    assert len(set(source_names(["http://h/a%2Fb.warc.gz", "http://h/a%5Cb.warc.gz"]))) == 2
    with pytest.raises(ValueError, match="listed twice"):
        describe_sources([uris[0], uris[0]])


def test_the_artifact_store_refuses_paths_outside_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    with ArtifactWriter(root, "download", "k" * 24) as out:
        for bad in ("../x", "../../x", str(tmp_path / "abs"), "a/../../x"):
            with pytest.raises(PathEscape):
                out.path(bad)
        os.symlink(outside, out.tmp / "link")
        with pytest.raises(PathEscape):
            out.path("link/x")
        assert out.path("sub/ok.txt").parent.name == "sub"
    for stage, key in (("..", "k"), ("download", "../k"), ("download", "a/b")):
        with pytest.raises(PathEscape):
            artifact_dir(root, stage, key)
    for bad in ("../x", "/etc/passwd", "a\\b", "a/../b", "a\0b", ""):
        with pytest.raises(ValidationError):
            FileEntry(path=bad, bytes=0, sha256="0")
    with pytest.raises(PathEscape):
        inside(root, Path("/tmp"))
    assert list(outside.iterdir()) == []


class _AnyPath(BaseHTTPRequestHandler):
    body = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture()
def any_path_server(tmp_path: Path) -> Iterator[str]:
    """Serves one real WARC at every path, however the path is spelt."""
    warc = tmp_path / "one.warc.gz"
    build_warc(warc, [Capture(f"https://site.example/{i}", article(i).encode()) for i in range(2)])
    _AnyPath.body = warc.read_bytes()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _AnyPath)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_a_crafted_url_never_writes_outside_the_data_root(
    tmp_path: Path, any_path_server: str
) -> None:
    """The reported escape: `a%2F..%2F..%2Fescape.warc.gz` wrote two levels above the root."""
    box = tmp_path / "box"  # the fixture's WARC lies beside it, not inside
    root = box / "level1" / "data"
    root.mkdir(parents=True)
    uris = [f"{any_path_server}/{segment}" for segment in HOSTILE]
    cfg = DownloadConfig(retries=0, timeout_s=10)
    for source in describe_sources(uris):
        m = download_warc.fn(str(root), source, cfg)
        assert m.warc == source.name and _plain(source.name)
        assert m.stats["source_uri"] == source.uri  # the original stays in the manifest
    everything = [p for p in box.rglob("*")]
    strays = [p for p in everything if root not in p.parents and p != root]
    assert strays == [box / "level1"], strays
    assert not Path("/some/absolute/path.warc.gz").exists()
    stored = [p for p in (root / "download").glob("*/[!.]*") if p.name != "manifest.json"]
    assert len({p.name for p in stored}) == len(HOSTILE)
