"""Where a WARC location points: a local file (plain path or file://) or a remote URL,
and the file name its per-WARC artifacts are stored under. Standard library only, so the
config can check its sources at the start (fineflow.config) and the download stage can
use the same rules (tasks/download.py)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname


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


def source_name(uri: str) -> str:
    """The file name a location is stored under (its last path segment)."""
    path = local_path(uri)
    name = path.name if path is not None else unquote(PurePosixPath(urlsplit(uri).path).name)
    if not name:
        raise ValueError(f"{uri}: cannot tell the WARC's file name (the path ends in '/')")
    return name


def check_sources(uris: list[str]) -> None:
    """Raise ValueError for a local WARC that is not there or two sources with one file name."""
    seen: dict[str, str] = {}
    for uri in uris:
        path = local_path(uri)
        if path is not None and not path.is_file():
            raise ValueError(f"WARC source {uri}: no such file {path}")
        name = source_name(uri)
        if name in seen:
            raise ValueError(
                f"two WARC sources share the file name {name!r}: {seen[name]} and {uri}; "
                "per-WARC artifacts are named by file name, so rename one"
            )
        seen[name] = uri
