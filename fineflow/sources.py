"""Where a WARC location points: a local file (plain path or file://) or a remote URL,
and the safe file name its per-WARC artifacts are stored under. Standard library and
storage.names only, so the config can check its sources at the start (fineflow.config)
and the download stage can use the same rules (tasks/download.py)."""

from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from fineflow.storage.names import safe_name


def local_path(uri: str) -> Path | None:
    """The filesystem path of a plain path or file:// URI; None for remote locations."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: file:// URIs on another host are not supported")
        return Path(url2pathname(parts.path))
    if parts.scheme == "" or len(parts.scheme) == 1:  # len 1: a Windows drive letter
        return Path(uri)
    return None


def _last_segment(uri: str) -> str:
    """The location's last path segment, URL-decoded: input text, never a path as it is."""
    path = local_path(uri)
    name = path.name if path is not None else unquote(PurePosixPath(urlsplit(uri).path).name)
    if not name:
        raise ValueError(f"{uri}: cannot tell the WARC's file name (the path ends in '/')")
    return name


def source_name(uri: str) -> str:
    """The safe file name a location is stored under: its last path segment, made one safe
    name (storage.names.safe_name: `a%2F..%2Fx.warc.gz` never becomes a path)."""
    return safe_name(_last_segment(uri), default="warc")


def source_names(uris: list[str]) -> list[str]:
    """A unique safe name per location, in order. Two locations whose names collide
    (`https://a/x.warc.gz`, `https://b/x.warc.gz`) keep the first's name and give each later
    one `-<8 hex of sha256(uri)>`, so appending a source never renames an earlier one."""
    names: list[str] = []
    taken: set[str] = set()
    for uri in uris:
        name = source_name(uri)
        if name in taken:
            tag = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            stem, dot, ext = name.partition(".")
            name = f"{stem}-{tag}{dot}{ext}"
        taken.add(name)
        names.append(name)
    return names


def check_sources(uris: list[str]) -> None:
    """Raise ValueError for a local WARC that is not there, or one location listed twice."""
    seen: set[str] = set()
    for uri in uris:
        path = local_path(uri)
        if path is not None and not path.is_file():
            raise ValueError(f"WARC source {uri}: no such file {path}")
        if uri in seen:
            raise ValueError(f"WARC source {uri} is listed twice; list each WARC once")
        seen.add(uri)
        source_name(uri)  # a location with no file name fails here


_CRAWL_ID = re.compile(r"CC-MAIN-(\d{4})-(\d{2})(?!\d)")
_CRAWL_TS = re.compile(r"CC-MAIN-(\d{4})(\d{2})(\d{2})\d{6}-")


def crawl_of(warc: str, uri: str | None = None) -> str:
    """The crawl a WARC belongs to: the id in its source `uri`, else in its name `warc`,
    else the ISO week of the timestamp in its name (dedup's crawl scope: tasks/dedup.py)."""
    for where in (uri, warc):
        if where and (m := _CRAWL_ID.search(where)):
            return m.group(0)
    if m := _CRAWL_TS.search(warc):
        year, week, _ = date(*map(int, m.groups())).isocalendar()
        return f"week-{year}-{week:02d}"
    return "unknown"
